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
from megatiny.data.gpt_dataset import (
    SEPARATE_LAST_EPOCH_THRESHOLD,
    build_document_index,
    build_sample_index,
    build_shuffle_index,
    num_epochs_needed,
)


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

    t0 = time.perf_counter()
    epochs = num_epochs_needed(tokens, L, num_samples)
    separate, before = False, 0
    if epochs > 1:
        before = ((epochs - 1) * tokens - 1) // L
        separate = num_samples - before < int(SEPARATE_LAST_EPOCH_THRESHOLD * ((tokens - 1) // L))
    g = np.random.default_rng(1)
    doc_index = build_document_index(np.arange(ndocs), epochs, g, separate)
    t1 = time.perf_counter()
    sample_index = build_sample_index(sizes, doc_index, L, total_tokens=epochs * tokens)
    t2 = time.perf_counter()
    total = len(sample_index) - 1
    shuffle_index = build_shuffle_index(before if separate else total, total, g, count=num_samples)
    t3 = time.perf_counter()
    build = t3 - t0
    print(f"epochs={epochs} separate_last_epoch={separate} document_index={len(doc_index):,} "
          f"sample_index={total:,}")
    print(f"document index {t1 - t0:.2f} s, sample index {t2 - t1:.2f} s, shuffle index {t3 - t2:.2f} s")
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
