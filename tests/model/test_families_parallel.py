"""Llama 3 RoPE scaling, an explicit head size, a sliding window and attention biases (Qwen2's
q/k/v, Llama's q/k/v/o) under tensor (+ sequence) and context parallelism equal the one-rank model
(one 2-rank launch of families_parallel_worker.py)."""
import json

import pytest

from tests.helpers import REPO_ROOT, launch_ranks, run_command, timeout_s

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("families_parallel")
    result = run_command([*launch_ranks(2), "tests/model/families_parallel_worker.py", "--out-dir", str(out)],
                         timeout=timeout_s(extra_s=120),
                         env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-6000:]
    return [json.loads((out / f"families-rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("case", [f"{layout}/{family}" for layout in ("tp2", "tp2-sp", "cp2")
                                  for family in ("llama3.2", "mistral", "qwen2.5", "llama-bias")])
def test_parallel_model_equals_one_rank_model(results, case):
    for rank, per_rank in enumerate(results):
        diffs = per_rank[case]
        assert diffs["init"] == 0.0, (rank, diffs)  # the same seed draws the same weights (biases too)
        for key in ("logits", "loss", "grads"):
            assert diffs[key] < TOLERANCE, (rank, key, diffs)
        if "same_generation" in diffs:
            assert diffs["same_generation"] is True, (rank, diffs)
