"""benchmarks/bench_tensor_parallel_memory.py runs end to end on a tiny preset: at TP2 the rank's
parameters, gradients and DeepSpeed optimizer states (fp32 master + AdamW moments) halve, and with
sequence parallelism the activations halve too; the computed full-depth and ZeRO figures follow
from the measured ones."""
import json
import sys

import pytest

from tests.helpers import REPO_ROOT, run_command, timeout_s


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory") / "memory.json"
    result = run_command([sys.executable, "benchmarks/bench_tensor_parallel_memory.py", "--preset",
                          "tiny-test", "--tensor-sizes", "2", "--seq", "64", "--full-layers", "6",
                          "--gpus", "8", "--json", str(out)],
                         timeout=timeout_s(launches=5, extra_s=60),
                         env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "TP2+SP" in result.stdout and "ratio" in result.stdout and "computed" in result.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_memory_benchmark_halves_parameters_states_and_sequence_parallel_activations(report):
    rows = {row["layout"]: row for row in report["rows"]}
    assert set(rows) == {"TP1", "TP2", "TP2+SP"}
    for layout in ("TP2", "TP2+SP"):
        for column in ("params", "grads", "master", "moments"):
            assert 0.5 <= rows[layout][f"{column}_ratio"] < 0.51, (layout, column)  # norms replicated
    one = rows["TP1"]
    assert one["grads_bytes"] == one["params_bytes"]  # fp32 model: one fp32 gradient per parameter
    assert one["master_bytes"] == pytest.approx(4 * one["param_count"], rel=0.01)  # ZeRO may pad
    assert one["moments_bytes"] == pytest.approx(8 * one["param_count"], rel=0.01)
    assert rows["TP2+SP"]["activations_ratio"] == pytest.approx(0.5, abs=0.02)
    assert rows["TP2"]["activations_ratio"] > rows["TP2+SP"]["activations_ratio"] + 0.05
    # Two blocks are measured; one block's parameters are what the two layers hold past the rest.
    assert 0 < 2 * one["block_params_bytes"] < one["params_bytes"]
    assert 0 < 2 * one["block_activations_bytes"] < one["activations_bytes"]


@pytest.mark.slow
def test_memory_benchmark_computes_full_depth_and_zero_shards(report):
    measured = {row["layout"]: row for row in report["rows"]}["TP2+SP"]
    computed = {row["layout"]: row for row in report["computed"]}["TP2+SP"]
    assert computed["data_parallel"] == 4  # 8 ranks / TP2
    params = (measured["params_bytes"] + 4 * measured["block_params_bytes"]) / 2  # 6 layers, bf16
    assert computed["params_bytes"] == pytest.approx(params)
    assert computed["activations_bytes"] == pytest.approx(
        (measured["activations_bytes"] + 4 * measured["block_activations_bytes"]) / 2)
    states = computed["master_bytes"] + computed["moments_bytes"]
    assert states == pytest.approx(6 * computed["params_bytes"], rel=0.01)  # 12 bytes vs 2 per param
    assert computed["zero0_bytes"] == pytest.approx(2 * params + states)
    assert computed["zero1_bytes"] == pytest.approx(2 * params + states / 4)
    assert computed["zero2_bytes"] == pytest.approx(params + params / 4 + states / 4)
    assert computed["zero3_bytes"] == pytest.approx((2 * params + states) / 4)
