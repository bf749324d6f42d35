"""Loss spikes: the detector in-process, its config refusals, and one 2-rank run in which a
poisoned step is skipped on every rank (parameters unchanged) and recorded."""
from __future__ import annotations

import json

import pytest
import torch

from megatiny.checkpoint.metadata import read_metadata
from megatiny.training.config import RunConfig, SpikeConfig
from megatiny.training.spikes import SpikeDetector, z_score
from tests.helpers import run_command
from tests.training.test_supervise import BASE_ENV, RUN_S, _config, _ranks, _weights


def _detector(**kwargs) -> SpikeDetector:
    values = {"window": 8, "loss_z": 6.0, "grad_norm_z": 6.0, "min_history": 4, **kwargs}
    return SpikeDetector(**values)


def test_z_score():
    assert z_score(3.0, [1.0, 1.0]) is None and z_score(1.0, [1.0]) is None
    assert z_score(4.0, [1.0, 3.0]) == pytest.approx(2.0)


def test_a_loss_far_above_the_window_is_a_spike_only_after_min_history():
    detector = _detector()
    for step, loss in enumerate([2.0, 2.1, 1.9], start=1):
        assert not detector.judge_loss(100.0).spike          # too little history yet
        detector.record(step, loss, 1.0 + step / 10)
    detector.record(4, 2.0, 1.3)
    verdict = detector.judge_loss(100.0)
    assert verdict.spike and verdict.z > 6
    assert not detector.judge_loss(2.2).spike and not detector.judge_loss(float("nan")).spike
    assert not detector.judge_loss(0.1).spike                  # only spikes upward


def test_a_grad_norm_spike_is_flagged_and_kept_out_of_the_window():
    detector = _detector()
    for step in range(1, 6):
        detector.record(step, 2.0 + step / 100, 1.0 + step / 100)
    assert detector.record(6, 2.0, 50.0) > 6
    assert detector.flagged[0]["step"] == 6 and 50.0 not in detector.grad_norms and len(detector.losses) == 5


def test_the_state_round_trips_through_json():
    detector = _detector()
    for step in range(1, 7):
        detector.record(step, 2.0 + step / 7, 1.0 + step / 3)
    detector.skip(7, (48, 56), 90.0, 12.5)
    restored = _detector()
    restored.load_state_dict(json.loads(json.dumps(detector.state_dict())))
    assert restored.state_dict() == detector.state_dict()
    assert restored.judge_loss(2.5) == detector.judge_loss(2.5)


def test_config_refuses_rewind_and_bad_thresholds():
    with pytest.raises(ValueError, match="'rewind' is not implemented"):
        SpikeConfig(policy="rewind")
    with pytest.raises(ValueError, match="spike.policy must be one of"):
        SpikeConfig(policy="sometimes")
    with pytest.raises(ValueError, match="spike.loss_z"):
        SpikeConfig(policy="skip", loss_z=0)
    with pytest.raises(ValueError, match="spike.min_history"):
        SpikeConfig(window=8, min_history=9)
    assert RunConfig.from_dict({"spike": {"policy": "skip", "window": 64}}).spike.window == 64


@pytest.mark.slow
def test_a_poisoned_step_is_skipped_on_every_rank_and_recorded(tiny_data, tmp_path):
    poisoned = 5
    config = _config(tmp_path, tiny_data, schedule={"train_steps": 6, "warmup_steps": 2},
                     checkpoint={"save_interval": 1},
                     spike={"policy": "skip", "min_history": 3, "window": 16, "loss_z": 6.0})
    result = run_command(_ranks(config, "--poison-at-step", str(poisoned)), timeout=RUN_S, env=BASE_ENV)
    assert result.returncode == 0, result.stdout[-5000:]
    assert f"step {poisoned}: loss" in result.stdout and "update skipped on every rank" in result.stdout
    save_dir = tmp_path / "ckpt"
    before, at, after = (_weights(save_dir / f"step_{s:08d}") for s in (poisoned - 1, poisoned, poisoned + 1))
    for name, tensor in before.items():  # every rank's shard of every parameter: unchanged
        assert torch.equal(at[name], tensor), name
    assert any(not torch.equal(after[n], at[n]) for n in at)  # the next step updates again
    records = {r["step"]: r for r in map(json.loads, (save_dir / "metrics.jsonl").read_text().splitlines())
               if "loss" in r}
    assert records[poisoned]["spike_skipped"] is True and records[poisoned]["spike_samples"] == [32, 40]
    assert [s for s, r in records.items() if r["spike_skipped"]] == [poisoned]
    skipped = read_metadata(save_dir / "step_00000006")["train_state"].spike["skipped"]
    assert [(r["step"], r["samples"]) for r in skipped] == [(poisoned, [32, 40])]
