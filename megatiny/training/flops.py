"""Throughput accounting: model FLOPs utilisation (MFU) against a table of device peaks.

FLOPs per token come from `ModelConfig.flops_per_token` (6N + attention; its docstring gives the
convention).
"""
from __future__ import annotations

# Dense bf16 peak TFLOP/s per device (no sparsity), matched by substring of the device name,
# most specific first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("A6000", 155.0),
    ("V100", 125.0),  # fp16 tensor cores; V100 has no bf16
    ("MI300X", 1307.0),
    ("MI250X", 383.0),
]


def peak_tflops_for(device_name: str | None, override: float | None = None) -> float | None:
    """Peak bf16 TFLOP/s of `device_name` (e.g. "NVIDIA H100 80GB HBM3"), `override` if given,
    None when unknown (CPU): MFU is then not reported."""
    if override is not None:
        return float(override)
    if not device_name:
        return None
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def throughput(tokens: int, seconds: float, flops_per_token: float, num_devices: int,
               peak_tflops: float | None) -> dict[str, float]:
    """Per-device figures for `tokens` processed (all devices together) in `seconds`.

    Returns tokens_per_s (all devices), tokens_per_s_per_device, tflops_per_device and, when a
    peak is known, mfu (fraction of the peak, 0..1).
    """
    seconds = max(seconds, 1e-12)
    per_device = tokens / seconds / num_devices
    out = {
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_device": per_device,
        "tflops_per_device": per_device * flops_per_token / 1e12,
    }
    if peak_tflops:
        out["mfu"] = out["tflops_per_device"] / peak_tflops
    return out
