"""Causal grouped-query attention backends and the inference KV cache.

Three interchangeable backends compute softmax(q k^T / sqrt(d)) v with a causal mask, optionally
restricted to a sliding window (each query sees the last `window` positions, itself included, as
Mistral and Hugging Face's `sliding_window`):

- `flash_attn`: the flash-attn package (CUDA, fp16/bf16 only). Used only when installed.
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention`, GQA handled natively
  (`enable_gqa=True`, torch >= 2.5) so K/V are never repeated per query head.
- `math`: plain matmul + softmax, the reference the others are tested against. GQA by
  broadcasting query-head groups against their shared K/V head (no repeat either).

Layout everywhere in this file: q [B, T, H, D], k and v [B, S, G, D] (flash-attn's layout; H query
heads, G key/value groups, S >= T). The T queries are the LAST T of the S key positions, so with a
KV cache the causal mask is aligned bottom-right (query i sees keys 0 .. S - T + i).

Document masking (packed samples, `megatiny.data.document_mask`): given `document_ids` Long[B, T]
(T == S, no cache), query i also needs document_ids[i] == document_ids[j]. flash-attn then runs
its variable-length kernel over the documents (`cu_seqlens`, no dense mask); SDPA and math take
a block-diagonal causal bool mask [B, 1, T, T]. Without document_ids nothing changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional dependency; a broken CUDA build raises OSError/ImportError at import time
    from flash_attn import flash_attn_func as _flash_attn_func
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func
except (ImportError, OSError):
    _flash_attn_func = _flash_attn_varlen_func = None

FLASH_ATTN_AVAILABLE = _flash_attn_func is not None
SDPA_SUPPORTS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_installed(requested: str, flash_available: bool = FLASH_ATTN_AVAILABLE) -> None:
    """Raise if `requested` is "flash_attn" and the flash-attn package is not installed."""
    if requested == "flash_attn" and not flash_available:
        raise RuntimeError("attention_backend='flash_attn' but the flash-attn package is not "
                           "installed; install it (pip install flash-attn) or use 'auto' or 'sdpa'")


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype,
                    flash_available: bool = FLASH_ATTN_AVAILABLE) -> str:
    """The concrete backend ("flash_attn", "sdpa" or "math") for `requested` on this device/dtype.

    "auto" picks flash-attn when it is installed and the tensors are CUDA fp16/bf16, else SDPA.
    An explicit "flash_attn" that cannot run raises instead of silently falling back.
    """
    if requested in ("sdpa", "math"):
        return requested
    flash_ok = flash_available and device.type == "cuda" and dtype in _HALF_DTYPES
    if requested == "auto":
        return "flash_attn" if flash_ok else "sdpa"
    if requested == "flash_attn":
        check_installed(requested, flash_available)
        if not flash_ok:
            raise RuntimeError(f"attention_backend='flash_attn' needs CUDA fp16/bf16 tensors, got "
                               f"{device.type} {dtype}; use 'auto' or 'sdpa' here")
        return requested
    raise ValueError(f"unknown attention backend {requested!r}; use auto, flash_attn, sdpa or math")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str,
                     window: int | None = None, document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention. q [B, T, H, D], k/v [B, S, G, D] -> [B, T, H, D] in q's dtype.

    `window`: query at absolute position p sees keys p - window < j <= p (None: all j <= p).
    document_ids Long[B, T] (T == S): also keep each query inside its own document."""
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of kv groups ({k.shape[2]})")
    if window is not None and window >= k.shape[1]:
        window = None  # the window covers every key: plain causal attention, the fast path
    if document_ids is not None:
        return _document_attention(q, k, v, backend, document_ids, window)
    if backend == "flash_attn":
        # bottom-right aligned when S > T; flash's window counts the keys left of the diagonal
        window_size = (-1, -1) if window is None else (window - 1, 0)
        return _flash_attn_func(q, k, v, causal=True, window_size=window_size)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, len, D]
    if backend == "sdpa":
        out = _sdpa(qh, kh, vh, window)
    elif backend == "math":
        out = _math_attention(qh, kh, vh, window)
    else:
        raise ValueError(f"unknown concrete attention backend {backend!r}")
    return out.transpose(1, 2)


def _document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str,
                        document_ids: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """`causal_attention` kept inside documents (and within `window`). q [B, T, H, D], k/v [B, T, G, D]."""
    b, t = q.shape[:2]
    if k.shape[1] != t or tuple(document_ids.shape) != (b, t):
        raise ValueError(f"document_ids must be [batch, seq] = {(b, t)} with as many keys as queries "
                         f"(no KV cache), got {tuple(document_ids.shape)} and {k.shape[1]} keys")
    if backend == "flash_attn":
        return _flash_varlen(q, k, v, document_ids, window)
    mask = document_causal_mask(document_ids)  # [B, T, T]
    if window is not None:
        mask = mask & _bottom_right_causal_mask(t, t, q.device, window)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == "sdpa":
        if k.shape[2] != q.shape[2] and not SDPA_SUPPORTS_GQA:
            repeats = q.shape[2] // k.shape[2]
            kh, vh = kh.repeat_interleave(repeats, dim=1), vh.repeat_interleave(repeats, dim=1)
        extra = {"enable_gqa": True} if SDPA_SUPPORTS_GQA else {}
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[:, None], **extra)
    elif backend == "math":
        out = _math_attention(qh, kh, vh, allowed=mask[:, None, None])
    else:
        raise ValueError(f"unknown concrete attention backend {backend!r}")
    return out.transpose(1, 2)


