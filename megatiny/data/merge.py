"""Merging indexed datasets: the library side of `megatiny merge` (tools/merge_datasets.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from megatiny.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatiny.data.sidecar import DatasetSidecar, merge_sidecars, sidecar_path


def merge(prefixes: list[str], output_prefix: str) -> IndexedDataset:
    """One dataset at `output_prefix` holding the documents of `prefixes` in order (same dtype).

    The PREFIX.json sidecars are combined (same tokenizer required); when some input has none, the
    output gets none either (with a warning on stderr).
    """
    if not prefixes:
        raise ValueError("nothing to merge: no input prefixes")
    first = IndexedDataset(prefixes[0])
    metas = [DatasetSidecar.read(p) for p in prefixes]
    merged = merge_sidecars(metas, prefixes) if all(m is not None for m in metas) else None
    sidecar_path(output_prefix).unlink(missing_ok=True)
    with IndexedDatasetBuilder(output_prefix, first.dtype) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
    if merged is not None:
        merged.write(output_prefix)
    elif any(m is not None for m in metas):
        print(f"warning: some inputs have no {sidecar_path('PREFIX')} sidecar, so {output_prefix} gets none",
              file=sys.stderr)
    return IndexedDataset(output_prefix)


def prefixes_in(directory: str) -> list[str]:
    """Prefixes of every PREFIX.idx in `directory`, sorted by name."""
    return [str(p.with_suffix("")) for p in sorted(Path(directory).glob("*.idx"))]
