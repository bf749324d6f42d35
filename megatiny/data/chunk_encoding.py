"""Tokenizing one chunk of records: the work each preprocessing worker does."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatiny.data.indexed_dataset import best_dtype
from megatiny.data.sources import RecordChunk, parse_record
from megatiny.data.tokenizer import Tokenizer, load_tokenizer


@dataclass
class BadLine:
    """One skipped record: `where` is "file:line" (jsonl) or "file:row N" (tables)."""

    file: str
    line: int
    reason: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.where or f'{self.file}:{self.line}'}: {self.reason}"


@dataclass(frozen=True)
class EncodeOptions:
    tokenizer_path: str
    json_keys: tuple[str, ...]
    prepend_bos: bool
    append_eod: bool


@dataclass
class EncodedChunk:
    """One chunk's documents: `arrays[k]` = (flat tokens, per-document lengths int32) of json key k."""

    arrays: list[tuple[np.ndarray, np.ndarray]]
    bad: list[BadLine]
    input_bytes: int        # text bytes read (jsonl: whole lines)
    documents: int
    disk_bytes: int         # bytes of the (possibly compressed) file consumed, for progress


class ChunkEncoder:
    """`encoder(chunk) -> EncodedChunk`: every record's `json_keys` values as `[BOS] + ids + [EOS]`
    (exactly one BOS with `prepend_bos`: the tokenizer adds none, and a text that starts with the
    BOS token's spelling does not get a second)."""

    def __init__(self, options: EncodeOptions, tokenizer: Tokenizer | None = None):
        self.options = options
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(options.tokenizer_path)
        self.dtype = best_dtype(self.tokenizer.vocab_size)

    def __call__(self, chunk: RecordChunk) -> EncodedChunk:
        tok, opt = self.tokenizer, self.options
        prefix = [tok.bos_id] if opt.prepend_bos else []
        suffix = [tok.eos_id] if opt.append_eod else []
        flat: list[list[int]] = [[] for _ in opt.json_keys]
        lengths: list[list[int]] = [[] for _ in opt.json_keys]
        bad: list[BadLine] = []
        nbytes = 0
        jsonl = chunk.kind == "jsonl"
        for offset, record in enumerate(chunk.records):
            if jsonl:
                nbytes += len(record)
                if not record.strip():
                    continue
            values, error = parse_record(chunk.kind, record, opt.json_keys)
            if error is not None:
                bad.append(BadLine(chunk.file, chunk.first_row + offset, error, chunk.location(offset)))
                continue
            if not jsonl:
                nbytes += sum(len(v.encode("utf-8")) for v in values)
            for k, value in enumerate(values):
                body = tok.encode(value)
                if prefix and body[:1] == prefix:  # the text spelled the BOS itself: one BOS only
                    body = body[1:]
                ids = prefix + body + suffix
                flat[k].extend(ids)
                lengths[k].append(len(ids))
        arrays = [(np.array(f, dtype=self.dtype), np.array(n, dtype=np.int32)) for f, n in zip(flat, lengths)]
        return EncodedChunk(arrays, bad, nbytes, len(lengths[0]) if lengths else 0, chunk.disk_bytes)


def describe_chunk(chunk: RecordChunk | None) -> str:
    """Where a chunk's records are, for error messages: "the 512 records from file:line"."""
    if chunk is None:
        return "no chunk"
    return f"the {len(chunk.records)} records from {chunk.location(0)}"
