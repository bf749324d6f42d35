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

from megatiny.data.gpt_dataset import atomic_save_npy
from megatiny.fileio import atomic_write_text

BLEND_INDEX_VERSION = 1


def build_blending_indices(weights: list[float] | np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index int32 [size], dataset_sample_index int64 [size]) of the greedy blend.

    Exactly Megatron's `build_blending_indices` (same float arithmetic, same tie rule). Two datasets
    (the common case) take a vectorized path, verified step by step; more take a Python loop
    (about 1 us per sample and dataset; cached, built once on rank 0).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-empty, non-negative, with a positive sum: {weights}")
    w = w / w.sum()
    if len(w) == 1:
        return np.zeros(size, np.int32), np.arange(size, dtype=np.int64)
    if len(w) == 2:
        return _blend_two(w, size)
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


def _greedy_picks_first(w0: float, w1: float, s: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """Megatron's rule in its own float arithmetic: does step s (state c0 taken from dataset 0) pick 0?"""
    t = np.maximum(s, 1).astype(np.float64)
    c0f = c0.astype(np.float64)
    return (w0 * t - c0f) >= (w1 * t - (s - c0f))


def _blend_two(w: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-dataset greedy, vectorized: closed-form candidate, verified, repaired where it differs.

    Rationally, for s >= 1 the greedy picks dataset 0 exactly when taken0 <= w0 * s, which solves
    to taken0(s) = floor(w0 * (s - 1)) + 1 for s >= 2. Float rounding can break an exact tie the
    other way; every step is therefore checked against the greedy's own float comparison, and at
    each disagreement the exact rule is stepped in Python until the state rejoins the candidate.
    """
    w0, w1 = float(w[0]), float(w[1])
    s = np.arange(size + 1, dtype=np.int64)
    c0 = np.floor(w0 * (s - 1).astype(np.float64)).astype(np.int64) + 1
    c0[0] = 0
    if size >= 1:
        c0[1] = 1 if w0 * 1 - 0 >= w1 * 1 - 0 else 0
    np.clip(c0, 0, s, out=c0)
    candidate_pick0 = np.diff(c0) == 1
    wrong = np.flatnonzero(_greedy_picks_first(w0, w1, s[:-1], c0[:-1]) != candidate_pick0)
    valid_from = 0
    for step in wrong.tolist():
        if step < valid_from:
            continue  # inside a window already replayed exactly
        taken0 = int(c0[step])
        t = step
        while t < size:
            tt = max(t, 1)
            taken0 += 1 if (w0 * tt - taken0) >= (w1 * tt - (t - taken0)) else 0
            t += 1
            if taken0 == c0[t]:
                break
            c0[t] = taken0
        valid_from = t
    picks0 = np.diff(c0) == 1
    dataset_index = np.where(picks0, 0, 1).astype(np.int32)
    sample_index = np.where(picks0, c0[:-1], s[:-1] - c0[:-1])
    return dataset_index, sample_index


class BlendedDataset:
    """`size` samples drawn from `datasets` in the greedy weighted order.

    datasets: objects with len() and [] (each must hold at least its share of samples).
    weights: relative weights, normalized by `build_blending_indices` (the one place that does).
    """

    def __init__(self, datasets: list, weights: list[float], size: int, cache_dir: str | Path,
                 name: str = "train", description: dict[str, Any] | None = None):
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = datasets
        self.weights = [float(x) for x in weights]    # build_blending_indices normalizes them
        self.size = int(size)
        self.name = name
        self.cache_dir = Path(cache_dir)
        parts = [d.describe() if hasattr(d, "describe") else {"len": len(d)} for d in datasets]
        self.key = {"index_version": BLEND_INDEX_VERSION, "kind": "BlendedDataset", "weights": self.weights,
                    "size": self.size, "datasets": [p.get("index_hash", p) for p in parts]}
        self.hash = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self._parts = parts
        self.dataset_index, self.dataset_sample_index = self._load_or_build()

    def _load_or_build(self) -> tuple[np.ndarray, np.ndarray]:
        base = self.cache_dir / f"blend-{self.name}-{self.hash}"
        paths = [Path(f"{base}-dataset_index.npy"), Path(f"{base}-dataset_sample_index.npy")]
        done = Path(f"{base}-description.json")
        if done.is_file() and all(p.is_file() for p in paths):
            return tuple(np.load(p, mmap_mode="r", allow_pickle=False) for p in paths)
        arrays = build_blending_indices(self.weights, self.size)
        # Checked once, when built: the cache key holds each dataset's index hash, so a cache that
        # loads was built (and checked) against datasets of the same sizes.
        self._check_sizes(arrays[0])
        self.dataset_index, self.dataset_sample_index = arrays
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for p, a in zip(paths, arrays):
            atomic_save_npy(p, a)
        atomic_write_text(done, json.dumps(self.describe(), indent=2, sort_keys=True))
        return arrays

    def _check_sizes(self, dataset_index: np.ndarray) -> None:
        if self.size == 0:
            return
        counts = np.bincount(dataset_index, minlength=len(self.datasets))
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
