"""Input sources for preprocessing: jsonl (plain/.gz/.zst), parquet, and `datasets` save_to_disk folders.

One interface for all of them:

    files = resolve_inputs(["data/*.jsonl.zst", "starcoder/python/", "hf_saved_dataset/"])
    for chunk in read_chunks(files, keys=("text",)):   # RecordChunk: file, first row, records
        for values, error in map(chunk.parse, chunk.records): ...

A record is one jsonl line (raw bytes, parsed by `parse_json_line` in the tokenizer workers) or one
table row (a tuple of the `keys` columns' values). Rows are numbered like lines, from 1, so every
bad-record message reads `file:line: reason` (jsonl) or `file:row N: reason` (tables).

Tables are streamed: parquet by row group (`ParquetFile.iter_batches`, only the `keys` columns),
Arrow IPC files by record batch from a memory map. A `datasets.Dataset.save_to_disk` folder is its
`state.json` listing of `.arrow` files (Arrow IPC *stream* format) read in that order. A table that
lacks a key column, or whose column is not a string column, is a fatal error naming file and column.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK_RECORDS = 512
CHUNK_BYTES = 4 << 20
TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


class SourceError(ValueError):
    """An input that cannot be read as asked (missing column, wrong type, unknown folder layout)."""


@dataclass(frozen=True)
class InputFile:
    """One input file and how to read it: kind is 'jsonl', 'parquet' or 'arrow'."""

    path: Path
    kind: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass
class RecordChunk:
    """Consecutive records of one file: records[k] is row `first_row + k` (1-based)."""

    file: str
    kind: str
    first_row: int
    records: list
    disk_bytes: int     # bytes of the file consumed by this chunk (for progress)

    def location(self, offset: int) -> str:
        row = self.first_row + offset
        return f"{self.file}:{row}" if self.kind == "jsonl" else f"{self.file}:row {row}"


def kind_of(path: Path) -> str:
    """'parquet' / 'arrow' by suffix; everything else is read as jsonl (plain, .gz or .zst)."""
    return TABLE_SUFFIXES.get(path.suffix, "jsonl")


def _files_of_directory(directory: Path) -> list[InputFile]:
    """A save_to_disk dataset (state.json) in its own order, else every parquet/arrow/jsonl file below."""
    state = directory / "state.json"
    if state.is_file():
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise SourceError(f"{state}: not a datasets save_to_disk state file ({e!r})") from None
        return [InputFile(directory / n, "arrow") for n in names]
    if (directory / "dataset_dict.json").is_file():
        splits = json.loads((directory / "dataset_dict.json").read_text()).get("splits", [])
        raise SourceError(f"{directory}: is a DatasetDict with splits {splits}; give one split's folder, "
                          f"e.g. {directory / (splits[0] if splits else 'train')}")
    found = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and (p.suffix in TABLE_SUFFIXES or ".jsonl" in p.suffixes or ".json" in p.suffixes))
    if not found:
        raise FileNotFoundError(f"input folder {directory} holds no .parquet, .arrow or .jsonl files")
    return [InputFile(p, kind_of(p)) for p in found]


def resolve_inputs(patterns: list[str]) -> list[InputFile]:
    """Files named by paths, globs or folders, in the order given (globs and folders sorted).

    Raises FileNotFoundError naming a pattern that matches nothing."""
    files: list[InputFile] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        for m in map(Path, matches):
            files.extend(_files_of_directory(m) if m.is_dir() else [InputFile(m, kind_of(m))])
    return files


def shard_files(files: list[InputFile], num_shards: int, shard_index: int) -> list[InputFile]:
    """The `shard_index`-th of `num_shards` contiguous parts of `files`, balanced by file size.

    Contiguous, so merging the parts' outputs in shard order gives the bytes of one run over all
    files. Shard j starts at the first file whose middle byte lies past j/num_shards of all bytes,
    moved just enough that every shard gets at least one file.
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    if num_shards > len(files):
        raise ValueError(f"--num-shards {num_shards}: the inputs are only {len(files)} file(s), so some "
                         f"shard would get none; use at most {len(files)} shards")
    sizes = [max(f.size, 1) for f in files]
    total, mids, before = sum(sizes), [], 0
    for size in sizes:
        mids.append(2 * before + size)      # twice the middle byte, in integers
        before += size
    starts = [0]
    for j in range(1, num_shards):
        balanced = sum(1 for m in mids if m * num_shards < 2 * j * total)
        starts.append(min(max(balanced, starts[-1] + 1), len(files) - (num_shards - j)))
    starts.append(len(files))
    return files[starts[shard_index]:starts[shard_index + 1]]


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


class _CountingReader(io.RawIOBase):
    """The bytes read so far from `file` (`count`), where `tell()` cannot say: a named pipe or
    /dev/stdin has no position. Counts read-ahead too, which only moves progress a buffer early."""

    def __init__(self, file: io.RawIOBase):
        self.file, self.count = file, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.file.readinto(buffer) or 0
        self.count += n
        return n


