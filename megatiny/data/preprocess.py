"""Tokenize jsonl corpora into MMIDIDX datasets, in parallel, streaming, with ordered output.

`preprocess(...)` backs tools/preprocess_data.py. Lines are read as bytes in chunks, tokenized by a
pool of worker processes (at most `2 * workers` chunks in flight, so memory does not grow with the
input), and written in input order, so the output is byte-identical for any worker count. Each
document is `[BOS] + tokens + [EOS]` when both `prepend_bos` and `append_eod` are set.

Bad lines (invalid JSON, not an object, missing key, non-string value, invalid UTF-8, empty text)
are counted, reported with file:line, and skipped; with `strict=True` the first one is fatal.
Whitespace-only lines are not data and are skipped silently.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatiny.data.indexed_dataset import IndexedDatasetBuilder, best_dtype
from megatiny.data.tokenizer import load_tokenizer

CHUNK_LINES = 512
CHUNK_BYTES = 4 << 20


@dataclass
class BadLine:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class PreprocessStats:
    documents: int = 0
    tokens: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    bad_lines: int = 0
    bad_reasons: Counter = field(default_factory=Counter)
    bad_examples: list[BadLine] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = max(self.seconds, 1e-9)
        return (f"{self.documents} documents, {self.tokens} tokens, {self.input_bytes / 1e6:.1f} MB in "
                f"{self.seconds:.1f} s ({self.input_bytes / 1e6 / s:.2f} MB/s, "
                f"{self.tokens / s:,.0f} tokens/s); "
                f"{self.bad_lines} bad lines skipped")


class BadLineError(ValueError):
    """Raised in strict mode at the first bad input line."""


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths or globs, in the order given (each glob sorted); error if one matches nothing."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        files.extend(Path(m) for m in matches)
    return files


def open_binary(path: Path, raw: io.BufferedIOBase | None = None) -> io.BufferedIOBase:
    """Open plain, .gz or .zst files for binary line reading (decompression streams).

    `raw`: the already opened file to read from (lets the caller track bytes read from disk).
    Closing the returned stream closes the file it opened itself (never a `raw` passed in).
    """
    owned = raw is None
    if path.suffix == ".gz":
        return gzip.open(path, "rb") if owned else gzip.GzipFile(fileobj=raw, mode="rb")
    raw = open(path, "rb", buffering=1 << 20) if owned else raw
    if path.suffix in (".zst", ".zstd"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=owned), 1 << 20)
    return raw


def read_chunks(files: list[Path]) -> Iterator[tuple[str, int, list[bytes], int]]:
    """(file name, first line number, raw lines, file bytes read from disk for this chunk) chunks of
    at most CHUNK_LINES lines / CHUNK_BYTES (decompressed) bytes."""
    for path in files:
        with open(path, "rb", buffering=1 << 20) as raw, open_binary(path, raw) as f:
            lines: list[bytes] = []
            size, first, disk = 0, 1, 0
            for lineno, line in enumerate(f, start=1):
                if not lines:
                    first = lineno
                lines.append(line)
                size += len(line)
                if len(lines) >= CHUNK_LINES or size >= CHUNK_BYTES:
                    yield str(path), first, lines, raw.tell() - disk
                    disk = raw.tell()
                    lines, size = [], 0
            if lines or disk < raw.tell():
                yield str(path), first, lines, raw.tell() - disk


@dataclass
class EncodeOptions:
    tokenizer_path: str
    json_keys: tuple[str, ...]
    prepend_bos: bool
    append_eod: bool


_worker: dict = {}


def _init_worker(options: EncodeOptions, tok=None) -> None:
    tok = tok if tok is not None else load_tokenizer(options.tokenizer_path)
    _worker.update(tokenizer=tok, options=options, dtype=best_dtype(tok.vocab_size))


def parse_json_line(line: bytes, keys: tuple[str, ...]) -> tuple[list[str] | None, str | None]:
    """(the string values of `keys`, None) for a good jsonl line, else (None, why it is bad)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 at byte {e.start}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (got {type(obj).__name__})"
    values = []
    for key in keys:
        if key not in obj:
            return None, f"missing key {key!r}"
        value = obj[key]
        if not isinstance(value, str):
            return None, f"key {key!r} is {type(value).__name__}, not a string"
        if not value.strip():
            return None, f"key {key!r} is empty"
        values.append(value)
    return values, None


def encode_chunk(chunk: tuple[str, int, list[bytes], int]):
    """Worker: (per key (flat tokens, lengths), bad lines, bytes, documents, disk bytes) for one chunk."""
    name, first, lines, disk_bytes = chunk
    tok, opt, dtype = _worker["tokenizer"], _worker["options"], _worker["dtype"]
    prefix = [tok.bos_id] if opt.prepend_bos else []
    suffix = [tok.eos_id] if opt.append_eod else []
    flat: list[list[int]] = [[] for _ in opt.json_keys]
    lengths: list[list[int]] = [[] for _ in opt.json_keys]
    bad: list[BadLine] = []
    nbytes = 0
    for offset, line in enumerate(lines):
        nbytes += len(line)
        if not line.strip():
            continue
        values, error = parse_json_line(line, opt.json_keys)
        if error is not None:
            bad.append(BadLine(name, first + offset, error))
            continue
        for k, value in enumerate(values):
            ids = prefix + tok.encode(value) + suffix
            flat[k].extend(ids)
            lengths[k].append(len(ids))
    arrays = [(np.array(f, dtype=dtype), np.array(n, dtype=np.int32)) for f, n in zip(flat, lengths)]
    return arrays, bad, nbytes, len(lengths[0]) if lengths else 0, disk_bytes


