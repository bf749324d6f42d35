"""benchmarks/bench_tensor_parallel_memory.py runs end to end on a tiny preset, and with sequence
parallelism the activations per rank really halve at TP2."""
import json
import sys

import pytest

from tests.helpers import REPO_ROOT, run_command, timeout_s


@pytest.mark.slow
def test_memory_benchmark_prints_ratios_and_sequence_parallel_halves_activations(tmp_path):
    out = tmp_path / "memory.json"
    result = run_command([sys.executable, "benchmarks/bench_tensor_parallel_memory.py", "--preset",
                          "tiny-test", "--tensor-sizes", "2", "--seq", "64", "--json", str(out)],
                         timeout=timeout_s(extra_s=120),
                         env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "TP2+SP" in result.stdout and "ratio" in result.stdout
    rows = {row["layout"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"TP1", "TP2", "TP2+SP"}
    assert 0.5 <= rows["TP2"]["param_ratio"] < 0.51  # norm weights are replicated
    assert rows["TP2+SP"]["activation_ratio"] == pytest.approx(0.5, abs=0.02)
    assert rows["TP2"]["activation_ratio"] > rows["TP2+SP"]["activation_ratio"] + 0.05
