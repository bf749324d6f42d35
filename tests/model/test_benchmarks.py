"""The model benchmark scripts run end to end on CPU with a tiny preset (they are not dead code)."""
import json
import sys

import pytest

from tests.helpers import REPO_ROOT, inductor_cache_dir, run_command, timeout_s

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


@pytest.mark.slow
def test_gpu_run_all_smoke_exercises_every_part_and_its_dry_run_fits_12_minutes(tmp_path):
    """benchmarks/gpu/run_all.sh: --smoke runs every part on CPU (tiny preset, compiled too) and
    each writes its JSON; --dry-run's GPU estimate (the sum of the time caps) is under 12 minutes.
    (Also the CPU run of benchmarks/bench_train_gpu.py, once a test of its own.)"""
    env = {**ENV, "TORCHINDUCTOR_CACHE_DIR": inductor_cache_dir()}
    dry = run_command(["bash", "benchmarks/gpu/run_all.sh", "--dry-run"], timeout=timeout_s(), env=env)
    assert dry.returncode == 0, dry.stdout[-3000:]
    estimate = float(dry.stdout.split("estimated GPU time: at most ")[1].split(" s")[0])
    assert 0 < estimate < 12 * 60, dry.stdout
    smoke = run_command(["bash", "benchmarks/gpu/run_all.sh", "--smoke", "--out", str(tmp_path)],
                        timeout=timeout_s(launches=4, extra_s=240), env=env)
    assert smoke.returncode == 0, smoke.stdout[-6000:]
    assert "tokens/s/device" in smoke.stdout and "MFU n/a" in smoke.stdout  # bench_train_gpu, no peak
    parts = json.loads((tmp_path / "summary.json").read_text())["parts"]
    assert [p["part"] for p in parts] == ["model_step", "deepspeed_train", "loss_difference", "profile"]
    assert all(p["status"] == "ok" for p in parts), parts
    steps = json.loads((tmp_path / "model_step.json").read_text())["results"]
    assert {(r["compile"], r["activation_checkpointing"], r["micro_batch"]) for r in steps} == {
        (c, a, 2) for c in (False, True) for a in (0, 1)}
    assert all(r["tokens_per_s"] > 0 and "mfu" in r for r in steps)
    trained = json.loads((tmp_path / "train_zero3_compiled.json").read_text())
    assert trained["compile"] and trained["tokens_per_s"] > 0 and len(trained["losses"]) == 2
    losses = json.loads((tmp_path / "loss_difference.json").read_text())
    assert len(losses["abs_diff"]) == 2 and losses["max_rel_diff"] < 0.02, losses
    assert len(json.loads((tmp_path / "profile_top10.json").read_text())["top"]) == 10
