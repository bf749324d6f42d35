"""Next-token cross entropy fused with the LM head, chunked over tokens.

A naive loss materializes logits [B*T, V] (plus their fp32 copy, softmax and gradient: several
times B*T*V floats; for TinyLlama at 8 x 2048 tokens one fp32 copy is 2 GiB). Here the LM head
matmul, log-softmax and the loss gradient are done one chunk of tokens at a time, so only
[chunk, V] logits exist at once. Because the loss is a plain sum over tokens, each chunk's gradient
with respect to the hidden states and the head weight is computed right away in forward (one
matmul for logits, two for gradients, as autograd would do) and backward only scales them by the
incoming gradient: no logits are kept and nothing is recomputed.

Under tensor parallelism the head holds rows [r*V/T, (r+1)*V/T) of the vocabulary and
`vocab_parallel_linear_cross_entropy` computes the same loss from the vocabulary-sharded logits
(never forming [tokens, V], nor [tokens, V/T] for all tokens): per chunk, one all-reduce of the
logit maxima and one of [sum of exp, target logit] over the tensor-parallel group.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatiny.parallel.collectives import all_gather, reduce_scatter

IGNORE_INDEX = -100
# Target number of logit elements per chunk (fp32: 32 MiB); the chunk is this over the vocab size.
_LOGITS_PER_CHUNK = 1 << 23


def default_chunk_size(vocab_size: int) -> int:
    return max(1, _LOGITS_PER_CHUNK // vocab_size)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         loss_mask: torch.Tensor | None = None, chunk_size: int | None = None,
                         count_group=None) -> torch.Tensor:
    """Mean cross entropy of softmax(hidden @ weight^T) against labels, over unmasked tokens.

    hidden [N, hidden] (any float dtype), weight [V, hidden], labels Long[N] (already the next
    tokens; IGNORE_INDEX = -100 also masks a token), loss_mask [N] (1 = counts, 0 = ignored) or
    None. Returns the fp32 scalar sum(loss_i * mask_i) / max(sum(mask_i), 1). With `count_group`
    (a process group whose ranks hold slices of the same sequences: context parallelism) the
    denominator counts the tokens of every rank in it, so the ranks' results add up to the mean.
    """
    check_loss_inputs(hidden, labels, loss_mask)
    weights = token_weights(labels, loss_mask, count_group)
    safe_labels = labels.clamp(min=0)  # ignored positions gather index 0, weighted by 0
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    compute_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, safe_labels, weights, chunk, compute_grad)


def check_loss_inputs(hidden: torch.Tensor, labels: torch.Tensor,
                      loss_mask: torch.Tensor | None) -> None:
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and labels [N], got {tuple(hidden.shape)} and "
                         f"{tuple(labels.shape)}")
    if loss_mask is not None and loss_mask.shape != labels.shape:
        raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} != labels {tuple(labels.shape)}")


def token_weights(labels: torch.Tensor, loss_mask: torch.Tensor | None = None,
                  count_group=None) -> torch.Tensor:
    """fp32 [N]: each token's share of the mean (0 for ignored tokens), over the tokens of this
    rank, or of every rank in `count_group` when given."""
    keep = (labels != IGNORE_INDEX).float()
    if loss_mask is not None:
        keep = keep * loss_mask.float()
    count = keep.sum()
    if count_group is not None:
        dist.all_reduce(count, group=count_group)
    return keep / count.clamp(min=1.0)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(hidden_i @ W^T, label_i), gradients computed during forward, per chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, token_weights, chunk, compute_grad):
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if compute_grad else None
        # Summed over chunks in fp32; autograd's single matmul would also accumulate in fp32.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if compute_grad else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            target = labels[start:start + chunk, None]
            w = token_weights[start:start + chunk, None]
            logits = (h @ weight.t()).float()  # [n, V] fp32
            # CE = logsumexp(z) - z_target, with logsumexp = log(sum(exp(z - max))) + max. The
            # exponentials are taken once, in place, and become the softmax for the gradient: one
            # pass of exp over [n, V] where log_softmax + exp take two (1.8x slower on CPU).
            target_logit = logits.gather(1, target)
            row_max = logits.amax(dim=1, keepdim=True)
            shifted_exp = logits.sub_(row_max).exp_()
            row_sum = shifted_exp.sum(dim=1, keepdim=True)
            loss += ((row_sum.log() + row_max - target_logit) * w).sum()
            if not compute_grad:
                continue
            # d loss / d logits = w * (softmax - onehot), built in place in the same buffer. The
            # per-token weight w scales whole rows, so it is applied to the [n, h] operands instead.
            grad_logits = shifted_exp.div_(row_sum)
            grad_logits.scatter_add_(1, target, torch.full_like(w, -1.0))
            grad_hidden[start:start + chunk] = add_chunk_gradients(grad_logits, h, w, weight,
                                                                   grad_weight)
        if compute_grad:
            ctx.save_for_backward(grad_hidden, grad_weight)
            ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return scaled_saved_gradients(ctx, grad_loss) + (None,) * 4


def scaled_saved_gradients(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of a fused loss that saved (grad_hidden, fp32 grad_weight) and ctx.weight_dtype:
    both scaled by the incoming gradient of the scalar loss."""
    grad_hidden, grad_weight = ctx.saved_tensors
    return (grad_hidden * grad_loss.to(grad_hidden.dtype),
            (grad_weight * grad_loss).to(ctx.weight_dtype))


def add_chunk_gradients(grad_logits: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                        weight: torch.Tensor, grad_weight: torch.Tensor) -> torch.Tensor:
    """One chunk's gradients from its unweighted d loss / d logits (softmax - onehot, fp32 [n, V]):
    adds the head weight's to `grad_weight` (fp32 [V, h]) and returns the hidden states' [n, h].
    The per-token weights w [n, 1] scale whole rows, so they are applied to the [n, h] operands."""
    grad_logits = grad_logits.to(h.dtype)
    weighted_h = (h * w).to(h.dtype)
    if weight.dtype == torch.float32:
        grad_weight.addmm_(grad_logits.t(), weighted_h)
    else:
        grad_weight += (grad_logits.t() @ weighted_h).float()
    return (grad_logits @ weight) * w


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor,
                            loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The naive loss from full logits [N, V] (what `linear_cross_entropy` must equal)."""
    per_token = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none",
                                                  ignore_index=IGNORE_INDEX)
    keep = (labels != IGNORE_INDEX).float()
    if loss_mask is not None:
        keep = keep * loss_mask.float()
    return (per_token * keep).sum() / keep.sum().clamp(min=1.0)


SEQUENCE_DIM = 1  # hidden states are [B, S, h]


def vocab_parallel_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                                        labels: torch.Tensor, group, loss_mask: torch.Tensor | None = None,
                                        chunk_size: int | None = None, count_group=None,
                                        sequence_parallel: bool = False) -> torch.Tensor:
    """`linear_cross_entropy` with the head weight split over the vocabulary (tensor parallelism).

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
    chunk of tokens as `_LinearCrossEntropy` does. Two all-reduces per chunk: the logit max, then
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
