"""Tokenizers: one small interface over sentencepiece models and Hugging Face tokenizers.

`load_tokenizer(path)` accepts
  * a sentencepiece `.model` file (the Llama / TinyLlama tokenizer is one),
  * a Hugging Face `tokenizer.json` file, or
  * a local Hugging Face tokenizer directory (anything `AutoTokenizer.from_pretrained` reads offline).

Every tokenizer returned has `encode(text) -> list[int]` (never adds BOS/EOS, even where the
tokenizer's own post-processor would, as Llama 3's does: the data pipeline adds them explicitly, see
docs/FORMAT.md), `decode(ids) -> str`, `vocab_size`, `bos_id`, `eos_id` and
`pad_id` (None when the vocabulary has no such token).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    path: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece model file (`.model`)."""

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        self.path = str(path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(self.path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.path}: not a readable sentencepiece model ({e})") from None
        self.vocab_size = int(self._sp.GetPieceSize())
        self.bos_id = _none_if_negative(self._sp.bos_id())
        self.eos_id = _none_if_negative(self._sp.eos_id())
        self.pad_id = _none_if_negative(self._sp.pad_id())

    def encode(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size})"


class HFTokenizer:
    """A Hugging Face fast tokenizer from a `tokenizer.json` file or a local tokenizer directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        p = Path(path)
        if p.is_file():
            from tokenizers import Tokenizer as RawTokenizer

            try:
                self._tok = RawTokenizer.from_file(self.path)
            except Exception as e:  # the Rust library raises plain Exception subclasses
                raise ValueError(f"{self.path}: not a readable tokenizer.json ({e})") from None
            special = _special_tokens_from_json(self._tok)
        else:
            from transformers import AutoTokenizer

            try:
                hf = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            except Exception as e:
                raise ValueError(f"{self.path}: not a loadable Hugging Face tokenizer directory "
                                 f"({e})") from None
            if getattr(hf, "backend_tokenizer", None) is None:
                raise ValueError(f"{self.path}: only fast (tokenizer.json based) HF tokenizers are supported")
            self._tok = hf.backend_tokenizer
            special = {"bos": hf.bos_token_id, "eos": hf.eos_token_id, "pad": hf.pad_token_id}
            declared = _declared_special_tokens(p)
            for name in ("bos", "eos", "pad"):
                # a tokenizer_config.json that says `bos_token: null` (Qwen2) means no BOS: no guessing
                if special[name] is None and f"{name}_token" not in declared:
                    special[name] = _special_tokens_from_json(self._tok)[name]
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.bos_id = special["bos"]
        self.eos_id = special["eos"]
        self.pad_id = special["pad"]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"


_SPECIAL_NAMES = {
    "bos": ("<s>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]", "<bos>"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "[SEP]", "<eos>"),
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
}


def _special_tokens_from_json(tok) -> dict[str, int | None]:
    """Guess BOS/EOS/PAD ids of a bare tokenizer.json from the usual special-token spellings."""
    found: dict[str, int | None] = {}
    for name, spellings in _SPECIAL_NAMES.items():
        found[name] = next((tok.token_to_id(s) for s in spellings if tok.token_to_id(s) is not None), None)
    return found


def _declared_special_tokens(directory: Path) -> dict:
    """The tokenizer_config.json of an HF tokenizer directory ({} when absent or unreadable)."""
    import json

    try:
        values = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def _none_if_negative(i: int) -> int | None:
    return None if i < 0 else int(i)


def load_tokenizer(path: str | os.PathLike) -> SentencePieceTokenizer | HFTokenizer:
    """Open a sentencepiece `.model`, a HF `tokenizer.json` or a local HF tokenizer directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: tokenizer not found (give a sentencepiece .model file, a "
                                f"tokenizer.json, or a local Hugging Face tokenizer directory)")
    if p.is_dir():
        if (p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file():
            return HFTokenizer(p)
        models = sorted(p.glob("*.model"))
        if len(models) == 1:
            return SentencePieceTokenizer(models[0])
        raise ValueError(f"{p}: directory holds neither tokenizer.json/tokenizer_config.json nor exactly "
                         f"one sentencepiece .model file")
    if p.suffix == ".json":
        return HFTokenizer(p)
    return SentencePieceTokenizer(p)


def tokenizer_fingerprint(tok) -> dict[str, object]:
    """What identifies a tokenizer's vocabulary: class, path, sha256 of its file(s), vocab size, BOS/EOS.

    The hash covers the model file (sentencepiece), the tokenizer.json, or the tokenizer files of
    an HF directory (tokenizer.json, tokenizer_config.json, special_tokens_map.json, *.model).
    """
    p = Path(tok.path)
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    files = [p] if p.is_file() else sorted(f for f in p.iterdir()
                                           if f.name in names or f.suffix == ".model")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return {"class": type(tok).__name__, "path": str(p.resolve()), "sha256": digest.hexdigest(),
            "vocab_size": int(tok.vocab_size), "bos_id": tok.bos_id, "eos_id": tok.eos_id}


def train_sentencepiece(texts: Iterable[str], model_prefix: str | os.PathLike, vocab_size: int, *,
                        model_type: str = "bpe", byte_fallback: bool = True,
                        character_coverage: float = 0.9995, max_sentence_length: int = 16384,
                        input_sentence_size: int = 0, num_threads: int = 1,
                        seed_sentencepiece_size: int = 1_000_000) -> Path:
    """Train a Llama-style sentencepiece model on local text; returns the `.model` path.

    Llama conventions: unk=0, bos=1, eos=2, no pad; BPE with byte fallback (so no text is ever
    unknown), digits split, whitespace kept as-is. `texts` is any iterable of strings (documents or
    lines); nothing is downloaded. Writes MODEL_PREFIX.model and MODEL_PREFIX.vocab.

    sentencepiece silently drops any sentence longer than `max_sentence_length` bytes, so texts longer
    than that are cut into pieces of at most that many bytes (at line breaks, else at whitespace)
    before they reach it: long documents are trained on, not lost.
    """
    import sentencepiece as spm

    if vocab_size < 8:
        raise ValueError(f"vocab_size must be at least 8, got {vocab_size}")
    if model_type not in ("bpe", "unigram", "char", "word"):
        raise ValueError(f"model_type must be one of bpe, unigram, char, word; got {model_type!r}")
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.Train(
        sentence_iterator=_bounded_sentences(texts, max_sentence_length),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        character_coverage=character_coverage,
        max_sentence_length=max_sentence_length,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=input_sentence_size > 0,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=num_threads,
        seed_sentencepiece_size=seed_sentencepiece_size,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model_prefix.with_name(model_prefix.name + ".model")


def _bounded_sentences(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Non-empty `texts`, each longer than `max_bytes` UTF-8 bytes cut into consecutive pieces that fit."""
    for t in texts:
        if t:
            yield from split_text(t, max_bytes)


def split_text(text: str, max_bytes: int) -> Iterator[str]:
    """`text` as consecutive pieces of at most `max_bytes` UTF-8 bytes that concatenate back to it.

    Pieces end at line breaks where possible (several short lines share one piece), else at the last
    whitespace that fits, else anywhere (at a character boundary). Short texts come back whole.
    """
    if max_bytes < 4:
        raise ValueError(f"max_bytes must be at least 4 (one UTF-8 character), got {max_bytes}")
    if len(text.encode("utf-8")) <= max_bytes:
        yield text
        return
    buf, buf_bytes = [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if buf and buf_bytes + n > max_bytes:
            yield "".join(buf)
            buf, buf_bytes = [], 0
        while n > max_bytes:
            # The longest prefix of at most max_bytes bytes (max_bytes characters hold at least that many).
            head = line[:max_bytes].encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
            space = max(head.rfind(" "), head.rfind("\t"))
            cut = space + 1 if space > 0 else len(head)
            yield line[:cut]
            line = line[cut:]
            n = len(line.encode("utf-8"))
        if line:
            buf.append(line)
            buf_bytes += n
    if buf:
        yield "".join(buf)
