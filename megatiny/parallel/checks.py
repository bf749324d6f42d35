"""What a parallel layout needs of a run's sequence length and ZeRO stage, as pure checks (no
processes, no torch). What it needs of the model is `megatiny.model.parallel_checks`.

The run config's validation (`megatiny.training.config.RunConfig.validate`) calls these once,
before any process starts; the pipeline model builder calls the same function as a guard of its
entry point. Each raises ValueError naming the setting to change.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatiny.parallel.state import ParallelLayout


def check_sequence_split(layout: ParallelLayout, seq_length: int) -> None:
    """Raise ValueError unless every context (and sequence-parallel) rank holds an equal slice."""
    per_context_rank, remainder = divmod(seq_length, layout.context)
    if remainder:
        raise ValueError(f"batch.seq_length ({seq_length}) must be divisible by parallel.context "
                         f"({layout.context}): every context rank holds an equal slice")
    if layout.sequence_parallel and per_context_rank % layout.tensor:
        raise ValueError(f"with parallel.sequence_parallel, batch.seq_length / parallel.context "
                         f"({per_context_rank}) must be divisible by parallel.tensor ({layout.tensor})")


def check_pipeline_zero_stage(layout: ParallelLayout, zero_stage: int) -> None:
    """Raise ValueError for a pipeline under ZeRO-2/3 (DeepSpeed's pipeline engine asserts stage < 2)."""
    if layout.pipeline > 1 and zero_stage >= 2:
        raise ValueError(f"parallel.pipeline = {layout.pipeline} needs ZeRO stage 0 or 1 (DeepSpeed's "
                         f"pipeline engine does not support stage {zero_stage}); set "
                         "zero_optimization.stage <= 1 or parallel.pipeline: 1")
