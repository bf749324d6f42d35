"""Tokenize corpora (jsonl family, parquet, datasets save_to_disk folders) into MMIDIDX datasets.

`preprocess(...)` backs tools/preprocess_data.py. Records are read in chunks (megatiny.data.sources),
tokenized by worker processes (megatiny.data.worker_pool; at most `2 * workers` chunks in flight, so
memory does not grow with the input), and written in input order, so the output is byte-identical
for any worker count and for any source format holding the same texts. Each document is
`[BOS] + tokens + [EOS]` when both `prepend_bos` and `append_eod` are set.

Bad records (invalid JSON, not an object, missing key, null or non-string value, invalid UTF-8,
empty text) are counted, reported with file:line (file:row N for tables), and skipped; with
`strict=True` the first one is fatal. Whitespace-only jsonl lines are not data and are skipped
silently. A run fails (and leaves no output) when it writes no document or when more than
`max_bad_fraction` of its records are bad. Each output gets a PREFIX.json sidecar (sidecar.py).

`num_shards` / `shard_index` tokenize one contiguous part of the input files; merging the parts'
outputs in shard order (tools/merge_datasets.py) gives the bytes of one run over all files.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field

from megatiny.data.chunk_encoding import BadLine, ChunkEncoder, EncodedChunk, EncodeOptions, describe_chunk
from megatiny.data.indexed_dataset import IndexedDatasetBuilder, best_dtype
from megatiny.data.sidecar import DatasetSidecar, sidecar_path
from megatiny.data.sources import (  # noqa: F401  (open_binary, parse_json_line, expand_inputs: re-exported)
    RecordChunk,
    expand_inputs,
    open_binary,
    parse_json_line,
    read_chunks,
    resolve_inputs,
    shard_files,
)
from megatiny.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from megatiny.data.worker_pool import OrderedWorkerPool

DEFAULT_MAX_BAD_FRACTION = 0.01


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
    max_token_ids: list[int] = field(default_factory=list)    # per output (json key); -1 if none

    def summary(self) -> str:
        s = max(self.seconds, 1e-9)
        return (f"{self.documents} documents, {self.tokens} tokens, {self.input_bytes / 1e6:.1f} MB in "
                f"{self.seconds:.1f} s ({self.input_bytes / 1e6 / s:.2f} MB/s, "
                f"{self.tokens / s:,.0f} tokens/s); "
                f"{self.bad_lines} bad lines skipped")


class BadLineError(ValueError):
    """Raised in strict mode at the first bad input line."""


class EmptyOutputError(ValueError):
    """The run would write no document, or too many of its records are bad: nothing is written."""


def _encoded_chunks(chunks: Iterator[RecordChunk], workers: int, options: EncodeOptions,
                    tok) -> Iterator[EncodedChunk]:
    """Every chunk encoded, in order: in this process (`tok` reused) or by `workers` worker processes
    (megatiny.data.worker_pool: at most 2 x workers chunks in flight; any failure ends them all)."""
    if workers <= 1:
        yield from map(ChunkEncoder(options, tok), chunks)
        return
    with OrderedWorkerPool(ChunkEncoder, (options,), workers=workers, describe=describe_chunk) as pool:
        yield from pool.map_ordered(chunks)


def output_prefix_for(output_prefix: str | os.PathLike, key: str) -> str:
    return f"{output_prefix}_{key}_document"


def preprocess(inputs: list[str], output_prefix: str | os.PathLike, tokenizer: str | os.PathLike, *,
               json_keys: tuple[str, ...] = ("text",), workers: int = 1, prepend_bos: bool = False,
               append_eod: bool = False, strict: bool = False, progress: bool = False,
               max_bad_examples: int = 20, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
               num_shards: int = 1, shard_index: int = 0,
               bad_lines_file: str | os.PathLike | None = None) -> PreprocessStats:
    """Tokenize `inputs` (paths, globs, folders: jsonl/.gz/.zst, parquet, arrow, save_to_disk) into
    `{output_prefix}_{key}_document.{bin,idx,json}`.

    Every bad record is also written to `bad_lines_file` (one `file:line: reason` per line) if given.
    Raises EmptyOutputError (writing nothing) when no document is written or more than
    `max_bad_fraction` of the records are bad.
    """
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    files = shard_files(resolve_inputs(inputs), num_shards, shard_index)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    tok = load_tokenizer(tokenizer)
    if prepend_bos and tok.bos_id is None:
        raise ValueError(f"{tokenizer}: --prepend-bos given but the tokenizer has no BOS token (models "
                         f"such as Qwen2 have none: documents are separated by EOS alone); omit "
                         f"--prepend-bos")
    if append_eod and tok.eos_id is None:
        raise ValueError(f"{tokenizer}: --append-eod given but the tokenizer has no EOS token")
    options = EncodeOptions(str(tokenizer), tuple(json_keys), prepend_bos, append_eod)
    dtype = best_dtype(tok.vocab_size)
    builders: list[IndexedDatasetBuilder] = []
    stats = PreprocessStats(max_token_ids=[-1] * len(json_keys))
    bar = _progress_bar(sum(f.size for f in files), progress)
    start = time.perf_counter()
    stack = ExitStack()  # closes the worker pool promptly even when a bad line aborts the run
    try:
        for k in json_keys:     # inside the try: a failure aborts (removes) the ones already created
            builders.append(IndexedDatasetBuilder(output_prefix_for(output_prefix, k), dtype))
        bad_log = stack.enter_context(open(bad_lines_file, "w")) if bad_lines_file else None
        chunks = read_chunks(files, tuple(json_keys))
        results = stack.enter_context(closing(_encoded_chunks(chunks, workers, options, tok)))
        for encoded in results:
            arrays, bad = encoded.arrays, encoded.bad
            if bad and strict:
                raise BadLineError(f"{bad[0]} (run without --strict to skip and count bad lines)")
            for k, (builder, (tokens, lengths)) in enumerate(zip(builders, arrays)):
                builder.add_items(tokens, lengths)
                if len(tokens):
                    stats.max_token_ids[k] = max(stats.max_token_ids[k], int(tokens.max()))
            stats.documents += encoded.documents
            stats.tokens += sum(len(t) for t, _ in arrays)
            stats.input_bytes += encoded.input_bytes
            stats.bad_lines += len(bad)
            if bad_log is not None:
                bad_log.writelines(f"{b}\n" for b in bad)
            stats.bad_reasons.update(b.reason.split(" (")[0] for b in bad)
            stats.bad_examples.extend(bad[:max(0, max_bad_examples - len(stats.bad_examples))])
            if bar is not None:
                bar.update(encoded.disk_bytes)
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(docs=stats.documents, tokens=stats.tokens, refresh=False)
                bar.set_description(f"text {stats.input_bytes / 1e6 / elapsed:.1f} MB/s")
        _check_enough_documents(stats, files, json_keys, max_bad_fraction)
        sources = [str(f.path.resolve()) for f in files]
        fingerprint = tokenizer_fingerprint(tok)
        for k, (key, builder) in enumerate(zip(json_keys, builders)):
            sidecar_path(builder.prefix).unlink(missing_ok=True)   # never leave a stale one beside new data
            builder.finalize()
            meta = DatasetSidecar(
                tokenizer=fingerprint, dtype=dtype.name, max_token_id=stats.max_token_ids[k],
                num_documents=builder.num_documents, num_tokens=builder.num_tokens, json_key=key,
                prepend_bos=prepend_bos, append_eod=append_eod, sources=sources)
            meta.write(builder.prefix)
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


def _check_enough_documents(stats: PreprocessStats, files, json_keys, max_bad_fraction: float) -> None:
    """EmptyOutputError when nothing was read, or more than max_bad_fraction of the records are bad."""
    records = stats.documents + stats.bad_lines
    first = "; ".join(str(b) for b in stats.bad_examples[:5])
    names = ", ".join(str(f.path) for f in files[:3]) + (", ..." if len(files) > 3 else "")
    if records == 0:
        raise EmptyOutputError(f"{names}: no records (empty input); nothing written")
    if stats.documents == 0:
        raise EmptyOutputError(f"{names}: none of the {records} records has a usable "
                               f"{'/'.join(map(repr, json_keys))} field ({first}); nothing written "
                               f"(pick the text field with --json-keys)")
    if stats.bad_lines > max_bad_fraction * records:
        raise EmptyOutputError(f"{names}: {stats.bad_lines} of {records} records are bad "
                               f"({stats.bad_lines / records:.2%} > --max-bad-fraction {max_bad_fraction}); "
                               f"first ones: {first}; nothing written (fix the input or raise "
                               f"--max-bad-fraction)")


def _progress_bar(total_bytes: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
