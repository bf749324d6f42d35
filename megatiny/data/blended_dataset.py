"""Weighted blend of datasets with Megatron's deterministic greedy interleaving.

For output sample s the blend takes the next sample of the dataset i maximizing
`weight[i] * max(s, 1) - taken[i]` (ties to the lowest index), so every prefix of the stream tracks
the weights to within one sample. Dataset ids are stored as int32 (no 255-dataset limit). The two
index arrays are cached as `.npy` like the GPT dataset's.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from megatiny.data.gpt_dataset import _atomic_save_npy, _atomic_write_text

BLEND_INDEX_VERSION = 1


def build_blending_indices(weights: list[float] | np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index int32 [size], dataset_sample_index int64 [size]) of the greedy blend.

    Exactly Megatron's `build_blending_indices` (same float arithmetic, same tie rule). Two datasets
    take a vectorized path whose result is verified step by step against the greedy rule.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-empty, non-negative, with a positive sum: {weights}")
    w = w / w.sum()
    if len(w) == 1:
        return np.zeros(size, np.int32), np.arange(size, dtype=np.int64)
    if len(w) == 2:
        fast = _blend_two(w, size)
        if fast is not None:
            return fast
    return _blend_loop(w.tolist(), size)


def _blend_loop(w: list[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(w)
    counts = [0] * n
    dataset_index = np.empty(size, np.int32)
    sample_index = np.empty(size, np.int64)
    rng_n = range(1, n)
    for s in range(size):
        t = s if s > 0 else 1
        best, best_err = 0, w[0] * t - counts[0]
        for i in rng_n:
            err = w[i] * t - counts[i]
            if err > best_err:
                best, best_err = i, err
        dataset_index[s] = best
        sample_index[s] = counts[best]
        counts[best] += 1
    return dataset_index, sample_index


def _blend_two(w: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorized two-dataset greedy; None if the candidate disagrees with the rule anywhere.

    For s >= 1 the greedy picks dataset 0 exactly when taken[0] <= w0 * s (rationally), which gives
    the candidate count c0(s) = floor(w0 * (s - 1)) + 1 after the first pick. The candidate is then
    checked against the greedy's own float comparison at every step; any disagreement (a float tie)
    returns None and the caller runs the exact loop.
    """
    if size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    s = np.arange(size + 1, dtype=np.float64)
    first = 0 if w[0] >= w[1] else 1
    c0 = np.empty(size + 1, np.int64)
    c0[0] = 0
    if first == 0:
        c0[1:] = np.floor(w[0] * (s[1:] - 1)).astype(np.int64) + 1
    else:
        c0[1:] = np.ceil(w[0] * (s[1:] - 1) - 1e-12).astype(np.int64)
        c0[1] = 0
    picks0 = np.diff(c0)
    if ((picks0 != 0) & (picks0 != 1)).any():
        return None
    # Verify: the greedy's own choice given state (c0(s), s - c0(s)) must equal the candidate's pick.
    t = np.maximum(s[:-1], 1.0)
    c = c0[:-1].astype(np.float64)
    greedy_picks0 = (w[0] * t - c) >= (w[1] * t - (s[:-1] - c))
    if not np.array_equal(greedy_picks0, picks0 == 1):
        return None
    dataset_index = np.where(picks0 == 1, 0, 1).astype(np.int32)
    sample_index = np.where(picks0 == 1, c0[:-1], np.arange(size) - c0[:-1]).astype(np.int64)
    return dataset_index, sample_index


class BlendedDataset:
    """`size` samples drawn from `datasets` in the greedy weighted order.

    datasets: objects with len() and [] (each must hold at least its share of samples).
    """

    def __init__(self, datasets: list, weights: list[float], size: int, cache_dir: str | Path,
                 name: str = "train", description: dict[str, Any] | None = None):
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = datasets
        self.weights = [float(x) / float(sum(weights)) for x in weights]
        self.size = int(size)
        self.name = name
        self.cache_dir = Path(cache_dir)
        parts = [d.describe() if hasattr(d, "describe") else {"len": len(d)} for d in datasets]
        self.key = {"index_version": BLEND_INDEX_VERSION, "kind": "BlendedDataset", "weights": self.weights,
                    "size": self.size, "datasets": [p.get("index_hash", p) for p in parts]}
        self.hash = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self._parts = parts
        self.dataset_index, self.dataset_sample_index = self._load_or_build()
        self._check_sizes()

    def _load_or_build(self) -> tuple[np.ndarray, np.ndarray]:
        base = self.cache_dir / f"blend-{self.name}-{self.hash}"
        paths = [Path(f"{base}-dataset_index.npy"), Path(f"{base}-dataset_sample_index.npy")]
        done = Path(f"{base}-description.json")
        if done.is_file() and all(p.is_file() for p in paths):
            return tuple(np.load(p, mmap_mode="r", allow_pickle=False) for p in paths)
        arrays = build_blending_indices(self.weights, self.size)
        self.dataset_index, self.dataset_sample_index = arrays
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for p, a in zip(paths, arrays):
            _atomic_save_npy(p, a)
        _atomic_write_text(done, json.dumps(self.describe(), indent=2, sort_keys=True))
        return arrays

    def _check_sizes(self) -> None:
        if self.size == 0:
            return
        counts = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for i, (d, c) in enumerate(zip(self.datasets, counts)):
            if c > len(d):
                raise ValueError(f"blend needs {c} samples from dataset {i} but it only has {len(d)}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.size:
            raise IndexError(f"sample {i} out of range for the blended {self.name} dataset ({self.size})")
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]

    def describe(self) -> dict[str, Any]:
        return {"kind": "BlendedDataset", "name": self.name, "size": self.size, "weights": self.weights,
                "index_hash": self.hash, "datasets": self._parts}
