"""The model benchmark scripts run end to end on CPU with a tiny preset (they are not dead code)."""
import sys

import pytest

from tests.helpers import REPO_ROOT, run_command, timeout_s

ENV = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def test_bench_gpu_model_runs_on_cpu_for_every_backend():
    result = run_command([sys.executable, "benchmarks/bench_gpu_model.py", "--device", "cpu",
                          "--preset", "tiny-test", "--seq", "32", "--dtype", "fp32", "--steps", "1",
                          "--warmup", "1", "--activation-checkpointing", "1", "--peak-tflops", "1"],
                         timeout=timeout_s(extra_s=60), env=ENV)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "sdpa" in result.stdout and "math" in result.stdout and "MFU" in result.stdout


@pytest.mark.slow
def test_bench_model_step_prints_ratios_against_hf():
    result = run_command([sys.executable, "benchmarks/bench_model_step.py", "--preset", "tiny-test",
                          "--seq", "32", "--batch", "2", "--steps", "1", "--warmup", "0",
                          "--rounds", "1"], timeout=timeout_s(extra_s=120), env=ENV)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "throughput ratio ours/HF" in result.stdout and "peak RSS ratio ours/HF" in result.stdout


def test_bench_document_mask_prints_the_ratio():
    result = run_command([sys.executable, "benchmarks/bench_document_mask.py", "--shape", "quickstart",
                          "--layers", "1", "--steps", "1", "--warmup", "0", "--rounds", "1"],
                         timeout=timeout_s(extra_s=60), env=ENV)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "ratio masked/unmasked" in result.stdout
