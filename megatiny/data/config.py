"""DataConfig: where the training tokens come from and how they are split and cached."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

Blend = list[tuple[float, str]]


def parse_blend(spec: str | list | None, field_name: str = "data_path") -> Blend:
    """"0.7 PREFIX_A 0.3 PREFIX_B" (or a single "PREFIX", or a list of tokens) -> [(weight, prefix)].

    Weights are normalized to sum to 1. A bare list of prefixes without weights gets equal weights.
    """
    if spec is None or spec == "" or spec == []:
        return []
    tokens = spec.split() if isinstance(spec, str) else [str(t) for t in spec]
    if len(tokens) == 1:
        return [(1.0, tokens[0])]

    def is_number(t: str) -> bool:
        try:
            float(t)
            return True
        except ValueError:
            return False

    if not any(is_number(t) for t in tokens):
        return [(1.0 / len(tokens), t) for t in tokens]
    if len(tokens) % 2:
        raise ValueError(f"{field_name}: expected 'WEIGHT PREFIX WEIGHT PREFIX ...', got an odd number of "
                         f"entries: {spec!r}")
    pairs = []
    for w, p in zip(tokens[0::2], tokens[1::2]):
        if not is_number(w):
            raise ValueError(f"{field_name}: {w!r} should be a weight (number) before prefix {p!r}")
        if float(w) < 0:
            raise ValueError(f"{field_name}: weight {w} of {p!r} is negative")
        pairs.append((float(w), p))
    total = sum(w for w, _ in pairs)
    if total <= 0:
        raise ValueError(f"{field_name}: weights sum to {total}; at least one must be positive")
    return [(w / total, p) for w, p in pairs]


def parse_split(split: str | list) -> list[float]:
    """"969,30,1" (or "98/2/0", or [969, 30, 1]) -> three non-negative weights."""
    if isinstance(split, str):
        parts = [p for p in split.replace("/", ",").split(",") if p.strip()]
    else:
        parts = list(split)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"split: {split!r} is not a list of numbers like '969,30,1'") from None
    if not 1 <= len(values) <= 3:
        raise ValueError(f"split: expected 1 to 3 numbers (train,valid,test), got {split!r}")
    values += [0.0] * (3 - len(values))
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"split: {split!r} must be non-negative with a positive sum")
    return values


@dataclass
class DataConfig:
    """Data section of a run config.

    data_path: blend "0.7 PREFIX_A 0.3 PREFIX_B" (prefix = path without .bin/.idx), split by
        document into train/valid/test with `split`.
    train_data_path / valid_data_path / test_data_path: separate blends per split instead (then
        `data_path` must be empty and `split` is ignored).
    cache_dir: where index `.npy` caches go (default: `megatiny_cache/` beside each dataset).
        Must be visible to all ranks of a node (rank 0 builds, the others load).
    blend_surplus: extra fraction of samples each blended dataset builds, as Megatron does
        (`index: megatron` only; the block index knows each dataset's exact share).
    index: "block" (default; O(documents) memory, for any schedule size) or "megatron" (Megatron's
        materialized O(samples) arrays, bit-compatible with megatiny's earlier builds and caches);
        see docs/FORMAT.md.
    reset_attention_mask / reset_position_ids / eod_mask_loss: Megatron's document options for
        packed samples (`megatiny.data.document_mask`): attention kept inside each document (the
        EOD token belongs to the document it ends), RoPE positions restarting at 0 after each EOD,
        no loss where the input token is EOD. Megatron spellings on the command line:
        `megatiny train --reset-attention-mask --reset-position-ids --eod-mask-loss`.
    eod_token_id: the EOD id those options cut at; null = the EOS id of the tokenizer in the
        datasets' PREFIX.json sidecars (a run records the resolved id in its checkpoints).

    The tokenizer is not part of it: it is the run config's top-level `tokenizer`.
    """

    data_path: str | list = ""
    split: str = "969,30,1"
    train_data_path: str | list = ""
    valid_data_path: str | list = ""
    test_data_path: str | list = ""
    cache_dir: str | None = None
    blend_surplus: float = 0.005
    index: str = "block"
    reset_attention_mask: bool = False
    reset_position_ids: bool = False
    eod_mask_loss: bool = False
    eod_token_id: int | None = None

    def __post_init__(self) -> None:
        blend = parse_blend(self.data_path, "data_path")
        separate = {k: parse_blend(getattr(self, k), k)
                    for k in ("train_data_path", "valid_data_path", "test_data_path")}
        if blend and any(separate.values()):
            raise ValueError("data_path: give either data_path (+ split) or train/valid/test_data_path, "
                             "not both")
        if not blend and not separate["train_data_path"]:
            raise ValueError("data_path: no training data; set data_path (e.g. '0.7 PREFIX_A 0.3 PREFIX_B') "
                             "or train_data_path")
        parse_split(self.split)
        if not 0 <= self.blend_surplus < 1:
            raise ValueError(f"blend_surplus must be in [0, 1), got {self.blend_surplus}")
        if self.index not in ("block", "megatron"):
            raise ValueError(f"data.index must be 'block' or 'megatron', got {self.index!r}")
        for name in ("reset_attention_mask", "reset_position_ids", "eod_mask_loss"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"data.{name} must be true or false, got {getattr(self, name)!r}")
        eod = self.eod_token_id
        if eod is not None and (isinstance(eod, bool) or not isinstance(eod, int) or eod < 0):
            raise ValueError(f"data.eod_token_id must be a token id >= 0 or null, got {eod!r}")

    @property
    def document_masking(self) -> bool:
        """Whether any of the document options is on."""
        return self.reset_attention_mask or self.reset_position_ids or self.eod_mask_loss

    @property
    def uses_split(self) -> bool:
        return bool(parse_blend(self.data_path))

    def blends(self) -> dict[str, Blend]:
        """{'train'|'valid'|'test': [(weight, prefix), ...]} after splitting rules."""
        if self.uses_split:
            blend = parse_blend(self.data_path)
            return {"train": blend, "valid": blend, "test": blend}
        return {"train": parse_blend(self.train_data_path, "train_data_path"),
                "valid": parse_blend(self.valid_data_path, "valid_data_path"),
                "test": parse_blend(self.test_data_path, "test_data_path")}

    def split_weights(self) -> list[float]:
        return parse_split(self.split)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if "tokenizer" in unknown:
            raise ValueError("data.tokenizer: the tokenizer is the run config's top-level `tokenizer:`, "
                             "not a data field")
        if unknown:
            raise ValueError(f"data: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
