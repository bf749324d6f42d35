"""Megatron-style tensor parallelism (with optional sequence parallelism): layers and mappings.

Over a tensor-parallel group of T ranks:

- `ColumnParallelLinear` holds rows [r*out/T, (r+1)*out/T) of the full [out, in] weight (the
  model uses it for q/k/v, so each rank owns whole query heads and the kv groups they use, and
  gate/up), and the same entries [r*out/T, ...) of its bias when it has one (Qwen2's q/k/v).
- `RowParallelLinear` holds columns [r*in/T, ...) and sums the partial outputs of the ranks (o and
  down). Between the two no communication is needed. Its bias (Llama's attention_bias on o) is
  replicated and added once, after the sum (after the reduce-scatter under SP, to this rank's
  sequence shard, so its gradient is all-reduced over the group like a norm weight's).
- `VocabParallelEmbedding` holds rows [r*V/T, ...) of the vocabulary. (The vocabulary-parallel LM
  head and its loss are the model's: `megatiny.model.loss.vocab_parallel_linear_cross_entropy`.)

Activation layouts (x is the residual stream, [B, S, h]):
- plain TP: x is replicated; `enter_tensor_parallel` is identity forward / all-reduce backward, the
  row-parallel output is all-reduced.
- sequence parallel (SP): x, the norms and the residual adds are sharded along the sequence
  ([B, S/T, h]); `enter_tensor_parallel` all-gathers the sequence (reduce-scatter backward) and the
  row-parallel output is reduce-scattered back onto the sequence shards. Norm weights see only
  their rank's tokens, so their gradients are all-reduced over the group (the model's `RMSNorm`
  with a `sequence_parallel_group`).

Initialization: each layer is given the model's `init_method`, which fills the full weight with
the one-rank layer's random draws (same stream, same order); the layer keeps this rank's shard,
so a TP model equals the one-rank model built with the same seed. Sharded parameters carry
`tensor_model_parallel=True`, `partition_dim` and `partition_stride`: DeepSpeed's gradient
clipping adds their norms on every rank, replicated ones once. Which full (Hugging Face named)
weight splits along which dimension is the checkpoint code's table
(`megatiny.checkpoint.partition`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from megatiny.parallel.collectives import (
    all_gather,
    copy_to_group,
    gather_along_dim,
    reduce_from_group,
    reduce_scatter_along_dim,
)

SEQUENCE_DIM = 1  # activations are [B, S, h]

# Fills a full (unsharded) weight in place with the model's random draws and returns it.
InitMethod = Callable[[torch.Tensor], torch.Tensor]


def shard(full: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """Equal chunk `rank` of `size` along `dim` (a copy)."""
    if full.shape[dim] % size:
        raise ValueError(f"dimension {dim} of size {full.shape[dim]} does not split into {size} shards")
    return full.chunk(size, dim=dim)[rank].clone()


def sharded_parameter(shape: tuple[int, ...], init_method: InitMethod, dim: int, group) -> nn.Parameter:
    """This rank's equal chunk along `dim` of a full weight of `shape` filled by `init_method`
    (drawn whole on every rank, so the shards together equal the one-rank weight), marked as a
    tensor-parallel shard."""
    full = init_method(torch.empty(shape))
    param = nn.Parameter(shard(full, dim, dist.get_rank(group=group), dist.get_world_size(group=group)))
    mark_tensor_parallel(param, dim)
    return param


def mark_tensor_parallel(param: nn.Parameter, dim: int) -> None:
    """The attributes DeepSpeed (and Megatron tooling) read off a tensor-parallel shard."""
    param.tensor_model_parallel = True
    param.partition_dim = dim
    param.partition_stride = 1


class ColumnParallelLinear(nn.Module):
    """y[..., out/T] = x[..., in] @ W_shard^T (+ b_shard); the input must already be in the TP region.

    With sequence parallelism pass also `sequence_shard`, this rank's [B, S/T, in] part of x (x
    being its all-gather): then only the shard is kept for the backward pass, which all-gathers it
    again to form the weight gradient (Megatron's trade of one all-gather for S x in activations)."""

    def __init__(self, in_features: int, out_features: int, init_method: InitMethod, group,
                 bias: bool = False):
        super().__init__()
        self.group = group
        self.weight = sharded_parameter((out_features, in_features), init_method, 0, group)
        # [out/T]: the entries of this rank's output rows (zeros, as the one-rank layer's)
        self.bias = sharded_parameter((out_features,), nn.init.zeros_, 0, group) if bias else None

    def forward(self, x: torch.Tensor, sequence_shard: torch.Tensor | None = None) -> torch.Tensor:
        if sequence_shard is None:
            return F.linear(x, self.weight, self.bias)
        out = _LinearSavingSequenceShard.apply(x, sequence_shard, self.weight, self.group)
        return out if self.bias is None else out + self.bias


class _LinearSavingSequenceShard(torch.autograd.Function):
    """F.linear(full, weight) that saves the sequence shard instead of the gathered input."""

    @staticmethod
    def forward(ctx, full, shard, weight, group):
        ctx.save_for_backward(shard, weight)
        ctx.group = group
        return F.linear(full, weight)

    @staticmethod
    def backward(ctx, grad_out):
        shard, weight = ctx.saved_tensors
        full = all_gather(shard, SEQUENCE_DIM, ctx.group)
        grad_weight = grad_out.reshape(-1, grad_out.shape[-1]).t() @ full.reshape(-1, full.shape[-1])
        return grad_out @ weight, None, grad_weight, None


class RowParallelLinear(nn.Module):
    """y[B, S, out] = sum over ranks of x_shard[..., in/T] @ W_shard^T (+ b).

    The sum is an all-reduce, or with sequence parallelism a reduce-scatter onto the sequence
    shards ([B, S/T, out]). The bias [out] is whole on every rank and added once, after the sum."""

    def __init__(self, in_features: int, out_features: int, init_method: InitMethod, group,
                 sequence_parallel: bool, bias: bool = False):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = sharded_parameter((out_features, in_features), init_method, 1, group)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight)
        out = leave_tensor_parallel(partial, self.group, self.sequence_parallel)
        if self.bias is None:
            return out
        # SP: each rank adds it to its own tokens only, so the gradient is summed over the group.
        bias = copy_to_group(self.bias, self.group) if self.sequence_parallel else self.bias
        return out + bias


