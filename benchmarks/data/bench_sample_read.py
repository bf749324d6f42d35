"""Random-access sample read throughput of GPTDataset (one core), vs raw memmap slicing.

    OMP_NUM_THREADS=1 python benchmarks/data/bench_sample_read.py [--tokens 200e6] [--seq-length 2048]

Writes a synthetic uint16 dataset (documents of random length), builds a GPTDataset over it with
each index layout (block, megatron), then reads samples in the dataset's (shuffled) order.
Baseline in the same run: slicing seq_length + 1 tokens at as many random start offsets straight
from a numpy memmap of the .bin and converting to int64, i.e. the cost of the bytes alone.
Ratio = dataset tokens/s / baseline tokens/s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from megatiny.data.gpt_dataset import GPTDataset
from megatiny.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=float, default=200e6)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--mean-doc-length", type=int, default=1000)
    args = p.parse_args(argv)
    L = args.seq_length
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "synthetic"
        remaining = int(args.tokens)
        with IndexedDatasetBuilder(prefix, np.uint16) as b:
            while remaining > 0:
                lengths = rng.integers(1, 2 * args.mean_doc_length, size=100_000).astype(np.int64)
                lengths = lengths[np.cumsum(lengths) <= remaining] if lengths.sum() > remaining else lengths
                if len(lengths) == 0:
                    lengths = np.array([remaining])
                tokens = rng.integers(0, 32000, size=int(lengths.sum()), dtype=np.uint16)
                b.add_items(tokens, lengths)
                remaining -= int(lengths.sum())
        indexed = IndexedDataset(prefix)
        num_samples = min(args.reads, (indexed.num_tokens - 1) // L)
        raw = np.memmap(indexed.bin_path, dtype=np.uint16, mode="r")
        offsets = rng.integers(0, indexed.num_tokens - L - 1, size=num_samples)
        start = time.perf_counter()
        for o in offsets.tolist():
            raw[o:o + L + 1].astype(np.int64)
        t_raw = time.perf_counter() - start
        tok = num_samples * (L + 1)
        print(f"{indexed.num_documents:,} documents, {indexed.num_tokens / 1e6:.0f}M tokens; "
              f"{num_samples:,} random samples of {L + 1} tokens")
        print(f"baseline raw memmap slice: {num_samples / t_raw:,.0f} samples/s, "
              f"{tok / t_raw / 1e6:.1f}M tokens/s")
        for index in ("block", "megatron"):
            ds = GPTDataset(indexed, (0, len(indexed)), num_samples, L, seed=0, cache_dir=Path(tmp) / "cache",
                            index=index)
            start = time.perf_counter()
            for i in range(num_samples):
                ds[i]
            t_ds = time.perf_counter() - start
            print(f"GPTDataset index={index}: {num_samples / t_ds:,.0f} samples/s, "
                  f"{tok / t_ds / 1e6:.1f}M tokens/s; ratio to raw = {t_raw / t_ds:.2f}")


if __name__ == "__main__":
    main()
