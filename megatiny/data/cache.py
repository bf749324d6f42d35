"""One on-disk cache for dataset index arrays (GPTDataset and BlendedDataset use it).

    cache = IndexCache(cache_dir, f"{name}-{split}", key)        # key: everything the arrays depend on
    arrays = cache.load_or_build(("document", "sample"), build, describe)

Entries are named `{base}-{hash}-{array}_index.npy` plus `{base}-{hash}-description.json`, where the
hash is of the JSON key, so a changed input never reuses a stale entry. Each file is written under a
temporary name and renamed (megatiny.fileio); the description is written last, so its presence
marks a complete entry. Library code has no torch.distributed: the caller builds on one rank
first, then the other ranks load (megatiny.training.loop does).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from megatiny.fileio import atomic_output, atomic_write_text


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


class IndexCache:
    """The cache entry of one index: named arrays + a description, keyed by `key`."""

    def __init__(self, cache_dir: str | os.PathLike, base: str, key: dict[str, Any]):
        self.cache_dir = Path(cache_dir)
        self.hash = key_hash(key)
        self.base = f"{base}-{self.hash}"

    def array_path(self, name: str) -> Path:
        return self.cache_dir / f"{self.base}-{name}_index.npy"

    @property
    def description_path(self) -> Path:
        return self.cache_dir / f"{self.base}-description.json"

    def load(self, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        """The arrays, memory-mapped, when the entry is complete; else None."""
        if not self.description_path.is_file() or not all(self.array_path(n).is_file() for n in names):
            return None
        return {n: np.load(self.array_path(n), mmap_mode="r", allow_pickle=False) for n in names}

    def save(self, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the dataset index cache {self.cache_dir} ({e}); set "
                          f"DataConfig.cache_dir to a directory all ranks of a node can write") from None
        for name, array in arrays.items():
            atomic_save_npy(self.array_path(name), array)
        atomic_write_text(self.description_path, json.dumps(description, indent=2, sort_keys=True))

    def load_or_build(self, names: tuple[str, ...], build: Callable[[], dict[str, np.ndarray]],
                      describe: Callable[[dict[str, np.ndarray]], dict[str, Any]]) -> dict[str, np.ndarray]:
        """Load the entry, or `build()` the arrays, save them with `describe(arrays)`, return them."""
        loaded = self.load(names)
        if loaded is not None:
            return loaded
        arrays = build()
        self.save(arrays, describe(arrays))
        return arrays
