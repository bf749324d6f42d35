"""Memory-mapped token datasets in Megatron-LM's `MMIDIDX` version-1 format (PREFIX.bin + PREFIX.idx).

Byte-compatible with Megatron-LM / Megatron-core, Megatron-DeepSpeed and GPT-NeoX (whose legacy
dtype table only differs for float32/float64, which token files never use). Layout (little endian),
see docs/FORMAT.md:

    .idx: magic b"MMIDIDX\\x00\\x00" | <Q version=1 | <B dtype code | <Q N sequences | <Q D doc-index len
          | int32[N] sequence lengths | int64[N] byte pointers into .bin | int64[D] document index
    .bin: the tokens of all sequences back to back, no header.

A document is one or more consecutive sequences; the document index holds 0 and the sequence count
at the end of each document. Files written by `IndexedDatasetBuilder` have one sequence per document.

The writer streams: tokens go straight to the `.bin`, sequence lengths and document boundaries spill
to temporary files, and the `.idx` is assembled chunk by chunk at `finalize`, so memory stays bounded
whatever the corpus size. Outputs appear under their final names only when complete.
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = 34  # 9 magic + 8 version + 1 dtype + 8 N + 8 D

# Megatron-core's dtype codes (GPT-NeoX swaps 6 and 7: float32/float64, never used for tokens).
DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}

_CHUNK = 1 << 22  # elements per chunk when streaming index arrays


def best_dtype(vocab_size: int) -> np.dtype:
    """uint16 for vocabularies below 65,500 tokens (Megatron's rule), else int32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def data_file_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.bin")


def index_file_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.idx")


class IndexFormatError(ValueError):
    """A `.idx`/`.bin` pair that is not a valid MMIDIDX v1 dataset."""


def _read_header(path: Path) -> tuple[np.dtype, int, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < 9 or head[:9] != MAGIC:
        raise IndexFormatError(f"{path}: not a Megatron MMIDIDX index file (bad magic {head[:9]!r}; expected "
                               f"{MAGIC!r}). Was it written by an old 'cached'/'lazy' Megatron format?")
    if len(head) < HEADER_SIZE:
        raise IndexFormatError(f"{path}: truncated header ({size} bytes, need {HEADER_SIZE})")
    (version,) = struct.unpack("<Q", head[9:17])
    if version != VERSION:
        raise IndexFormatError(f"{path}: index version {version} is not supported (only version {VERSION})")
    code = head[17]
    if code not in DTYPE_CODES:
        raise IndexFormatError(f"{path}: unknown dtype code {code} (known: {sorted(DTYPE_CODES)})")
    n, d = struct.unpack("<QQ", head[18:34])
    expected = HEADER_SIZE + 12 * n + 8 * d
    if size == expected + n and n > 0:
        raise IndexFormatError(f"{path}: has one extra byte per sequence: a Megatron-core multimodal index "
                               f"(sequence modes), which megatiny does not read")
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise IndexFormatError(f"{path}: {what}: {size} bytes, but the header (N={n} sequences, D={d} "
                               f"document-index entries) implies {expected} bytes")
    return np.dtype(DTYPE_CODES[code]), int(n), int(d)


class IndexedDataset:
    """Read-only, memory-mapped view of PREFIX.bin / PREFIX.idx.

    `ds[i]` is sequence i as a zero-copy numpy view (dtype of the file); `ds.get(i, offset, length)`
    reads only the requested slice; `ds.tokens` is the whole `.bin` as one flat read-only array.
    Opening validates the header, the file sizes and the index
    arrays' consistency, and raises `IndexFormatError` naming the file otherwise.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        self.idx_path = index_file_path(prefix)
        self.bin_path = data_file_path(prefix)
        for p in (self.idx_path, self.bin_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing (an indexed dataset is the pair {self.prefix}.bin + "
                                        f"{self.prefix}.idx, as written by tools/preprocess_data.py)")
        self.dtype, n, d = _read_header(self.idx_path)
        idx = np.memmap(self.idx_path, dtype=np.uint8, mode="r")
        self._idx_mmap = idx
        self.sequence_lengths = np.frombuffer(idx, dtype="<i4", count=n, offset=HEADER_SIZE)
        self.sequence_pointers = np.frombuffer(idx, dtype="<i8", count=n, offset=HEADER_SIZE + 4 * n)
        self.document_indices = np.frombuffer(idx, dtype="<i8", count=d, offset=HEADER_SIZE + 12 * n)
        self._validate(n, d)
        if self.bin_path.stat().st_size == 0:
            self.tokens = np.zeros(0, dtype=self.dtype)
        else:
            self.tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r")

    def _validate(self, n: int, d: int) -> None:
        itemsize = self.dtype.itemsize
        bin_size = self.bin_path.stat().st_size
        if d < 1 or self.document_indices[0] != 0 or self.document_indices[-1] != n:
            raise IndexFormatError(f"{self.idx_path}: document index must start at 0 and end at N={n}, "
                                   f"got {self.document_indices[:1].tolist()}..."
                                   f"{self.document_indices[-1:].tolist()}")
        if n == 0:
            expected_bin = 0
        else:
            last_end = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * itemsize
            expected_bin = last_end
            if self.sequence_pointers[0] != 0:
                raise IndexFormatError(f"{self.idx_path}: first sequence pointer is "
                                       f"{int(self.sequence_pointers[0])}, expected 0")
            if (self.sequence_lengths < 0).any():
                raise IndexFormatError(f"{self.idx_path}: negative sequence lengths")
        if bin_size != expected_bin:
            raise IndexFormatError(
                f"{self.bin_path}: size {bin_size} bytes disagrees with {self.idx_path}, which describes "
                f"{expected_bin} bytes ({n} sequences of {self.dtype.name}); the pair is truncated or "
                f"mismatched")

    def __reduce__(self):
        # Re-open by path in the receiving process (e.g. DataLoader workers) instead of pickling the mmap.
        return (IndexedDataset, (self.prefix,))

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def _start(self, i: int) -> int:
        return int(self.sequence_pointers[i]) // self.dtype.itemsize

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index sequences with an int (use get() for slices), got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {self.prefix} ({n} sequences)")
        i = int(i) % n
        start = self._start(i)
        return self.tokens[start:start + int(self.sequence_lengths[i])]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence i (to its end if length is None); a view."""
        seq = self[i]
        if offset < 0 or offset > len(seq):
            raise IndexError(f"offset {offset} out of range for sequence {i} of length {len(seq)}")
        end = len(seq) if length is None else offset + length
        if length is not None and (length < 0 or end > len(seq)):
            raise IndexError(f"slice [{offset}, {end}) out of range for sequence {i} of length {len(seq)}")
        return seq[offset:end]

    def get_document(self, doc: int) -> np.ndarray:
        """All tokens of document `doc` (its sequences concatenated; a view when it has one sequence)."""
        if not 0 <= doc < self.num_documents:
            raise IndexError(f"document {doc} out of range for {self.prefix} "
                             f"({self.num_documents} documents)")
        lo, hi = int(self.document_indices[doc]), int(self.document_indices[doc + 1])
        if hi - lo == 1:
            return self[lo]
        if hi == lo:
            return np.zeros(0, dtype=self.dtype)
        start = self._start(lo)
        return self.tokens[start:self._start(hi - 1) + int(self.sequence_lengths[hi - 1])]

    def document_lengths(self) -> np.ndarray:
        """Tokens per document, int64 [num_documents]."""
        if self.num_documents == len(self):
            return self.sequence_lengths.astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(self.sequence_lengths, dtype=np.int64)])
        return np.diff(csum[self.document_indices])

    def __repr__(self) -> str:
        return (f"IndexedDataset({self.prefix!r}, sequences={len(self)}, documents={self.num_documents}, "
                f"dtype={self.dtype.name})")


