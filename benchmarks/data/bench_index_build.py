"""GPT dataset index build time: 50M samples of seq 2048 from a synthetic 100B-token length table.

    OMP_NUM_THREADS=1 python benchmarks/data/bench_index_build.py [--tokens 100e9] [--samples 50e6]

Baselines in the same run: allocating and writing as many bytes as the three output arrays hold,
plus one numpy shuffle of num_samples int32 (what any shuffle index costs); the printed ratio is
build time / (that first-touch + that shuffle): near 1-3 means the build is memory-bound, not Python.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from megatiny.data.blended_dataset import build_blending_indices
from megatiny.data.gpt_dataset import build_indices, num_epochs_needed


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=float, default=100e9)
    p.add_argument("--samples", type=float, default=50e6)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--mean-doc-length", type=int, default=2000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    ndocs = int(args.tokens // args.mean_doc_length)
    sizes = rng.integers(1, 2 * args.mean_doc_length, size=ndocs, dtype=np.int32)
    num_samples, L = int(args.samples), args.seq_length
    tokens = int(sizes.sum(dtype=np.int64))
    print(f"{ndocs:,} documents, {tokens / 1e9:.1f}B tokens, {num_samples:,} samples of {L}")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # The library's own build (GPTDataset.build_indices calls this), over all documents, seed 1.
    doc_index, sample_index, shuffle_index = build_indices(sizes, (0, ndocs), num_samples, L, seed=1,
                                                           timings=timings)
    build = time.perf_counter() - t0
    epochs = num_epochs_needed(tokens, L, num_samples)
    total = len(sample_index) - 1
    print(f"epochs={epochs} document_index={len(doc_index):,} sample_index={total:,}")
    print(f"document index {timings['document']:.2f} s, sample index {timings['sample']:.2f} s, "
          f"shuffle index {timings['shuffle']:.2f} s")
    out_bytes = doc_index.nbytes + sample_index.nbytes + shuffle_index.nbytes
    t4 = time.perf_counter()
    np.ones(out_bytes, dtype=np.uint8)
    touch = time.perf_counter() - t4
    t5 = time.perf_counter()
    np.random.default_rng(2).shuffle(np.arange(num_samples, dtype=np.int32))
    shuffle = time.perf_counter() - t5
    print(f"index build total {build:.2f} s (goal < 5 s)")
    print(f"baselines in this run: allocating+writing the {out_bytes / 1e9:.2f} GB of outputs {touch:.2f} s; "
          f"one shuffle of {num_samples:,} int32 {shuffle:.2f} s")
    print(f"ratio build / (output first-touch + one shuffle) = {build / (touch + shuffle):.2f}")
    del doc_index, sample_index, shuffle_index
    t6 = time.perf_counter()
    build_blending_indices([0.7, 0.3], num_samples)
    print(f"blend index, 2 datasets (0.7/0.3), {num_samples:,} samples: {time.perf_counter() - t6:.2f} s")
    n3 = num_samples // 50
    t7 = time.perf_counter()
    build_blending_indices([0.5, 0.3, 0.2], n3)
    print(f"blend index, 3 datasets, {n3:,} samples (Python loop): {time.perf_counter() - t7:.2f} s")


if __name__ == "__main__":
    main()
