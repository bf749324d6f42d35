"""Merging indexed datasets: the library side of `megatiny merge` (tools/merge_datasets.py)."""
from __future__ import annotations

from pathlib import Path

from megatiny.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


def merge(prefixes: list[str], output_prefix: str) -> IndexedDataset:
    """One dataset at `output_prefix` holding the documents of `prefixes` in order (same dtype)."""
    if not prefixes:
        raise ValueError("nothing to merge: no input prefixes")
    first = IndexedDataset(prefixes[0])
    with IndexedDatasetBuilder(output_prefix, first.dtype) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
    return IndexedDataset(output_prefix)


def prefixes_in(directory: str) -> list[str]:
    """Prefixes of every PREFIX.idx in `directory`, sorted by name."""
    return [str(p.with_suffix("")) for p in sorted(Path(directory).glob("*.idx"))]
