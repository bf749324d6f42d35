"""Elementwise kernels (RMSNorm, rotary embedding) with optional fused CUDA versions.

The fused versions come from packages that are NOT required: apex's fused RMSNorm and
flash-attn's rotary kernel. Each is used only when its package imports and the tensor is on CUDA;
otherwise the plain PyTorch reference below runs. The references define the numerics (they match
Hugging Face Llama: RMSNorm in fp32 then cast back, rotate-half RoPE).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from megatiny.model.config import RopeScaling

try:
    from apex.normalization.fused_layer_norm import fused_rms_norm_affine as _fused_rms_norm
except (ImportError, OSError):
    _fused_rms_norm = None

try:
    from flash_attn.layers.rotary import apply_rotary_emb as _fused_rotary
except (ImportError, OSError):
    _fused_rotary = None

FUSED_RMS_NORM_AVAILABLE = _fused_rms_norm is not None
FUSED_ROTARY_AVAILABLE = _fused_rotary is not None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim; x [..., hidden], weight [hidden]."""
    if FUSED_RMS_NORM_AVAILABLE and x.is_cuda:
        return _fused_rms_norm(x, weight, (x.shape[-1],), eps)
    return rms_norm_reference(x, weight, eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32, normalized value cast back to x's dtype before the weight (as HF)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None,
                             device: torch.device | None = None) -> torch.Tensor:
    """fp32 [head_dim / 2]: theta^(-2i/d) for i < d/2, then `scaling` applied (as Hugging Face)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    return inv_freq if scaling is None else scaled_inverse_frequencies(inv_freq, scaling)


def scaled_inverse_frequencies(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """fp32 inverse frequencies [D / 2] with RoPE scaling (see `RopeScaling` for the formulas).

    llama3 keeps high frequencies (wavelength below original / high_freq_factor), divides low ones
    (wavelength above original / low_freq_factor) by `factor`, and blends linearly in between;
    the operations are ordered as in transformers so the result matches it bit for bit."""
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    original = scaling.original_max_position_embeddings
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    long_waves_slowed = torch.where(wavelength > original / low, inv_freq / scaling.factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * long_waves_slowed / scaling.factor + smooth * long_waves_slowed
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(medium, blended, long_waves_slowed)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype, scaling: RopeScaling | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for positions Long[T]: cos [T, head_dim] and sign-folded sin [T, head_dim]
    (per-sample positions Long[B, T], e.g. restarting at each document: [B, T, head_dim]).

    With angles a = position x theta^(-2i/d) for i < d/2: cos = [cos a, cos a] and
    sin = [-sin a, sin a], so that rotate-half RoPE is x * cos + swap_halves(x) * sin (fewer
    kernels than HF's negate-inside-rotate_half, and bitwise the same result). Computed on the fly
    (no buffers): cheap, and nothing for ZeRO-3 or the meta device to handle. Frequencies are
    computed in fp32 exactly as Hugging Face does, with `scaling` (llama3 / linear) applied.
    """
    inv_freq = rope_inverse_frequencies(head_dim, theta, scaling, positions.device)
    angles = positions.float()[..., None] * inv_freq  # [..., T, D / 2]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE. x [B, T, heads, D], cos/sin [T, D] (or per sample [B, T, D]) from
    `rope_cos_sin` -> [B, T, heads, D].

    The first and second halves of each head's dims form the rotated pairs (HF Llama layout).
    """
    if cos.dim() == 3:  # per-sample positions: the reference formula, broadcast over heads
        half = x.shape[-1] // 2
        swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
        return x * cos[:, :, None, :] + swapped * sin[:, :, None, :]
    if FUSED_ROTARY_AVAILABLE and x.is_cuda:
        half = x.shape[-1] // 2  # flash-attn takes the [T, D / 2] cos and sin
        return _fused_rotary(x, cos[:, :half].contiguous(), sin[:, half:].contiguous(),
                             interleaved=False)
    return apply_rotary_reference(x, cos, sin)


def apply_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + swapped * sin[:, None, :]  # cos/sin broadcast over heads
