"""Context parallelism for long sequences: DeepSpeed-Ulysses attention over `parallel.context` ranks.

Each context rank holds a contiguous slice of every sequence: tokens [c*S/C, (c+1)*S/C) of the
(already shifted) inputs and labels, see `split_for_context`. Everything but attention is
per-token, so it runs on the slice unchanged, with RoPE at the slice's global positions. Attention
needs every position: `deepspeed.sequence.layer.DistributedAttention` all-to-alls q/k/v from
[B, S/C, heads, D] to [B, S, heads/C, D] (scatter the head dim 2, gather the sequence dim 1), runs
the attention function the model hands `UlyssesAttention` on whole sequences for a subset of
heads, and all-to-alls the output back.
Rank c gets query heads [c*H/C, ...) and kv groups [c*G/C, ...), which are the groups those heads
use, so C must divide the (tensor-parallel-local) kv group count.

The loss: each rank sums its tokens' losses and divides by the token count of the whole sequence
(all ranks' tokens), so the ranks' values add up to the mean. `sum_loss_over_context` returns
that sum on every rank (for logging) and scales the backward by C, because DeepSpeed averages
gradients over data x context ranks (see `megatiny.parallel.state.DeepSpeedMPU`) while the model
needs the sum over the slices.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn


def split_for_context(tensor: torch.Tensor | None, context_rank: int, context_size: int
                      ) -> torch.Tensor | None:
    """This context rank's slice [B, S/C] of a [B, S] batch tensor (ids, shifted labels, mask).

    Shift labels BEFORE splitting: the label of a slice's last token is the first token of the
    next slice."""
    if tensor is None or context_size == 1:
        return tensor
    if tensor.dim() != 2 or tensor.shape[1] % context_size:
        raise ValueError(f"a [batch, seq] tensor with seq divisible by parallel.context "
                         f"({context_size}) is needed, got shape {tuple(tensor.shape)}")
    return tensor.chunk(context_size, dim=1)[context_rank].contiguous()


class UlyssesAttention(nn.Module):
    """Attention of sequence slices: q [B, S/C, H, D], k/v [B, S/C, G, D] -> [B, S/C, H, D].

    `local_attention(q, k, v, *args)` is the model's attention of whole sequences for a subset of
    heads ([B, S, H/C, D], [B, S, G/C, D] -> [B, S, H/C, D]); `args` (e.g. the kernel to use) are
    passed through."""

    def __init__(self, local_attention: Callable[..., torch.Tensor], group):
        super().__init__()
        from deepspeed.sequence.layer import DistributedAttention  # imports deepspeed only when used

        self.distributed = DistributedAttention(local_attention, group, scatter_idx=2, gather_idx=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args) -> torch.Tensor:
        return self.distributed(q, k, v, 0, None, *args)  # batch dim 0, no rotary inside


class _SumLossOverContext(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss, group):
        ctx.size = dist.get_world_size(group=group)
        total = loss.detach().clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.size, None


def sum_loss_over_context(loss: torch.Tensor, group) -> torch.Tensor:
    """The mean loss of the whole sequences from each rank's share (see the module docstring)."""
    if dist.get_world_size(group=group) == 1:
        return loss
    return _SumLossOverContext.apply(loss, group)
