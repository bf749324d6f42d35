"""GPT under a real DeepSpeed ZeRO-3 run (2 CPU ranks): built in zero.Init, precision auto,
activation checkpointing."""
import json
import math

import pytest

from tests.helpers import REPO_ROOT, launch_ranks, run_command, timeout_s


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3_gpt")
    result = run_command(
        [*launch_ranks(2), "tests/model/zero3_gpt_train.py", "--out-dir", str(out), "--steps", "12"],
        # the script imports megatiny from here
        timeout=timeout_s(steps=12, seconds_per_step=5), env={"PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stdout[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_zero3_build_partitions_and_initializes_inside_zero_init(zero3_run):
    for rank in zero3_run:
        assert rank["num_parameters"] == rank["expected_parameters"]
        # Really partitioned over the 2 ranks, nothing left gathered after construction.
        assert rank["shard_numel"] <= 0.55 * rank["expected_parameters"]
        assert rank["resident_numel"] == 0
        q_std, o_std = rank["init_stds"]
        std = rank["init_std"]
        assert abs(q_std - std) < 0.1 * std  # normal(0, init_std), not torch's default init
        assert abs(o_std - std / math.sqrt(2 * rank["num_layers"])) < 0.1 * std


@pytest.mark.slow
def test_zero3_training_with_activation_checkpointing_decreases_loss(zero3_run):
    for rank in zero3_run:
        losses = rank["losses"]
        assert all(math.isfinite(x) for x in losses)
        assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
        # Every parameter got gradients through the partitioned forward/backward (LM head included).
        assert rank["unchanged_parameters"] == []
