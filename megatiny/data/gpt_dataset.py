"""Fixed-length GPT training samples packed across documents.

Two index layouts, chosen by `DataConfig.index` (docs/FORMAT.md says which to use when):

* "block" (default): block_index.py, Megatron's semantics with O(documents / 128) memory and no
  O(samples) array, for TinyLlama-scale schedules.
* "megatron": Megatron's GPTDataset maths, in numpy, bit-compatible with megatiny's earlier builds:

Three index arrays, built vectorized and cached as `.npy`:

  document index  int32 [E]      the split's sequences repeated over `num_epochs` epochs and shuffled;
                                 when the last epoch is needed for < 80% of its samples it is
                                 shuffled separately, so the partial epoch does not skew the mix.
  sample index    int32/64 [S+1, 2]  (position in the document index, token offset) where sample s
                                 starts, i.e. global token s * seq_length of the concatenation;
                                 S = (epochs * tokens_per_epoch - 1) // seq_length. Sample s spans
                                 seq_length + 1 tokens, so consecutive samples share one token.
  shuffle index   int32/64 [num_samples]  the first num_samples entries of a permutation of the
                                 S samples (a separate last epoch is permuted on its own, after
                                 the others); drawn without materializing the unused tail.

`ds[i]` (0 <= i < num_samples) is an int64 array of seq_length + 1 tokens: input_ids = ds[i][:-1],
labels = ds[i][1:].
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from megatiny.data import block_index
from megatiny.data.cache import IndexCache
from megatiny.data.indexed_dataset import IndexedDataset

INDEX_VERSION = 1
SEPARATE_LAST_EPOCH_THRESHOLD = 0.80


def num_epochs_needed(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Smallest number of epochs whose tokens yield `num_samples` samples of seq_length + 1 tokens."""
    if tokens_per_epoch <= 0:
        raise ValueError("the dataset split has no tokens")
    need = num_samples * seq_length + 1
    return max(1, -(-need // tokens_per_epoch))


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.Generator,
                         separate_last_epoch: bool) -> np.ndarray:
    """`documents` tiled `num_epochs` times and shuffled (the last epoch on its own if asked), int32.

    Filled and shuffled in place in one preallocated array (no tile/concatenate copies).
    """
    dtype = np.int32 if len(documents) == 0 or documents.max() < np.iinfo(np.int32).max else np.int64
    n = len(documents)
    index = np.empty(n * num_epochs, dtype=dtype)
    for e in range(num_epochs):
        index[e * n:(e + 1) * n] = documents
    if separate_last_epoch and num_epochs > 1:
        rng.shuffle(index[:-n])
        rng.shuffle(index[-n:])
    else:
        rng.shuffle(index)
    return index


def build_sample_index(sizes: np.ndarray, document_index: np.ndarray, seq_length: int,
                       total_tokens: int | None = None, chunk: int = 1 << 20) -> np.ndarray:
    """Start (document-index position, offset) of every sample, [S+1, 2], vectorized.

    Sample s starts at global token p = s * seq_length of the documents concatenated in
    `document_index` order; its row is the position j of the document holding token p and the
    offset of p inside it. Empty documents hold no token, so they are skipped (row 0 is always
    (0, 0), as in Megatron's loop). S = (total_tokens - 1) // seq_length.

    Works through the document index in chunks so temporaries stay small and are reused: the only
    large allocation is the output (fresh pages are expensive on some kernels and sandboxes).
    """
    n = len(document_index)
    if total_tokens is None:
        total_tokens = sum(int(sizes[document_index[lo:lo + chunk]].sum(dtype=np.int64))
                           for lo in range(0, n, chunk))
    num_samples = (total_tokens - 1) // seq_length if total_tokens > 0 else 0
    dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
    index = np.empty((num_samples + 1, 2), dtype=dtype)
    row, tokens_before, samples_before = 0, 0, 0   # rows written; tokens/sample starts before this chunk
    for lo in range(0, n, chunk):
        if row > num_samples:
            break
        lengths = sizes[document_index[lo:lo + chunk]].astype(np.int64)
        ends = np.cumsum(lengths)
        ends += tokens_before
        # sample starts (multiples of seq_length) at or before each document's end, minus those before it
        starts_through = (ends + (seq_length - 1)) // seq_length
        counts = np.diff(starts_through, prepend=samples_before)
        positions = np.repeat(np.arange(lo, lo + len(lengths), dtype=np.int64), counts)
        take = min(len(positions), num_samples + 1 - row)
        positions = positions[:take]
        doc_starts = (ends - lengths)[positions - lo]
        index[row:row + take, 0] = positions
        index[row:row + take, 1] = np.arange(row, row + take, dtype=np.int64) * seq_length - doc_starts
        row += take
        tokens_before = int(ends[-1])
        samples_before = int(starts_through[-1])
    if row != num_samples + 1:
        raise RuntimeError(f"sample index filled {row} of {num_samples + 1} rows; sizes and "
                           f"document_index disagree")
    index[0] = (0, 0)
    return index


def build_sample_index_reference(sizes: np.ndarray, document_index: np.ndarray,
                                 seq_length: int) -> np.ndarray:
    """Megatron's `build_sample_idx` loop, in plain Python: the specification the fast version meets."""
    total = int(sum(int(sizes[d]) for d in document_index))
    num_samples = (total - 1) // seq_length
    rows = [(0, 0)]
    doc_pos, doc_offset = 0, 0
    for _ in range(num_samples):
        remaining = seq_length + 1
        while remaining != 0:
            doc_length = int(sizes[document_index[doc_pos]]) - doc_offset
            remaining -= doc_length
            if remaining <= 0:
                doc_offset += remaining + doc_length - 1
                remaining = 0
            else:
                doc_pos += 1
                doc_offset = 0
        rows.append((doc_pos, doc_offset))
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def random_ordered_sample(lo: int, hi: int, count: int, rng: np.random.Generator,
                          dtype=np.int64) -> np.ndarray:
    """`count` distinct values of [lo, hi) in uniformly random order: the first `count` entries of a
    random permutation, without building the permutation when count is small."""
    n = hi - lo
    if not 0 <= count <= n:
        raise ValueError(f"cannot draw {count} distinct values from [{lo}, {hi})")
    if 2 * count >= n:
        perm = np.arange(lo, hi, dtype=dtype)
        rng.shuffle(perm)
        return perm[:count].copy() if count < n else perm
    # First occurrences of i.i.d. uniform draws form a uniformly random ordered sample.
    picked = np.zeros(0, dtype=np.int64)
    while len(picked) < count:
        draws = np.concatenate([picked, rng.integers(0, n, size=int((count - len(picked)) * 1.2) + 16)])
        _, first = np.unique(draws, return_index=True)
        picked = draws[np.sort(first)]
    return (picked[:count] + lo).astype(dtype)


def build_shuffle_index(num_samples: int, total: int, rng: np.random.Generator,
                        count: int | None = None) -> np.ndarray:
    """First `count` (default `total`) entries of: a permutation of [0, num_samples) followed by a
    separate permutation of [num_samples, total)."""
    count = total if count is None else count
    dtype = np.int32 if total < np.iinfo(np.int32).max else np.int64
    if count <= num_samples:
        return random_ordered_sample(0, num_samples, count, rng, dtype)
    index = np.empty(count, dtype=dtype)
    index[:num_samples] = np.arange(num_samples, dtype=dtype)
    rng.shuffle(index[:num_samples])
    index[num_samples:] = random_ordered_sample(num_samples, total, count - num_samples, rng, dtype)
    return index


def build_indices(sizes: np.ndarray, sequence_range: tuple[int, int], num_samples: int, seq_length: int,
                  seed: int, *, what: str = "the dataset split",
                  timings: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document index, sample index, shuffle index) of `num_samples` samples over sequences
    [first, end) of `sizes` (tokens per sequence): epochs, separate last epoch, one rng seeded `seed`.

    `timings`, if given, receives the seconds of each phase ("document", "sample", "shuffle").
    """
    first, end = sequence_range
    if num_samples == 0:
        return (np.zeros(0, np.int32), np.zeros((1, 2), np.int32), np.zeros(0, np.int32))
    tokens_per_epoch = int(sizes[first:end].sum(dtype=np.int64))
    if tokens_per_epoch <= 1:
        raise ValueError(f"{what} (sequences {first}..{end}) has {tokens_per_epoch} tokens; it cannot "
                         f"provide {num_samples} samples")
    t0 = time.perf_counter()
    num_epochs = num_epochs_needed(tokens_per_epoch, seq_length, num_samples)
    separate_last, samples_before_last = False, 0
    if num_epochs > 1:
        samples_before_last = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
        samples_per_epoch = (tokens_per_epoch - 1) // seq_length
        from_last = num_samples - samples_before_last
        separate_last = from_last < int(SEPARATE_LAST_EPOCH_THRESHOLD * samples_per_epoch)
    rng = np.random.default_rng(seed)
    document_index = build_document_index(np.arange(first, end, dtype=np.int64), num_epochs, rng,
                                          separate_last)
    t1 = time.perf_counter()
    sample_index = build_sample_index(sizes, document_index, seq_length,
                                      total_tokens=num_epochs * tokens_per_epoch)
    t2 = time.perf_counter()
    total = len(sample_index) - 1
    shuffle_index = build_shuffle_index(samples_before_last if separate_last else total, total, rng,
                                        count=num_samples)
    if timings is not None:
        timings.update(document=t1 - t0, sample=t2 - t1, shuffle=time.perf_counter() - t2)
    return document_index, sample_index, shuffle_index


def default_cache_dir(prefix: str | os.PathLike) -> Path:
    return Path(prefix).resolve().parent / "megatiny_cache"


def describe_indexed(indexed: IndexedDataset) -> dict[str, Any]:
    """What identifies an indexed dataset's content cheaply: path, file sizes, counts."""
    return {
        "prefix": str(Path(indexed.prefix).resolve()),
        "bin_bytes": indexed.bin_path.stat().st_size,
        "idx_bytes": indexed.idx_path.stat().st_size,
        "num_sequences": len(indexed),
        "num_documents": indexed.num_documents,
        "dtype": indexed.dtype.name,
    }


INDEX_KINDS = ("block", "megatron")
MEGATRON_ARRAYS = ("document", "sample", "shuffle")


def count_tokens(sizes: np.ndarray, sequence_range: tuple[int, int], chunk: int = 1 << 24) -> int:
    """Tokens in sequences [first, end) of `sizes`, summed in chunks (sizes may be a large memmap)."""
    first, end = sequence_range
    return sum(int(sizes[lo:min(lo + chunk, end)].sum(dtype=np.int64)) for lo in range(first, end, chunk))


def build_block_indices(sizes: np.ndarray, sequence_range: tuple[int, int], num_samples: int,
                        seq_length: int, seed: int, *,
                        what: str = "the dataset split") -> tuple[dict[str, np.ndarray], int]:
    """(arrays of the block index, samples available) for `num_samples` samples of sequences
    [first, end) of `sizes`: the `index: block` counterpart of `build_indices`."""
    tokens = count_tokens(sizes, sequence_range)
    if tokens <= 0:
        raise ValueError(f"{what} has no tokens (sequences {sequence_range[0]}..{sequence_range[1]}); it "
                         f"cannot provide {num_samples} samples")
    epochs = num_epochs_needed(tokens, seq_length, num_samples)
    arrays = block_index.build_block_arrays(sizes, sequence_range, epochs, seed)
    return arrays, block_index.epoch_sample_starts(tokens, epochs, seq_length)[-1]


class MegatronSampleIndex:
    """Random access to the samples described by Megatron's three arrays (`build_indices`)."""

    def __init__(self, document_index: np.ndarray, sample_index: np.ndarray, shuffle_index: np.ndarray,
                 sizes: np.ndarray):
        self.document_index, self.sample_index = document_index, sample_index
        self.shuffle_index, self.sizes = shuffle_index, sizes

    def pieces(self, i: int) -> list[tuple[int, int, int]]:
        """(sequence id, begin, end) token ranges of served sample i, in order."""
        s = int(self.shuffle_index[i])
        (doc0, off0), (doc1, off1) = self.sample_index[s:s + 2].tolist()
        out = []
        for j in range(doc0, doc1 + 1):
            seq = int(self.document_index[j])
            end = off1 + 1 if j == doc1 else int(self.sizes[seq])
            out.append((seq, off0 if j == doc0 else 0, end))
        return out


class GPTDataset:
    """`num_samples` packed samples of seq_length + 1 tokens over one split of one indexed dataset.

    indexed: the tokens. sequence_range: (first, end) sequence ids of this split (the split is made
    by document; see `split_document_ranges`). index: "block" (block_index.py: O(documents / 128)
    memory) or "megatron" (the three materialized arrays above). Indexes are loaded from
    `cache_dir` when present, otherwise built and written there (cache.IndexCache).
    token_limit: if given, every sample is checked to hold only ids below it (the model's vocab
    size, for data without a PREFIX.json sidecar), failing with the dataset's name.
    """

    def __init__(self, indexed: IndexedDataset, sequence_range: tuple[int, int], num_samples: int,
                 seq_length: int, seed: int, cache_dir: str | os.PathLike | None = None, name: str = "train",
                 index: str = "block", token_limit: int | None = None):
        if seq_length < 1:
            raise ValueError(f"seq_length must be >= 1, got {seq_length}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if index not in INDEX_KINDS:
            raise ValueError(f"index must be one of {INDEX_KINDS}, got {index!r}")
        first, end = sequence_range
        if not 0 <= first <= end <= len(indexed):
            raise ValueError(f"sequence_range {sequence_range} out of bounds for {indexed.prefix} "
                             f"({len(indexed)} sequences)")
        self.indexed = indexed
        self.name = name
        self.seq_length = seq_length
        self.num_samples = num_samples
        self.seed = seed
        self.index = index
        self.token_limit = token_limit
        self.sequence_range = (int(first), int(end))
        self.sizes = indexed.sequence_lengths
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(indexed.prefix)
        self.key = {
            "index_version": INDEX_VERSION, "kind": "GPTDataset", "dataset": describe_indexed(indexed),
            "sequence_range": list(self.sequence_range), "num_samples": num_samples,
            "seq_length": seq_length, "seed": seed,
        }
        if index == "block":     # megatron keeps today's key, so existing caches stay valid
            self.key |= {"index": "block", "block_rows": block_index.ROWS}
        self.cache = IndexCache(self.cache_dir, f"{Path(indexed.prefix).name}-{name}", self.key)
        self.hash = self.cache.hash
        names = MEGATRON_ARRAYS if index == "megatron" else block_index.ARRAY_NAMES
        arrays = self.cache.load_or_build(names, self._build, lambda arrays: self.describe())
        if index == "megatron":
            self.document_index, self.sample_index, self.shuffle_index = (arrays[k] for k in names)
            self.sample_lookup = MegatronSampleIndex(self.document_index, self.sample_index,
                                                     self.shuffle_index, self.sizes)
            self.num_available_samples = len(self.sample_index) - 1
        else:
            self.block_index = block_index.BlockSampleIndex(arrays, self.sizes, self.sequence_range,
                                                            num_samples, seq_length, seed)
            self.sample_lookup = self.block_index
            self.num_available_samples = self.block_index.num_available_samples

    def _build(self) -> dict[str, np.ndarray]:
        what = f"{self.indexed.prefix}: the {self.name} split"
        if self.index == "megatron":
            arrays = build_indices(self.sizes, self.sequence_range, self.num_samples, self.seq_length,
                                   self.seed, what=what)
            self.document_index, self.sample_index, _ = arrays
            self.num_available_samples = len(self.sample_index) - 1
            return dict(zip(MEGATRON_ARRAYS, arrays))
        arrays, self.num_available_samples = build_block_indices(
            self.sizes, self.sequence_range, self.num_samples, self.seq_length, self.seed, what=what)
        return arrays

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for {self.name} dataset of {self.num_samples} samples")
        tokens = self.indexed.tokens
        pointers, lengths, itemsize = self.indexed.sequence_pointers, self.sizes, self.indexed.dtype.itemsize
        out = np.empty(self.seq_length + 1, dtype=np.int64)
        filled = 0
        for seq, begin, end in self.sample_lookup.pieces(i):   # each piece straight into the int64 output
            n = end - begin
            if n < 0 or filled + n > len(out) or end > int(lengths[seq]):
                break
            base = int(pointers[seq]) // itemsize
            out[filled:filled + n] = tokens[base + begin:base + end]
            filled += n
        if filled != len(out):
            raise RuntimeError(f"{self.indexed.prefix}: sample {i} does not span {self.seq_length + 1} "
                               f"tokens; the index cache in {self.cache_dir} is stale or corrupt")
        if self.token_limit is not None and int(out.max()) >= self.token_limit:
            raise ValueError(f"{self.indexed.prefix}: sample {i} of the {self.name} split holds token id "
                             f"{int(out.max())} but the model's vocab_size is {self.token_limit}; the data "
                             f"was tokenized with a larger vocabulary than the model's")
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able description (for checkpoints): what was built and its index hash."""
        d = {**self.key, "index_hash": self.hash, "num_available_samples": int(self.num_available_samples)}
        if self.index == "megatron":
            d["num_documents_in_index"] = int(len(self.document_index))
        return d


def split_document_ranges(num_documents: int, split: list[float]) -> list[tuple[int, int]]:
    """Megatron's split: normalized weights -> contiguous [start, end) document ranges covering all."""
    total = float(sum(split))
    if total <= 0 or any(w < 0 for w in split):
        raise ValueError(f"split weights must be non-negative with a positive sum, got {split}")
    bounds = [0]
    for w in split:
        bounds.append(bounds[-1] + int(round(w / total * num_documents)))
    diff = bounds[-1] - num_documents
    bounds = [bounds[0]] + [b - diff for b in bounds[1:]]
    bounds = [min(max(b, 0), num_documents) for b in bounds]
    return [(bounds[i], bounds[i + 1]) for i in range(len(split))]
