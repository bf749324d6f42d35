"""PREFIX.json: what a token dataset holds, so training can refuse data its model cannot embed.

    {"format": "megatiny-dataset", "version": 1, "tokenizer": {class, path, sha256, vocab_size, ...},
     "dtype": "uint16", "max_token_id": 31999, "num_documents": ..., "num_tokens": ...,
     "json_key": "text", "prepend_bos": true, "append_eod": true, "sources": ["/abs/path", ...]}

Written by preprocessing beside PREFIX.bin/.idx (and combined by merging); Megatron-written data
has none. `check_model_vocab` compares every dataset of a data config with the model's vocabulary
before any engine starts; datasets without a sidecar get a per-sample bound check instead
(`GPTDataset(token_limit=...)`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from megatiny.fileio import atomic_write_text

SIDECAR_FORMAT = "megatiny-dataset"
SIDECAR_VERSION = 1


def sidecar_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.json")


@dataclass
class DatasetSidecar:
    tokenizer: dict[str, Any]
    dtype: str
    max_token_id: int           # -1 when the dataset holds no token
    num_documents: int
    num_tokens: int
    json_key: str
    prepend_bos: bool
    append_eod: bool
    sources: list[str] = field(default_factory=list)
    format: str = SIDECAR_FORMAT
    version: int = SIDECAR_VERSION

    def write(self, prefix: str | os.PathLike) -> Path:
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        return atomic_write_text(sidecar_path(prefix), text)

    @classmethod
    def read(cls, prefix: str | os.PathLike) -> DatasetSidecar | None:
        """The sidecar of `prefix`, or None when it has none (e.g. data written by Megatron)."""
        path = sidecar_path(prefix)
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            if d.get("format") != SIDECAR_FORMAT or d.get("version") != SIDECAR_VERSION:
                raise ValueError(f"format {d.get('format')!r} version {d.get('version')!r}")
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a megatiny dataset sidecar ({e}); delete it or rewrite it with "
                             f"tools/preprocess_data.py") from None


def merge_sidecars(parts: list[DatasetSidecar], what: list[str]) -> DatasetSidecar:
    """The sidecar of the concatenation of `parts` (named `what` in errors): same tokenizer required."""
    first = parts[0]
    for name, p in zip(what[1:], parts[1:]):
        for attr in ("dtype", "json_key", "prepend_bos", "append_eod"):
            if getattr(p, attr) != getattr(first, attr):
                raise ValueError(f"{name}: {attr} {getattr(p, attr)!r} differs from {what[0]}'s "
                                 f"{getattr(first, attr)!r}; these parts were not written by one command")
        if p.tokenizer["sha256"] != first.tokenizer["sha256"]:
            raise ValueError(f"{name}: tokenized with {p.tokenizer['path']} "
                             f"(sha256 {p.tokenizer['sha256'][:12]}) but {what[0]} with "
                             f"{first.tokenizer['path']} "
                             f"(sha256 {first.tokenizer['sha256'][:12]}); they cannot be merged")
    return DatasetSidecar(tokenizer=first.tokenizer, dtype=first.dtype,
                          max_token_id=max(p.max_token_id for p in parts),
                          num_documents=sum(p.num_documents for p in parts),
                          num_tokens=sum(p.num_tokens for p in parts), json_key=first.json_key,
                          prepend_bos=first.prepend_bos, append_eod=first.append_eod,
                          sources=[s for p in parts for s in p.sources])


class VocabMismatchError(ValueError):
    """A dataset holds token ids the model has no embedding for."""


def check_model_vocab(prefixes: list[str], vocab_size: int) -> list[str]:
    """Raise VocabMismatchError naming the first dataset whose sidecar's max token id >= vocab_size.

    Returns the prefixes that have no sidecar (they need the per-sample bound check).
    """
    unchecked = []
    for prefix in prefixes:
        meta = DatasetSidecar.read(prefix)
        if meta is None:
            unchecked.append(prefix)
        elif meta.max_token_id >= vocab_size:
            raise VocabMismatchError(
                f"{prefix}: holds token ids up to {meta.max_token_id} (tokenizer {meta.tokenizer['path']}, "
                f"vocab_size {meta.tokenizer['vocab_size']}) but the model's vocab_size is {vocab_size}; "
                f"set model vocab_size >= {meta.max_token_id + 1} or re-tokenize the data with the "
                f"model's tokenizer ({sidecar_path(prefix)})")
    return unchecked


def check_data_vocab(data_config, vocab_size: int) -> list[str]:
    """`check_model_vocab` over every dataset of a DataConfig (all splits); run it before training starts."""
    prefixes = sorted({p for blend in data_config.blends().values() for _, p in blend})
    return check_model_vocab(prefixes, vocab_size)