def enter_tensor_parallel(x: torch.Tensor, group, sequence_parallel: bool) -> torch.Tensor:
    """The full-sequence input of column-parallel layers: all-gather the sequence shards (SP) or
    a copy whose gradient is all-reduced over the group (plain TP)."""
    if sequence_parallel:
        return gather_along_dim(x, SEQUENCE_DIM, group)
    return copy_to_group(x, group)


def leave_tensor_parallel(partial: torch.Tensor, group, sequence_parallel: bool) -> torch.Tensor:
    """Sum per-rank partial outputs: reduce-scatter along the sequence (SP) or all-reduce."""
    if sequence_parallel:
        return reduce_scatter_along_dim(partial, SEQUENCE_DIM, group)
    return reduce_from_group(partial, group)


class VocabParallelEmbedding(nn.Module):
    """Token embedding with the vocabulary split over the group: rank r holds rows
    [r*V/T, (r+1)*V/T) and contributes zeros for other tokens; the ranks' outputs are summed."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_method: InitMethod, group,
                 sequence_parallel: bool):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = sharded_parameter((num_embeddings, embedding_dim), init_method, 0, group)
        self.vocab_start = dist.get_rank(group=group) * self.weight.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Long[B, S] -> [B, S, h] (or [B, S/T, h] with sequence parallelism)."""
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside[..., None], 0.0)
        return leave_tensor_parallel(out, self.group, self.sequence_parallel)
