"""Per-rank training memory, computed from the config (no model built): parameters, gradients and
optimizer states under a ZeRO stage, for `megatiny train --dry-run`.

Counted (bytes per parameter, as in docs/PARALLELISM.md and benchmarks/bench_tensor_parallel_memory.py):
parameters and gradients in the training precision (2 bytes bf16/fp16, 4 fp32); optimizer
states 8 bytes (Adam's two fp32 moments) plus 4 for fp32 master weights when training in bf16/fp16.
ZeRO partitions over the D = data x context ranks (the group that holds the same weights):
stage >= 1 divides the optimizer states by D, stage >= 2 the gradients, stage 3 the parameters.
A rank holds 1/T of every split matrix (q/k/v/o, gate/up/down, embedding, head) and all of the
norm weights; a pipeline stage about 1/P of the layers (DeepSpeed balances stages by parameters).
Activations, buffers and fragmentation are not included: they depend on the batch and the kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatiny.model.config import ModelConfig
    from megatiny.parallel.state import ParallelLayout

PARAM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
ADAM_MOMENT_BYTES = 8
MASTER_BYTES = 4


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds for training (see the module docstring for what is counted)."""

    parameters: int
    """this rank's parameter elements (before ZeRO-3 partitioning)"""
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes


def rank_parameters(config: ModelConfig, layout: ParallelLayout) -> int:
    """Parameter elements of one tensor rank of one pipeline stage (stages balanced: 1/P each)."""
    h, t = config.hidden_size, layout.tensor
    attention = 2 * h * config.num_attention_heads * config.head_dim \
        + 2 * h * config.num_query_groups * config.head_dim
    block = (attention + 3 * h * config.ffn_hidden_size) // t + 2 * h  # + 2 replicated norms
    embeddings = config.vocab_size * h // t * (1 if config.tie_word_embeddings else 2)
    total = config.num_layers * block + embeddings + h  # + final norm
    return math.ceil(total / layout.pipeline)


def rank_memory(config: ModelConfig, layout: ParallelLayout, zero_stage: int, precision: str) -> RankMemory:
    """The per-rank memory of training `config` on `layout` under ZeRO `zero_stage` in `precision`."""
    n = rank_parameters(config, layout)
    zero_ranks = layout.data * layout.context
    width = PARAM_BYTES[precision]
    optimizer_width = ADAM_MOMENT_BYTES + (MASTER_BYTES if precision != "fp32" else 0)
    return RankMemory(
        parameters=n,
        param_bytes=math.ceil(n * width / (zero_ranks if zero_stage >= 3 else 1)),
        grad_bytes=math.ceil(n * width / (zero_ranks if zero_stage >= 2 else 1)),
        optimizer_bytes=math.ceil(n * optimizer_width / (zero_ranks if zero_stage >= 1 else 1)))


def format_bytes(count: int) -> str:
    """e.g. "1.50 GiB", "12.0 MiB", "512 B"."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"
