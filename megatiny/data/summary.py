"""What an indexed dataset holds: the library side of `megatiny inspect` (tools/inspect_dataset.py)."""
from __future__ import annotations

from megatiny.data.indexed_dataset import IndexedDataset


def summarize(ds: IndexedDataset) -> dict:
    """Counts and sizes: dtype, sequences, documents, tokens, .bin bytes, document lengths (tokens)."""
    lengths = ds.document_lengths()
    return {
        "prefix": ds.prefix, "dtype": ds.dtype.name, "sequences": len(ds), "documents": ds.num_documents,
        "tokens": int(lengths.sum()), "bin_bytes": ds.bin_path.stat().st_size,
        "doc_length_min": int(lengths.min()) if len(lengths) else 0,
        "doc_length_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "doc_length_max": int(lengths.max()) if len(lengths) else 0,
    }


def max_token_id(ds: IndexedDataset, chunk: int = 1 << 26) -> int | None:
    """Largest token id in the .bin (reads the whole file, chunk by chunk)."""
    tokens = ds.tokens
    if not len(tokens):
        return None
    return max(int(tokens[lo:lo + chunk].max()) for lo in range(0, len(tokens), chunk))
