"""Megatron-style tensor parallelism (with optional sequence parallelism) for the GPT model.

Over a tensor-parallel group of T ranks:

- `ColumnParallelLinear` holds rows [r*out/T, (r+1)*out/T) of the full [out, in] weight: q/k/v
  (so each rank owns whole query heads and the kv groups they use) and gate/up.
- `RowParallelLinear` holds columns [r*in/T, ...) and sums the partial outputs of the ranks: o and
  down. Between the two no communication is needed.
- `VocabParallelEmbedding` and the LM head hold rows [r*V/T, ...) of the vocabulary;
  `vocab_parallel_linear_cross_entropy` computes the loss from vocabulary-sharded logits, a chunk
  of tokens at a time, never forming [tokens, V] (nor even [tokens, V/T] for all tokens).

Activation layouts (x is the residual stream, [B, S, h]):
- plain TP: x is replicated; `enter_tensor_parallel` is identity forward / all-reduce backward, the
  row-parallel output is all-reduced.
- sequence parallel (SP): x, the norms and the residual adds are sharded along the sequence
  ([B, S/T, h]); `enter_tensor_parallel` all-gathers the sequence (reduce-scatter backward) and the
  row-parallel output is reduce-scattered back onto the sequence shards. Norm weights see only
  their rank's tokens, so their gradients are all-reduced over the group (`RMSNorm`'s
  `sequence_parallel_group`).

Initialization draws each full weight exactly as the one-rank model does (same random stream, same
order) and keeps this rank's shard, so a TP model equals the one-rank model built with the same
seed. Sharded parameters carry `tensor_model_parallel=True`, `partition_dim` and
`partition_stride`: DeepSpeed's gradient clipping adds their norms on every rank, replicated ones
once. `shard_state_dict` / `merge_state_dicts` convert between full (Hugging Face named) weights
and the per-rank ones.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from megatiny.model.loss import (
    IGNORE_INDEX,
    add_chunk_gradients,
    default_chunk_size,
    scaled_saved_gradients,
    token_weights,
)
from megatiny.parallel.checks import check_tensor_parallel as check_tensor_parallel
from megatiny.parallel.collectives import (
    all_gather,
    copy_to_group,
    gather_along_dim,
    reduce_from_group,
    reduce_scatter,
    reduce_scatter_along_dim,
)

SEQUENCE_DIM = 1  # activations are [B, S, h]

# Which dimension of each full weight is split over the tensor-parallel ranks (None = replicated),
# by the last two parts of its Hugging Face name.
_COLUMN = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight",
           "embed_tokens.weight", "lm_head.weight")
_ROW = ("o_proj.weight", "down_proj.weight")


def partition_dim(name: str) -> int | None:
    """The split dimension of full weight `name` (HF naming): 0, 1, or None (replicated)."""
    if name.endswith(_COLUMN):
        return 0
    if name.endswith(_ROW):
        return 1
    return None


def shard(full: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """Equal chunk `rank` of `size` along `dim` (a copy)."""
    if full.shape[dim] % size:
        raise ValueError(f"dimension {dim} of size {full.shape[dim]} does not split into {size} shards")
    return full.chunk(size, dim=dim)[rank].clone()


def shard_state_dict(full: dict[str, torch.Tensor], tensor_rank: int, tensor_size: int
                     ) -> dict[str, torch.Tensor]:
    """One tensor-parallel rank's weights from a full (Hugging Face named) state dict.

    q/k/v are split contiguously along their output rows, which are head-major, so rank r gets
    query heads [r*H/T, (r+1)*H/T) and kv groups [r*G/T, (r+1)*G/T): exactly the groups those
    query heads attend with (head i uses group i // (H/G)), as long as T divides G."""
    out = {}
    for name, tensor in full.items():
        dim = partition_dim(name)
        out[name] = tensor.clone() if dim is None else shard(tensor, dim, tensor_rank, tensor_size)
    return out


def merge_state_dicts(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The full state dict from every tensor-parallel rank's, in tensor-rank order.

    Replicated weights must agree across ranks (they are taken from rank 0 after a check)."""
    if not shards:
        raise ValueError("merge_state_dicts: no shards given")
    names = list(shards[0])
    for rank, part in enumerate(shards[1:], start=1):
        if list(part) != names:
            raise ValueError(f"merge_state_dicts: tensor rank {rank} has different parameter names "
                             f"than rank 0 (e.g. {sorted(set(part) ^ set(names))[:3]})")
    merged = {}
    for name in names:
        dim = partition_dim(name)
        if dim is None:
            for rank, part in enumerate(shards[1:], start=1):
                if not torch.equal(part[name], shards[0][name]):
                    raise ValueError(f"merge_state_dicts: replicated {name} differs between tensor "
                                     f"ranks 0 and {rank}")
            merged[name] = shards[0][name].clone()
        else:
            merged[name] = torch.cat([part[name] for part in shards], dim=dim)
    return merged


def _full_linear_weight(out_features: int, in_features: int, std: float) -> torch.Tensor:
    """A full [out, in] weight with the random draws of `megatiny.model.transformer.Linear`
    (nn.Linear's kaiming-uniform reset, then normal(0, std)), so shards match the one-rank model."""
    weight = torch.empty(out_features, in_features)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return nn.init.normal_(weight, mean=0.0, std=std)


def _full_embedding_weight(num_embeddings: int, dim: int, std: float) -> torch.Tensor:
    """As `megatiny.model.transformer.Embedding`: nn.Embedding's normal(0, 1) reset, then normal(0, std)."""
    weight = torch.empty(num_embeddings, dim)
    nn.init.normal_(weight)
    return nn.init.normal_(weight, mean=0.0, std=std)


def _sharded_parameter(full: torch.Tensor, dim: int, group) -> nn.Parameter:
    param = nn.Parameter(shard(full, dim, dist.get_rank(group=group), dist.get_world_size(group=group)))
    mark_tensor_parallel(param, dim)
    return param


def mark_tensor_parallel(param: nn.Parameter, dim: int) -> None:
    """The attributes DeepSpeed (and Megatron tooling) read off a tensor-parallel shard."""
    param.tensor_model_parallel = True
    param.partition_dim = dim
    param.partition_stride = 1


class ColumnParallelLinear(nn.Module):
    """y[..., out/T] = x[..., in] @ W_shard^T; the input must already be in the TP region.

    With sequence parallelism pass also `sequence_shard`, this rank's [B, S/T, in] part of x (x
    being its all-gather): then only the shard is kept for the backward pass, which all-gathers it
    again to form the weight gradient (Megatron's trade of one all-gather for S x in activations)."""

    def __init__(self, in_features: int, out_features: int, std: float, group):
        super().__init__()
        self.group = group
        self.weight = _sharded_parameter(_full_linear_weight(out_features, in_features, std), 0, group)

    def forward(self, x: torch.Tensor, sequence_shard: torch.Tensor | None = None) -> torch.Tensor:
        if sequence_shard is None:
            return F.linear(x, self.weight)
        return _LinearSavingSequenceShard.apply(x, sequence_shard, self.weight, self.group)


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
    """y[B, S, out] = sum over ranks of x_shard[..., in/T] @ W_shard^T.

    The sum is an all-reduce, or with sequence parallelism a reduce-scatter onto the sequence
    shards ([B, S/T, out])."""

    def __init__(self, in_features: int, out_features: int, std: float, group,
                 sequence_parallel: bool):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = _sharded_parameter(_full_linear_weight(out_features, in_features, std), 1, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight)
        return leave_tensor_parallel(partial, self.group, self.sequence_parallel)


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

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float, group,
                 sequence_parallel: bool):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = _sharded_parameter(_full_embedding_weight(num_embeddings, embedding_dim, std),
                                         0, group)
        self.vocab_start = dist.get_rank(group=group) * self.weight.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Long[B, S] -> [B, S, h] (or [B, S/T, h] with sequence parallelism)."""
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside[..., None], 0.0)
        return leave_tensor_parallel(out, self.group, self.sequence_parallel)


def full_lm_head_weight(vocab_size: int, hidden_size: int, std: float) -> torch.Tensor:
    """As the one-rank LM head: an empty [V, h] tensor filled with normal(0, std)."""
    return nn.init.normal_(torch.empty(vocab_size, hidden_size), mean=0.0, std=std)


def lm_head_shard(vocab_size: int, hidden_size: int, std: float, group) -> nn.Parameter:
    return _sharded_parameter(full_lm_head_weight(vocab_size, hidden_size, std), 0, group)


def vocab_parallel_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                                        labels: torch.Tensor, group, loss_mask: torch.Tensor | None = None,
                                        chunk_size: int | None = None, count_group=None,
                                        sequence_parallel: bool = False) -> torch.Tensor:
    """`megatiny.model.loss.linear_cross_entropy` with the head weight split over the vocabulary.

    weight [V/T, h] (rank r: vocab rows [r*V/T, (r+1)*V/T)), labels Long[B, S] (full vocabulary
    ids; already shifted), loss_mask [B, S] or None. hidden: [B, S, h], identical on every rank of
    `group` (plain TP: the hidden-state gradient returned is this rank's partial, from its
    vocabulary rows, and the caller's `enter_tensor_parallel` sums it over the group), or with
    `sequence_parallel` this rank's [B, S/T, h] shard (the gradient returned is the shard's, summed
    over the group). Returns the fp32 mean loss, equal on every rank. `count_group`: ranks whose
    tokens share one mean (context parallelism), or None.
    """
    flat_labels = labels.reshape(-1)
    flat_mask = loss_mask.reshape(-1) if loss_mask is not None else None
    shards = dist.get_world_size(group=group) if sequence_parallel else 1
    if hidden.dim() != 3 or tuple(labels.shape) != (hidden.shape[0], hidden.shape[1] * shards):
        raise ValueError(f"hidden [B, S{'/T' if sequence_parallel else ''}, h] and labels [B, S] are "
                         f"needed, got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if loss_mask is not None and loss_mask.shape != labels.shape:
        raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} != labels {tuple(labels.shape)}")
    weights = token_weights(flat_labels, flat_mask, count_group)
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    compute_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    vocab_start = dist.get_rank(group=group) * weight.shape[0]
    return _VocabParallelLinearCrossEntropy.apply(hidden, weight, flat_labels, weights, vocab_start,
                                                  chunk, compute_grad, group, sequence_parallel)


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    """The loss and its precomputed gradients (see `_loss_and_grads`). With `sequence_parallel`,
    `hidden` is this rank's [B, S/T, h] shard: it is all-gathered here and the hidden-state
    gradient is reduce-scattered back to the shard right away, so only the shard's gradient is
    kept until backward (not the full [B*S, h])."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, token_w, vocab_start, chunk, compute_grad, group,
                sequence_parallel):
        full = all_gather(hidden, SEQUENCE_DIM, group) if sequence_parallel else hidden
        flat = full.reshape(-1, full.shape[-1])
        loss, grad_hidden, grad_weight = _loss_and_grads(flat, weight, labels, token_w, vocab_start,
                                                         chunk, compute_grad, group)
        if compute_grad:
            grad_hidden = grad_hidden.view(full.shape)
            if sequence_parallel:
                grad_hidden = reduce_scatter(grad_hidden, SEQUENCE_DIM, group)
            ctx.save_for_backward(grad_hidden, grad_weight)
            ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return scaled_saved_gradients(ctx, grad_loss) + (None,) * 7


def _loss_and_grads(hidden, weight, labels, token_w, vocab_start, chunk, compute_grad, group):
    """sum_i w_i * CE(hidden_i @ W^T, label_i) with W split over vocabulary rows, and its
    gradients (this rank's partial one for hidden [N, h]; the head shard's in fp32), computed per
    chunk of tokens as in `megatiny.model.loss`. Two all-reduces per chunk: the logit max, then
    [sum of exp, target logit] together."""
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if compute_grad else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
        if compute_grad else None
    local_vocab = weight.shape[0]
    for start in range(0, hidden.shape[0], chunk):
        h = hidden[start:start + chunk]
        w = token_w[start:start + chunk, None]
        local_target = labels[start:start + chunk] - vocab_start
        owned = (local_target >= 0) & (local_target < local_vocab) & \
            (labels[start:start + chunk] != IGNORE_INDEX)
        index = local_target.clamp(0, local_vocab - 1)[:, None]
        logits = (h @ weight.t()).float()  # [n, V/T]
        max_logit = logits.max(dim=-1).values
        dist.all_reduce(max_logit, op=dist.ReduceOp.MAX, group=group)
        logits -= max_logit[:, None]
        target_logit = logits.gather(1, index).squeeze(1) * owned
        exp = logits.exp_()
        stats = torch.stack((exp.sum(dim=-1), target_logit))
        dist.all_reduce(stats, group=group)
        sum_exp, target_logit = stats[0], stats[1]
        loss += ((sum_exp.log() - target_logit) * w.squeeze(1)).sum()
        if not compute_grad:
            continue
        grad_logits = exp.div_(sum_exp[:, None])  # softmax, in place
        grad_logits.scatter_add_(1, index, -owned.float()[:, None])
        grad_hidden[start:start + chunk] = add_chunk_gradients(grad_logits, h, w, weight, grad_weight)
    return loss, grad_hidden, grad_weight
