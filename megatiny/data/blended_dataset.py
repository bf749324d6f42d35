"""Weighted blend of datasets: Megatron's greedy arrays (`index: megatron`) or a formula (`index: block`).

megatron: for output sample s the blend takes the next sample of the dataset i maximizing
`weight[i] * max(s, 1) - taken[i]` (ties to the lowest index), so every prefix of the stream tracks
the weights to within one sample. Dataset ids are stored as int32 (no 255-dataset limit). The two
index arrays (O(samples)) are cached as `.npy` like the GPT dataset's.

block: `StrideBlend`, weighted round robin computed per sample in O(datasets^2) integer operations,
no array: dataset i's j-th sample is due at time (j + 1/2) / weight[i], and the output stream is
all datasets' samples in order of due time (ties to the lowest index). After s outputs dataset i
has given within 1/2 + K/2 samples of weight[i] x s (K datasets), so every window of the stream
is within 1 + K samples of its share. Weights are quantized to multiples of 2^-32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from megatiny.data.cache import IndexCache

BLEND_INDEX_VERSION = 1
WEIGHT_UNITS = 1 << 32


class StrideBlend:
    """Output sample s -> (dataset, sample of that dataset), computed on the fly (see module doc)."""

    def __init__(self, weights: list[float]):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or (w <= 0).any():
            raise ValueError(f"weights must be non-empty and positive: {weights}")
        exact = w / w.sum() * WEIGHT_UNITS
        units = np.maximum(np.floor(exact).astype(np.int64), 1)
        for i in np.argsort(-(exact - np.floor(exact)), kind="stable")[:WEIGHT_UNITS - int(units.sum())]:
            units[i] += 1           # largest remainders: the units sum to exactly WEIGHT_UNITS
        self.units = [int(u) for u in units]

    def taken_before(self, s: int) -> list[int]:
        """Samples each dataset gave to outputs [0, s)."""
        # F(t) = sum of _taken_at(t) lies in (t - K/2, t + K/2]: from t = s - ceil(K/2), at most K steps.
        taken = self._taken_at(max(0, s - (len(self.units) + 1) // 2))
        for _ in range(s - sum(taken)):
            taken[self._next(taken)] += 1
        return taken

    def __getitem__(self, s: int) -> tuple[int, int]:
        taken = self.taken_before(s)
        i = self._next(taken)
        return i, taken[i]

    def _taken_at(self, t: int) -> list[int]:
        """Samples of each dataset due at or before time t (time counts outputs)."""
        return [(2 * a * t + WEIGHT_UNITS) // (2 * WEIGHT_UNITS) for a in self.units]

    def _next(self, taken: list[int]) -> int:
        """The dataset whose next sample is due first: min (2 taken + 1) / units, ties to the lowest."""
        best = 0
        for i in range(1, len(self.units)):
            if (2 * taken[i] + 1) * self.units[best] < (2 * taken[best] + 1) * self.units[i]:
                best = i
        return best


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
    """`size` samples drawn from `datasets` in weighted order: StrideBlend (index "block") or
    Megatron's greedy arrays (index "megatron"), see the module docstring.

    datasets: objects with len() and [] (each must hold at least its share of samples).
    weights: relative weights, normalized by `build_blending_indices` / `StrideBlend`.
    """

    def __init__(self, datasets: list, weights: list[float], size: int, cache_dir: str | Path,
                 name: str = "train", description: dict[str, Any] | None = None, index: str = "block"):
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
        self.index = index
        self._parts = parts
        if index == "block":
            self.key["index"] = "block"
            self.stride = StrideBlend(self.weights)
            self._check_sizes(self.stride.taken_before(self.size))
        self.cache = IndexCache(self.cache_dir, f"blend-{self.name}", self.key)
        self.hash = self.cache.hash
        if index != "block":
            arrays = self.cache.load_or_build(("dataset", "dataset_sample"), self._build,
                                              lambda arrays: self.describe())
            self.dataset_index, self.dataset_sample_index = arrays["dataset"], arrays["dataset_sample"]

    def _build(self) -> dict[str, np.ndarray]:
        dataset_index, sample_index = build_blending_indices(self.weights, self.size)
        # Checked once, when built: the cache key holds each dataset's index hash, so a cache that
        # loads was built (and checked) against datasets of the same sizes.
        self._check_sizes(np.bincount(dataset_index, minlength=len(self.datasets)).tolist()
                          if self.size else [0] * len(self.datasets))
        return {"dataset": dataset_index, "dataset_sample": sample_index}

    def _check_sizes(self, counts: list[int]) -> None:
        for i, (d, c) in enumerate(zip(self.datasets, counts)):
            if c > len(d):
                raise ValueError(f"blend needs {c} samples from dataset {i} but it only has {len(d)}")

    def __len__(self) -> int:
        return self.size

    def source(self, i: int) -> tuple[int, int]:
        """(dataset, sample of that dataset) of output sample i."""
        if not 0 <= i < self.size:
            raise IndexError(f"sample {i} out of range for the blended {self.name} dataset ({self.size})")
        if self.index == "block":
            return self.stride[i]
        return int(self.dataset_index[i]), int(self.dataset_sample_index[i])

    def __getitem__(self, i: int) -> np.ndarray:
        dataset, sample = self.source(i)
        return self.datasets[dataset][sample]

    def describe(self) -> dict[str, Any]:
        d = {"kind": "BlendedDataset", "name": self.name, "size": self.size, "weights": self.weights,
             "index_hash": self.hash, "datasets": self._parts}
        return d | ({"index": "block"} if self.index == "block" else {})