def document_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, T, T] from document_ids Long[B, T]: True where query i may attend key j
    (j <= i and the same document): block-diagonal causal."""
    t = document_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=document_ids.device).tril()
    return (document_ids[:, :, None] == document_ids[:, None, :]) & causal


def varlen_boundaries(document_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """flash-attn's `cu_seqlens` (Int32[N + 1]: where each of the N documents of the flattened
    [B * T] batch starts, then B * T) and the longest document's length."""
    b, t = document_ids.shape
    starts = torch.ones(b, t, dtype=torch.bool, device=document_ids.device)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]  # each row starts a document too
    begin = starts.reshape(-1).nonzero().squeeze(1)
    end = torch.tensor([b * t], device=document_ids.device)
    cu_seqlens = torch.cat((begin, end)).to(torch.int32)
    return cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def _flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, document_ids: torch.Tensor,
                  window: int | None = None) -> torch.Tensor:
    """flash-attn's variable-length kernel over the documents of the batch (GPU only)."""
    b, t, h, d = q.shape
    cu_seqlens, longest = varlen_boundaries(document_ids)
    window_size = (-1, -1) if window is None else (window - 1, 0)
    out = _flash_attn_varlen_func(q.reshape(b * t, h, d), k.reshape(b * t, *k.shape[2:]),
                                  v.reshape(b * t, *v.shape[2:]), cu_seqlens, cu_seqlens,
                                  longest, longest, causal=True, window_size=window_size)
    return out.view(b, t, h, d)


def _bottom_right_causal_mask(t: int, s: int, device: torch.device,
                              window: int | None = None) -> torch.Tensor:
    """Bool [T, S], True where query i (absolute position S - T + i) may attend key j: j <= S - T + i,
    and with a window also j > S - T + i - window."""
    allowed = torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)
    if window is not None:
        allowed &= ~torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t - window)
    return allowed


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, G, S, D] -> [B, H, T, D]."""
    t, s = q.shape[2], k.shape[2]
    # SDPA's is_causal is aligned top-left, which is only right when T == S.
    plain = window is None and (t == s or t == 1)
    mask = None if plain else _bottom_right_causal_mask(t, s, q.device, window)
    if k.shape[1] != q.shape[1] and not SDPA_SUPPORTS_GQA:  # old torch: repeat K/V per query head
        repeats = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    extra = {"enable_gqa": True} if SDPA_SUPPORTS_GQA else {}
    # A branch, not `is_causal=(... t > 1)`: with dynamic shapes under torch.compile (evaluation's
    # varying lengths) that value is a symbolic bool, which SDPA refuses (a graph break per call);
    # a branch makes dynamo decide it while tracing, under a guard.
    causal = False
    if mask is None and t == s and t > 1:
        causal = True
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, **extra)


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    window: int | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Reference attention, softmax in fp32. q [B, H, T, D], k/v [B, G, S, D] -> [B, H, T, D].
    `allowed`: a bool mask broadcastable to [B, G, H/G, T, S] (default: bottom-right causal,
    within `window` when given)."""
    b, h, t, d = q.shape
    g, s = k.shape[1], k.shape[2]
    # Query head h uses kv group h // (H / G) (HF's repeat_kv order): view heads as [G, H / G].
    qg = q.reshape(b, g, h // g, t, d)
    scores = (qg @ k.unsqueeze(2).transpose(-1, -2)).float() * d ** -0.5  # [B, G, H/G, T, S]
    if allowed is None:
        allowed = _bottom_right_causal_mask(t, s, q.device, window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return (probs @ v.unsqueeze(2)).reshape(b, h, t, d)


class KVCache:
    """Keys and values of already-processed positions, per layer, for incremental decoding.

    Storage is preallocated: keys[layer] and values[layer] are [B, max_length, G, D], so the cache
    holds only the G key/value groups (not one copy per query head). `length` counts the positions
    stored; the model advances it once per forward call, after every layer has written.
    """

    def __init__(self, num_layers: int, batch_size: int, max_length: int, num_groups: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str):
        shape = (batch_size, max_length, num_groups, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_length = max_length
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [B, T, G, D] after the cached positions; return all of them [B, length + T, G, D]."""
        end = self.length + k.shape[1]
        if end > self.max_length:
            raise ValueError(f"KVCache is full: {end} positions needed, max_length is {self.max_length}")
        self.keys[layer][:, self.length:end] = k
        self.values[layer][:, self.length:end] = v
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def advance(self, num_positions: int) -> None:
        self.length += num_positions