def _jsonl_chunks(path: Path) -> Iterator[RecordChunk]:
    with open(path, "rb", buffering=0) as file:
        counter = _CountingReader(file)
        with io.BufferedReader(counter, 1 << 20) as raw, open_binary(path, raw) as f:
            lines: list[bytes] = []
            size, first, disk = 0, 1, 0
            for lineno, line in enumerate(f, start=1):
                if not lines:
                    first = lineno
                lines.append(line)
                size += len(line)
                if len(lines) >= CHUNK_RECORDS or size >= CHUNK_BYTES:
                    yield RecordChunk(str(path), "jsonl", first, lines, counter.count - disk)
                    disk = counter.count
                    lines, size = [], 0
            if lines or disk < counter.count:
                yield RecordChunk(str(path), "jsonl", first, lines, counter.count - disk)


def _check_columns(path: Path, schema, keys: tuple[str, ...]) -> None:
    import pyarrow as pa

    for key in keys:
        if key not in schema.names:
            raise SourceError(f"{path}: has no column {key!r} (columns: {', '.join(schema.names)}); "
                              f"choose the text column with --json-keys")
        t = schema.field(key).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
            raise SourceError(f"{path}: column {key!r} has type {t}, not a string column; choose the "
                              f"text column with --json-keys")


def _rows(batch, keys: tuple[str, ...]) -> list[tuple]:
    return list(zip(*(batch.column(k).to_pylist() for k in keys)))


def _parquet_chunks(path: Path, keys: tuple[str, ...]) -> Iterator[RecordChunk]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        _check_columns(path, pf.schema_arrow, keys)
        total_rows, size = max(pf.metadata.num_rows, 1), path.stat().st_size
        row, credited = 1, 0
        for batch in pf.iter_batches(batch_size=CHUNK_RECORDS, columns=list(keys)):
            done = size * (row - 1 + batch.num_rows) // total_rows
            yield RecordChunk(str(path), "parquet", row, _rows(batch, keys), done - credited)
            row, credited = row + batch.num_rows, done
        if credited < size:
            yield RecordChunk(str(path), "parquet", row, [], size - credited)


def _arrow_chunks(path: Path, keys: tuple[str, ...]) -> Iterator[RecordChunk]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)    # datasets' save_to_disk writes IPC streams
            batches = iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid as e:
                raise SourceError(f"{path}: not an Arrow IPC stream or file ({e})") from None
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        _check_columns(path, reader.schema, keys)
        row, credited = 1, 0
        for batch in batches:
            for lo in range(0, batch.num_rows, CHUNK_RECORDS):
                part = batch.slice(lo, CHUNK_RECORDS)
                done = source.tell() if lo + CHUNK_RECORDS >= batch.num_rows else credited
                yield RecordChunk(str(path), "arrow", row, _rows(part, keys), done - credited)
                row, credited = row + part.num_rows, done
        if credited < path.stat().st_size:
            yield RecordChunk(str(path), "arrow", row, [], path.stat().st_size - credited)


def read_chunks(files: list[InputFile], keys: tuple[str, ...] = ("text",)) -> Iterator[RecordChunk]:
    """Every record of `files`, in order, as chunks of at most CHUNK_RECORDS records."""
    for f in files:
        if f.kind == "jsonl":
            yield from _jsonl_chunks(f.path)
        elif f.kind == "parquet":
            yield from _parquet_chunks(f.path, keys)
        else:
            yield from _arrow_chunks(f.path, keys)


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
    missing = [k for k in keys if k not in obj]
    if missing:
        return None, f"missing key {missing[0]!r}"
    return check_values([obj[k] for k in keys], keys)


def check_values(values, keys: tuple[str, ...]) -> tuple[list[str] | None, str | None]:
    """(values, None) when each is a non-blank string, else (None, why the record is bad)."""
    for key, value in zip(keys, values):
        if value is None:
            return None, f"key {key!r} is null"
        if not isinstance(value, str):
            return None, f"key {key!r} is {type(value).__name__}, not a string"
        if not value.strip():
            return None, f"key {key!r} is empty"
    return list(values), None


def parse_record(kind: str, record, keys: tuple[str, ...]) -> tuple[list[str] | None, str | None]:
    """Values of `keys` of one record of a chunk of `kind`, or (None, reason)."""
    if kind == "jsonl":
        return parse_json_line(record, keys)
    return check_values(record, keys)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """The paths of `resolve_inputs(patterns)`, for readers of text and jsonl lines only (SourceError
    naming a parquet/arrow input)."""
    files = resolve_inputs(patterns)
    for f in files:
        if f.kind != "jsonl":
            raise SourceError(f"{f.path}: {f.kind} input is not supported here (text and jsonl files only)")
    return [f.path for f in files]


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
