"""Which floating-point precision to compute in, and the parsing of dtype and device names.

Everything in megatiny that picks a dtype (training, evaluation, generation, perplexity,
benchmarks) asks this module, so one machine gets one answer everywhere.

`precision: auto` resolves as follows:

| hardware                                   | precision | why                                    |
|--------------------------------------------|-----------|----------------------------------------|
| CUDA GPU with bf16 (Ampere and newer)      | bf16      | fast tensor cores, no loss scaling     |
| CUDA GPU without bf16 (V100, T4, ...)      | fp16      | with DeepSpeed's dynamic loss scaling  |
| CPU with native bf16 (AVX512-BF16 or AMX)  | bf16      | bf16 matmuls run in hardware           |
| any other CPU (AVX2 only, ...)             | fp32      | PyTorch emulates bf16 there: a matmul  |
|                                            |           | is ~40-60x slower than in fp32         |

A CPU counts as having native bf16 when it reports `avx512_bf16` or `amx_bf16` (x86) or `bf16`
(Arm) and oneDNN, which runs PyTorch's bf16 matmuls, is not capped below that instruction set
by `ONEDNN_MAX_CPU_ISA` (or its old name `DNNL_MAX_CPU_ISA`). Capping it, e.g.
`ONEDNN_MAX_CPU_ISA=AVX2`, makes this machine behave, and resolve, like an AVX2-only one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

# CPU flags (as /proc/cpuinfo spells them) that mean bf16 matmuls run in hardware.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# oneDNN ISA caps that still allow its bf16 kernels (ONEDNN_MAX_CPU_ISA values, upper case).
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                     "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


@dataclass(frozen=True)
class Hardware:
    """What the precision choice depends on. Tests build one by hand; `detect_hardware` reads it.

    `native_bf16`: the device computes bf16 matmuls in hardware (CUDA: `is_bf16_supported`;
    CPU: see the module docstring). `detail` says what the answer was based on, for the log.
    """

    device_type: str  # "cuda" or "cpu"
    native_bf16: bool
    name: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Precision:
    """The resolved precision: `name` in bf16 | fp16 | fp32, with the reason it was chosen.

    `emulated`: bf16 was asked for on a CPU without native bf16 (it works, slowly).
    """

    name: str
    reason: str
    emulated: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return PRECISION_DTYPES[self.name]

    def describe(self) -> str:
        """One line for the start-up log, e.g. `bf16 (auto: CPU with native bf16: avx512_bf16)`."""
        return f"{self.name} ({self.reason})"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags of the first processor (x86 `flags`, Arm `Features`); empty if unknown."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def _onednn_cap() -> str | None:
    """The oneDNN ISA cap from the environment, upper case, or None when unset."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def detect_cpu(flags: set[str] | None = None, onednn_cap: str | None = None) -> Hardware:
    """The CPU's `Hardware`; `flags` / `onednn_cap` default to this machine's."""
    flags = cpu_flags() if flags is None else flags
    onednn_cap = _onednn_cap() if onednn_cap is None else onednn_cap.upper()
    found = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
    if not found:
        return Hardware("cpu", False, "cpu", "no avx512_bf16/amx_bf16 CPU flag")
    if onednn_cap and onednn_cap not in _ONEDNN_BF16_ISAS:
        return Hardware("cpu", False, "cpu", f"CPU has {found[0]} but ONEDNN_MAX_CPU_ISA={onednn_cap} "
                                             "disables oneDNN's bf16 kernels")
    return Hardware("cpu", True, "cpu", f"CPU flag {found[0]}")


def detect_hardware(device: torch.device | str | None = None) -> Hardware:
    """The `Hardware` of `device` (default: the first CUDA GPU if any, else the CPU)."""
    device = resolve_device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return Hardware("cuda", bool(torch.cuda.is_bf16_supported()), name, name)
    return detect_cpu()


def resolve_precision(requested: str, hardware: Hardware) -> Precision:
    """The precision to train or evaluate in for `requested` (auto | bf16 | fp16 | fp32).

    Raises ValueError for a choice the hardware cannot run: fp16 on a CPU (its loss scaling is
    for GPUs without bf16), bf16 on a GPU without bf16.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    on_gpu = hardware.device_type == "cuda"
    if requested == "auto":
        if on_gpu:
            if hardware.native_bf16:
                return Precision("bf16", f"auto: {hardware.name} supports bf16")
            return Precision("fp16", f"auto: {hardware.name} has no bf16; fp16 with dynamic loss scaling")
        if hardware.native_bf16:
            return Precision("bf16", f"auto: CPU with native bf16 ({hardware.detail})")
        return Precision("fp32", f"auto: CPU without native bf16 ({hardware.detail}); bf16 would be "
                                 "emulated, many times slower")
    if requested == "fp16" and not on_gpu:
        raise ValueError("precision fp16 needs a CUDA GPU (its loss scaling is for GPUs without bf16); "
                         "on a CPU use auto, bf16 or fp32")
    if requested == "bf16" and on_gpu and not hardware.native_bf16:
        raise ValueError(f"precision bf16: {hardware.name} does not support bf16; use auto (fp16 with "
                         "loss scaling) or fp32")
    if requested == "bf16" and not on_gpu and not hardware.native_bf16:
        return Precision("bf16", f"requested; this CPU has no native bf16 ({hardware.detail}): bf16 is "
                                 "emulated and slow (fp32 trained the quickstart 6.7x faster on an "
                                 "AVX2-only CPU)",
                         emulated=True)
    return Precision(requested, "requested")


def warn_if_emulated(precision: Precision, log=logger.warning) -> None:
    """Say once, loudly, that explicit bf16 on this CPU is emulated."""
    if precision.emulated:
        log("[megatiny] WARNING: precision bf16 on a CPU without native bf16 is emulated and slow; "
            "set runtime.precision: auto (fp32 here) unless you are testing bf16 numerics")


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """`"bf16"`, `"float32"`, `torch.bfloat16`, ... -> torch dtype (floating types we support)."""
    if isinstance(value, torch.dtype):
        if value not in DTYPE_NAMES:
            raise ValueError(f"dtype {value} is not supported; use one of {sorted(DTYPES)}")
        return value
    name = str(value).removeprefix("torch.").lower()
    if name not in DTYPES:
        raise ValueError(f"dtype {value!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str | None = None) -> torch.dtype:
    """A torch dtype from a name; "auto" = the dtype `precision: auto` picks on `device`."""
    if isinstance(dtype, torch.dtype) or str(dtype).lower() != "auto":
        return parse_dtype(dtype)
    return resolve_precision("auto", detect_hardware(device)).dtype


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` or "auto" -> the first CUDA device if there is one, else CPU.

    A CUDA device asked for without CUDA (lm-eval's CLI passes "cuda:0" unless told otherwise)
    falls back to the CPU with a warning instead of failing.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("device %s requested but CUDA is not available; using the CPU", device)
        return torch.device("cpu")
    return device
