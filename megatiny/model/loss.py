"""Next-token cross entropy fused with the LM head, chunked over tokens.

A naive loss materializes logits [B*T, V] (plus their fp32 copy, softmax and gradient: several
times B*T*V floats; for TinyLlama at 8 x 2048 tokens one fp32 copy is 2 GiB). Here the LM head
matmul, log-softmax and the loss gradient are done one chunk of tokens at a time, so only
[chunk, V] logits exist at once. Because the loss is a plain sum over tokens, each chunk's gradient
with respect to the hidden states and the head weight is computed right away in forward (one
matmul for logits, two for gradients, as autograd would do) and backward only scales them by the
incoming gradient: no logits are kept and nothing is recomputed.
"""
from __future__ import annotations

import torch
import torch.distributed

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
        torch.distributed.all_reduce(count, group=count_group)
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