def _ordered_results(chunks: Iterator, workers: int, options: EncodeOptions, tok=None) -> Iterator:
    """encode_chunk over `chunks`, in order, with at most 2 * workers chunks in flight.

    `tok`: the tokenizer already loaded, reused when encoding in this process (workers <= 1)."""
    if workers <= 1:
        _init_worker(options, tok)
        yield from map(encode_chunk, chunks)
        return
    ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(options,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(encode_chunk, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def output_prefix_for(output_prefix: str | os.PathLike, key: str) -> str:
    return f"{output_prefix}_{key}_document"


def preprocess(inputs: list[str], output_prefix: str | os.PathLike, tokenizer: str | os.PathLike, *,
               json_keys: tuple[str, ...] = ("text",), workers: int = 1, prepend_bos: bool = False,
               append_eod: bool = False, strict: bool = False, progress: bool = False,
               max_bad_examples: int = 20,
               bad_lines_file: str | os.PathLike | None = None) -> PreprocessStats:
    """Tokenize jsonl `inputs` (paths/globs; plain, .gz, .zst) into `{output_prefix}_{key}_document`.

    Every bad line is also written to `bad_lines_file` (one `file:line: reason` per line) if given.
    """
    files = expand_inputs(inputs)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    tok = load_tokenizer(tokenizer)
    if prepend_bos and tok.bos_id is None:
        raise ValueError(f"{tokenizer}: --prepend-bos given but the tokenizer has no BOS token")
    if append_eod and tok.eos_id is None:
        raise ValueError(f"{tokenizer}: --append-eod given but the tokenizer has no EOS token")
    options = EncodeOptions(str(tokenizer), tuple(json_keys), prepend_bos, append_eod)
    dtype = best_dtype(tok.vocab_size)
    builders: list[IndexedDatasetBuilder] = []
    stats = PreprocessStats()
    total_bytes = sum(f.stat().st_size for f in files)
    bar = _progress_bar(total_bytes, progress)
    start = time.perf_counter()
    stack = ExitStack()  # closes the worker pool promptly even when a bad line aborts the run
    try:
        for k in json_keys:     # inside the try: a failure aborts (removes) the ones already created
            builders.append(IndexedDatasetBuilder(output_prefix_for(output_prefix, k), dtype))
        bad_log = stack.enter_context(open(bad_lines_file, "w")) if bad_lines_file else None
        results = stack.enter_context(closing(_ordered_results(read_chunks(files), workers, options, tok)))
        for arrays, bad, nbytes, ndocs, disk_bytes in results:
            if bad and strict:
                raise BadLineError(f"{bad[0]} (run without --strict to skip and count bad lines)")
            for builder, (tokens, lengths) in zip(builders, arrays):
                builder.add_items(tokens, lengths)
            stats.documents += ndocs
            stats.tokens += sum(len(t) for t, _ in arrays)
            stats.input_bytes += nbytes
            stats.bad_lines += len(bad)
            if bad_log is not None:
                bad_log.writelines(f"{b}\n" for b in bad)
            stats.bad_reasons.update(b.reason.split(" (")[0] for b in bad)
            stats.bad_examples.extend(bad[:max(0, max_bad_examples - len(stats.bad_examples))])
            if bar is not None:
                bar.update(disk_bytes)
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(docs=stats.documents, tokens=stats.tokens, refresh=False)
                bar.set_description(f"text {stats.input_bytes / 1e6 / elapsed:.1f} MB/s")
        for builder in builders:
            builder.finalize()
            stats.outputs.append(builder.prefix)
    except BaseException:
        for builder in builders:
            builder.abort()
        raise
    finally:
        stack.close()
        if bar is not None:
            bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _progress_bar(total_bytes: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, file=sys.stderr, dynamic_ncols=True)


# --- documents as text, for tokenizer training ------------------------------------------------

def is_json_input(path: Path) -> bool:
    """foo.jsonl, foo.json, foo.jsonl.gz, foo.json.zst ... (the suffix before any compression suffix)."""
    suffixes = [s for s in path.suffixes if s not in (".gz", ".zst", ".zstd")]
    return bool(suffixes) and suffixes[-1] in (".json", ".jsonl")


def iter_texts(patterns: list[str], json_key: str, max_documents: int | None,
               bad: list[str] | None = None) -> Iterator[str]:
    """Documents of the inputs; `bad` (if given) collects a `file:line: reason` per skipped jsonl line."""
    count = 0
    for path in expand_inputs(patterns):
        is_json = is_json_input(path)
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                if is_json:
                    values, error = parse_json_line(raw, (json_key,))
                    if error is not None:
                        if bad is not None:
                            bad.append(f"{path}:{lineno}: {error}")
                        continue
                    line = values[0]
                else:
                    line = raw.decode("utf-8", errors="replace")
                yield line
                count += 1
                if max_documents is not None and count >= max_documents:
                    return
