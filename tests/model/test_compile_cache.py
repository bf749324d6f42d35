"""Where compiled kernels are cached (megatiny.model.compile): one directory per CPU kind, since
Inductor's own cache reuses a graph compiled under another instruction-set cap and crashes."""
from pathlib import Path

from megatiny.model.compile import (
    CACHE_ENV,
    cache_dir_for_this_cpu,
    cpu_kind,
    default_cache_dir,
    prepare_compile,
)


def test_cpu_kind_changes_with_the_instruction_set_caps_and_only_with_them(monkeypatch):
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(key, raising=False)
    native = cpu_kind()
    assert native == cpu_kind() and native.startswith("cpu-")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # not an instruction-set cap
    assert cpu_kind() == native
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    capped = cpu_kind()
    assert capped != native
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_kind() not in (native, capped)


def test_default_cache_dir_is_per_user_and_per_cpu_kind(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    native = default_cache_dir()
    assert native == tmp_path / "megatiny" / "torchinductor" / cpu_kind()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert default_cache_dir() == cache_dir_for_this_cpu(tmp_path / "megatiny" / "torchinductor") != native


def test_prepare_compile_keeps_a_cache_dir_the_user_set(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert prepare_compile() == str(tmp_path / "mine")
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Path(prepare_compile()) == default_cache_dir()
