"""Batch sampler for pretraining: deterministic, resumable from a single integer, data-parallel.

The global order is the dataset order (the datasets are already shuffled). Global batch g covers
samples [g*B, (g+1)*B) with B = micro_batch_size * data_parallel_size; rank r takes the r-th slice
of micro_batch_size indices. State is one integer, `consumed_samples`: a new sampler started at k
yields exactly what an uninterrupted one yields after k samples, with no fast-forward.
"""
from __future__ import annotations

from collections.abc import Iterator


class PretrainingSampler:
    """Yields this rank's micro-batch index lists, from `consumed_samples` to `total_samples`.

    An incomplete last global batch is dropped (every rank must step together).
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int):
        if total_samples <= 0:
            raise ValueError(f"total_samples must be positive, got {total_samples}")
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
        if data_parallel_size <= 0:
            raise ValueError(f"data_parallel_size must be positive, got {data_parallel_size}")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank {data_parallel_rank} not in [0, {data_parallel_size})")
        if not 0 <= consumed_samples <= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} not in [0, total_samples={total_samples}]")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size

    @property
    def global_micro_batch(self) -> int:
        return self.micro_batch_size * self.data_parallel_size

    def __len__(self) -> int:
        """Micro-batches this rank will still yield."""
        return (self.total_samples - self.consumed_samples) // self.global_micro_batch

    def __iter__(self) -> Iterator[list[int]]:
        b = self.global_micro_batch
        start = self.consumed_samples + self.data_parallel_rank * self.micro_batch_size
        for g in range(self.consumed_samples, self.total_samples - b + 1, b):
            lo = start + (g - self.consumed_samples)
            yield list(range(lo, lo + self.micro_batch_size))
