"""Differentiable collectives for tensor, sequence and context parallelism (Megatron's mappings).

Each function is an autograd pair: a forward collective and the backward one that makes the
gradients right.

    copy_to_group            identity         | all-reduce     (enter a tensor-parallel region)
    reduce_from_group        all-reduce       | identity       (leave it: sum the partial outputs)
    gather_along_dim         all-gather       | reduce-scatter (sequence parallel: before column-parallel)
    reduce_scatter_along_dim reduce-scatter   | all-gather     (sequence parallel: after row-parallel)
    split_along_dim          take own chunk   | all-gather     (enter a sharded region, no reduction)
    gather_last_dim          all-gather       | take own chunk (vocab-sharded logits -> full logits)

`group` is a torch.distributed process group; with one member every function is the identity.
Shards are equal chunks, ordered by rank in the group.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def group_size(group) -> int:
    return dist.get_world_size(group=group)


def all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenation along `dim` of every rank's x, in rank order (no autograd)."""
    size = group_size(group)
    if size == 1:
        return x
    moved = x.movedim(dim, 0).contiguous()
    out = torch.empty((size * moved.shape[0], *moved.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_single(out, moved, group=group)
    return out.movedim(0, dim)


def reduce_scatter(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's equal chunk along `dim` of the sum over ranks of x (no autograd)."""
    size = group_size(group)
    if size == 1:
        return x
    if x.shape[dim] % size:
        raise ValueError(f"cannot reduce-scatter dim {dim} of size {x.shape[dim]} over {size} ranks")
    moved = x.movedim(dim, 0).contiguous()
    out = torch.empty((moved.shape[0] // size, *moved.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_single(out, moved, group=group)
    return out.movedim(0, dim)


def _own_chunk(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    size = group_size(group)
    if size == 1:
        return x
    if x.shape[dim] % size:
        raise ValueError(f"cannot split dim {dim} of size {x.shape[dim]} into {size} equal shards")
    return x.chunk(size, dim=dim)[dist.get_rank(group=group)].contiguous()


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherAlongDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter(grad, ctx.dim, ctx.group), None, None


class _ReduceScatterAlongDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, ctx.dim, ctx.group), None, None


class _SplitAlongDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _own_chunk(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, ctx.dim, ctx.group), None, None


class _GatherLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather(x, x.dim() - 1, group)

    @staticmethod
    def backward(ctx, grad):
        return _own_chunk(grad, grad.dim() - 1, ctx.group), None


def copy_to_group(x: torch.Tensor, group) -> torch.Tensor:
    return _CopyToGroup.apply(x, group)


def reduce_from_group(x: torch.Tensor, group) -> torch.Tensor:
    return _ReduceFromGroup.apply(x, group)


def gather_along_dim(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _GatherAlongDim.apply(x, dim, group)


def reduce_scatter_along_dim(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _ReduceScatterAlongDim.apply(x, dim, group)


def split_along_dim(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _SplitAlongDim.apply(x, dim, group)


def gather_last_dim(x: torch.Tensor, group) -> torch.Tensor:
    return _GatherLastDim.apply(x, group)