class IndexedDatasetBuilder:
    """Streaming writer of PREFIX.bin / PREFIX.idx.

        builder = IndexedDatasetBuilder(prefix, dtype=best_dtype(tok.vocab_size))
        builder.add_document(tokens)        # one sequence = one document
        builder.add_index(other_prefix)     # append a whole existing dataset (merging)
        builder.finalize()                  # writes the .idx, renames both files into place

    Until `finalize` the outputs live under hidden temporary names next to the target; `abort()` (or
    an exception inside a `with` block) removes them, leaving any older dataset untouched.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type = np.uint16):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            known = [np.dtype(t).name for t in DTYPE_CODES.values()]
            raise ValueError(f"dtype {self.dtype} is not an MMIDIDX dtype ({known})")
        out_dir = Path(self.prefix).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        self._tmpdir = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{Path(self.prefix).name}.tmp-"))
        self._bin = open(self._tmpdir / "data.bin", "wb")
        self._lengths = open(self._tmpdir / "lengths.i4", "wb")
        self._doc_ends = open(self._tmpdir / "doc_ends.i8", "wb")
        self.num_sequences = 0
        self.num_documents = 0
        self.num_tokens = 0
        self._info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self._last_doc_end = 0
        self._closed = False

    def __enter__(self) -> IndexedDatasetBuilder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.finalize()

    def add_item(self, tokens) -> None:
        """Append one sequence (ends no document; call `end_document`)."""
        arr = self._cast(tokens)
        if len(arr) > np.iinfo(np.int32).max:
            raise ValueError(f"sequence of {len(arr)} tokens exceeds the format's int32 length")
        self._bin.write(arr.tobytes())
        self._lengths.write(struct.pack("<i", len(arr)))
        self.num_sequences += 1
        self.num_tokens += len(arr)

    def _cast(self, tokens) -> np.ndarray:
        """`tokens` as a contiguous 1-D array of the output dtype; ids that do not fit are an error."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"a sequence must be 1-D, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            if self._info is not None and arr.size and arr.dtype.kind in "iu":
                lo, hi = int(arr.min()), int(arr.max())
                if lo < self._info.min or hi > self._info.max:
                    raise ValueError(f"token ids [{lo}, {hi}] do not fit {self.dtype.name}")
            arr = arr.astype(self.dtype)
        return np.ascontiguousarray(arr)

    def add_items(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many sequences given as one flat token array and their lengths (each a document)."""
        tokens = self._cast(tokens)
        lengths = np.ascontiguousarray(lengths, dtype="<i4")
        if int(lengths.sum(dtype=np.int64)) != len(tokens):
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {len(tokens)} tokens were given")
        self._bin.write(tokens.tobytes())
        self._lengths.write(lengths.tobytes())
        ends = self.num_sequences + np.arange(1, len(lengths) + 1, dtype="<i8")
        self._doc_ends.write(ends.tobytes())
        self.num_sequences += len(lengths)
        self.num_documents += len(lengths)
        self.num_tokens += len(tokens)
        self._last_doc_end = self.num_sequences

    def end_document(self) -> None:
        self._doc_ends.write(struct.pack("<q", self.num_sequences))
        self.num_documents += 1
        self._last_doc_end = self.num_sequences

    def add_document(self, tokens) -> None:
        """Append one document made of one sequence."""
        self.add_item(tokens)
        self.end_document()

    def add_index(self, prefix: str | os.PathLike) -> None:
        """Append every sequence and document of an existing dataset (same dtype), streaming."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise ValueError(f"{prefix}: dtype {other.dtype.name} differs from the output's "
                             f"{self.dtype.name}; datasets of different dtypes cannot be merged")
        self._bin.flush()
        with open(other.bin_path, "rb") as src:
            shutil.copyfileobj(src, self._bin, length=1 << 24)
        for lo in range(0, len(other), _CHUNK):
            self._lengths.write(np.ascontiguousarray(other.sequence_lengths[lo:lo + _CHUNK], "<i4").tobytes())
        for lo in range(1, len(other.document_indices), _CHUNK):
            ends = other.document_indices[lo:lo + _CHUNK].astype("<i8") + self.num_sequences
            self._doc_ends.write(ends.tobytes())
        self.num_sequences += len(other)
        self.num_documents += other.num_documents
        self.num_tokens += other.num_tokens
        self._last_doc_end = self.num_sequences

    def finalize(self) -> tuple[Path, Path]:
        """Write the .idx, then move .bin and .idx to their final names. Returns (bin, idx) paths."""
        if self._closed:
            raise RuntimeError("builder already finalized or aborted")
        if self._last_doc_end != self.num_sequences:
            self.abort()
            dangling = self.num_sequences - self._last_doc_end
            raise ValueError(f"{self.prefix}: {dangling} sequence(s) added after "
                             f"the last end_document(); call end_document() before finalize()")
        try:
            self._bin.flush()
            os.fsync(self._bin.fileno())
            for f in (self._bin, self._lengths, self._doc_ends):
                f.close()
            tmp_idx = self._tmpdir / "data.idx"
            self._write_index(tmp_idx)
            bin_path, idx_path = data_file_path(self.prefix), index_file_path(self.prefix)
            # .bin first: a reader needs the .idx, so the pair only looks complete once both are in place.
            os.replace(self._tmpdir / "data.bin", bin_path)
            os.replace(tmp_idx, idx_path)
        finally:
            self._closed = True
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        return bin_path, idx_path

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._closed:
            return
        for f in (self._bin, self._lengths, self._doc_ends):
            f.close()
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._closed = True

    def _write_index(self, path: Path) -> None:
        n = self.num_sequences
        lengths = np.zeros(0, "<i4")
        if n:
            lengths = np.memmap(self._tmpdir / "lengths.i4", dtype="<i4", mode="r", shape=(n,))
        with open(path, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", CODE_OF_DTYPE[self.dtype]))
            f.write(struct.pack("<Q", n))
            f.write(struct.pack("<Q", self.num_documents + 1))
            for lo in range(0, n, _CHUNK):
                f.write(np.ascontiguousarray(lengths[lo:lo + _CHUNK]).tobytes())
            offset = 0
            for lo in range(0, n, _CHUNK):
                chunk = lengths[lo:lo + _CHUNK].astype("<i8") * self.dtype.itemsize
                pointers = np.cumsum(chunk) - chunk + offset
                offset += int(chunk.sum())
                f.write(pointers.astype("<i8").tobytes())
            f.write(struct.pack("<q", 0))
            with open(self._tmpdir / "doc_ends.i8", "rb") as ends:
                shutil.copyfileobj(ends, f, length=1 << 24)
            f.flush()
            os.fsync(f.fileno())
        del lengths
