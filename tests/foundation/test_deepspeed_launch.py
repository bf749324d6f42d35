"""The `deepspeed` launcher starts two CPU ranks that train a tiny module under ZeRO-3 (precision auto)."""
import json

import pytest

from tests.helpers import free_port, run_command, timeout_s, venv_bin


@pytest.mark.slow
def test_two_ranks_zero3_train_and_exit_zero(tmp_path):
    script = "tests/foundation/zero3_tiny_module.py"
    result = run_command(
        [venv_bin("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), script,
         "--out-dir", str(tmp_path), "--steps", "30"],
        timeout=timeout_s(steps=30, seconds_per_step=1),
    )
    assert result.returncode == 0, result.stdout[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for r in ranks:
        losses = r["losses"]
        assert len(losses) == 30
        # the target is learnable: the last 5 steps average well below the first 5
        assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
