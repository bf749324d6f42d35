"""The precision resolution table, with the hardware injected, and dtype/device parsing."""
import pytest
import torch

from megatiny.precision import (
    Hardware,
    detect_cpu,
    detect_hardware,
    parse_dtype,
    resolve_dtype,
    resolve_precision,
)

H100 = Hardware("cuda", True, "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
V100 = Hardware("cuda", False, "Tesla V100-SXM2-32GB", "Tesla V100-SXM2-32GB")
CPU_BF16 = detect_cpu(flags={"avx2", "avx512f", "avx512_bf16"}, onednn_cap="")
CPU_AVX2 = detect_cpu(flags={"avx2", "fma"}, onednn_cap="")


@pytest.mark.parametrize("hardware, expected, reason", [
    (H100, "bf16", "supports bf16"),
    (V100, "fp16", "dynamic loss scaling"),
    (CPU_BF16, "bf16", "native bf16 (CPU flag avx512_bf16)"),
    (CPU_AVX2, "fp32", "without native bf16"),
])
def test_auto_resolution_table(hardware, expected, reason):
    chosen = resolve_precision("auto", hardware)
    assert chosen.name == expected and reason in chosen.reason and not chosen.emulated
    assert chosen.describe().startswith(f"{expected} (auto: ")


def test_explicit_choices():
    assert resolve_precision("fp32", H100).name == "fp32"
    assert resolve_precision("fp16", V100).name == "fp16"
    assert resolve_precision("bf16", CPU_BF16).emulated is False
    emulated = resolve_precision("bf16", CPU_AVX2)  # works, with a warning that it is slow
    assert emulated.name == "bf16" and emulated.emulated and "emulated" in emulated.reason
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU_BF16)
    with pytest.raises(ValueError, match="Tesla V100.* does not support bf16"):
        resolve_precision("bf16", V100)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("tf32", H100)


def test_cpu_detection_reads_flags_and_honours_the_onednn_cap():
    assert detect_cpu(flags={"amx_bf16", "avx512f"}, onednn_cap="").native_bf16
    assert detect_cpu(flags={"fp", "asimd", "bf16"}, onednn_cap="").native_bf16  # Arm
    capped = detect_cpu(flags={"avx512_bf16"}, onednn_cap="avx2")
    assert not capped.native_bf16 and "ONEDNN_MAX_CPU_ISA=AVX2" in capped.detail
    assert detect_cpu(flags={"avx512_bf16"}, onednn_cap="AVX512_CORE_AMX").native_bf16


def test_this_machine_is_detected_from_proc_cpuinfo(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    hardware = detect_hardware("cpu")
    assert hardware.device_type == "cpu"
    assert hardware.native_bf16 == any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not detect_hardware("cpu").native_bf16
    assert resolve_dtype("auto", "cpu") == torch.float32


def test_dtype_names():
    assert parse_dtype("bf16") == parse_dtype("bfloat16") == parse_dtype(torch.bfloat16) == torch.bfloat16
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") == resolve_precision("auto", detect_hardware("cpu")).dtype
    with pytest.raises(ValueError, match="'int8' is not supported"):
        parse_dtype("int8")
