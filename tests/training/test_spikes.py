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


def test_config_refuses_a_rewind_without_checkpoints_and_bad_thresholds():
    no_saves = RunConfig.from_dict({"spike": {"policy": "rewind"}})
    with pytest.raises(ValueError, match="spike.policy: rewind .* checkpoint.save_interval"):
        no_saves.plan(no_saves.parallel.layout(1), {"zero_optimization": {"stage": 1}})
    with pytest.raises(ValueError, match="spike.rewind_steps"):
        SpikeConfig(policy="rewind", rewind_steps=0)
    with pytest.raises(ValueError, match="spike.policy must be one of"):
        SpikeConfig(policy="sometimes")
    with pytest.raises(ValueError, match="spike.loss_z"):
        SpikeConfig(policy="skip", loss_z=0)
    with pytest.raises(ValueError, match="spike.min_history"):
        SpikeConfig(window=8, min_history=9)
    assert RunConfig.from_dict({"spike": {"policy": "skip", "window": 64}}).spike.window == 64


POISONED = 5
STAGES = (1, 2, 3)


def _optimizer_files(tag_dir) -> dict[str, object]:
    """Every rank's optimizer-state file of a checkpoint (fp32 master weights, Adam's moments and
    step count, DeepSpeed's counters), loaded."""
    files = sorted(tag_dir.glob("*optim_states.pt"))
    assert files, f"no optimizer states in {tag_dir}"
    return {f.name: torch.load(f, map_location="cpu", weights_only=False) for f in files}


def _differences(a, b, where: str = "") -> list[str]:
    """Where two loaded checkpoint objects differ (tensors bit for bit, numbers exactly, other
    objects by their attributes), except the learning rates (the schedule's, set every step)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for k in a if k != "lr" for d in _differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if hasattr(a, "__dict__") and type(a) is type(b):  # e.g. DeepSpeed's loss scaler
        return _differences(vars(a), vars(b), where)
    return [] if a == b else [where]


def _spike_config(root, tiny_data, stage: int = 3, resume: str = "auto", **spike):
    return _config(root, tiny_data, schedule={"train_steps": 6, "warmup_steps": 2},
                   checkpoint={"save_interval": 1, "resume": resume},
                   distributed={"deepspeed_config": f"ds_configs/zero{stage}.json", "timeout_s": 120},
                   spike={"policy": "skip", "min_history": 3, "window": 16, "loss_z": 6.0, **spike})


@pytest.fixture(scope="module")
def spike_runs(tiny_data, tmp_path_factory) -> dict[str, dict]:
    """One 2-rank launch training, one after the other, 6-step runs with every rank's losses of
    step 5 poisoned (x1000), saving every step: `spike.policy: skip` under ZeRO-1, -2 and -3;
    `rewind` (ZeRO-3) skipping 1 and 2 batches; and a run resumed from the 2-batch rewind's step-4
    checkpoint (written after the rewind), which must go on skipping step 5."""
    root = tmp_path_factory.mktemp("spikes")
    configs = {f"zero{stage}": _spike_config(root / f"zero{stage}", tiny_data, stage) for stage in STAGES}
    for steps in (1, 2):
        configs[f"rewind{steps}"] = _spike_config(root / f"rewind{steps}", tiny_data, policy="rewind",
                                                  rewind_steps=steps)
    resume_from = root / "rewind2" / "ckpt" / "step_00000004"
    configs["resumed"] = _spike_config(root / "resumed", tiny_data, resume=str(resume_from), policy="rewind",
                                       rewind_steps=2)
    args = [a for config in configs.values() for a in ("--config", str(config))]
    job = _ranks(configs["zero1"], *args[2:], "--poison-at-step", str(POISONED))
    result = run_command(job, timeout=len(configs) * RUN_S, env=BASE_ENV)
    assert result.returncode == 0, result.stdout[-5000:]
    return {name: {"save_dir": root / name / "ckpt", "stdout": result.stdout} for name in configs}


def _records(save_dir) -> dict[int, dict]:
    """metrics.jsonl's training records by step (a step replayed after a rewind: its last one)."""
    return {r["step"]: r for r in map(json.loads, (save_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_poisoned_step_is_skipped_on_every_rank_and_recorded(spike_runs, stage):
    save_dir = spike_runs[f"zero{stage}"]["save_dir"]
    assert f"step {POISONED}: loss" in spike_runs[f"zero{stage}"]["stdout"]
    before, at, after = (save_dir / f"step_{s:08d}" for s in (POISONED - 1, POISONED, POISONED + 1))
    weights_before, weights_at = _weights(before), _weights(at)
    for name, tensor in weights_before.items():  # every rank's shard of every parameter: unchanged
        assert torch.equal(weights_at[name], tensor), name
    assert any(not torch.equal(_weights(after)[n], weights_at[n]) for n in weights_at)  # updates again
    # every rank's fp32 master weights and Adam state (moments, step count): unchanged too
    optim_before, optim_at = _optimizer_files(before), _optimizer_files(at)
    assert len(optim_before) == 2 and optim_before.keys() == optim_at.keys()
    assert _differences(optim_before, optim_at) == []
    assert _differences(optim_at, _optimizer_files(after)) != []
    records = _records(save_dir)
    assert records[POISONED]["spike_skipped"] is True and records[POISONED]["spike_samples"] == [32, 40]
    assert [s for s, r in records.items() if r["spike_skipped"]] == [POISONED]
    skipped = read_metadata(save_dir / "step_00000006")["train_state"].spike["skipped"]
    assert [(r["step"], r["samples"]) for r in skipped] == [(POISONED, [32, 40])]


def _assert_same_end(save_dir, reference_dir) -> None:
    """Step 6: the same loss, every weight and every rank's optimizer state bit for bit."""
    assert _records(save_dir)[6]["loss"] == _records(reference_dir)[6]["loss"]
    final, reference = save_dir / "step_00000006", reference_dir / "step_00000006"
    weights, reference_weights = _weights(final), _weights(reference)
    for name, tensor in reference_weights.items():
        assert torch.equal(weights[name], tensor), name
    assert _differences(_optimizer_files(final), _optimizer_files(reference)) == []


@pytest.mark.slow
def test_a_rewind_replays_without_the_spiking_batch_and_ends_like_a_skip(spike_runs):
    """Rewinding to step 4 and passing over step 5's batch unread ends exactly where dropping step
    5's update does (skip): same loss, weights and Adam state."""
    save_dir = spike_runs["rewind1"]["save_dir"]
    rewinding = f"step {POISONED}: loss spike, rewinding to {save_dir / 'step_00000004'}"
    assert rewinding in spike_runs["rewind1"]["stdout"]
    _assert_same_end(save_dir, spike_runs["zero3"]["save_dir"])
    assert _records(save_dir)[POISONED]["spike_skipped"] is True
    assert _records(save_dir)[POISONED]["spike_samples"] == [32, 40]
    rewound = read_metadata(save_dir / "step_00000006")["train_state"].spike["rewound"]
    assert rewound == [{"spike_step": POISONED, "steps": [5, 5], "samples": [32, 40]}]


@pytest.mark.slow
def test_a_longer_rewind_sets_newer_checkpoints_aside_and_a_resume_keeps_skipping(spike_runs):
    save_dir = spike_runs["rewind2"]["save_dir"]
    assert (save_dir / "step_00000004.rewound").is_dir()  # trained on step 4's batch, before the rewind
    records = _records(save_dir)
    assert [s for s, r in records.items() if r["spike_skipped"]] == [4, 5]
    assert (records[4]["spike_samples"], records[5]["spike_samples"]) == ([24, 32], [32, 40])
    for step in (4, 6):
        rewound = read_metadata(save_dir / f"step_{step:08d}")["train_state"].spike["rewound"]
        assert rewound == [{"spike_step": POISONED, "steps": [4, 5], "samples": [24, 40]}]
    # resumed from the step-4 checkpoint written after the rewind: step 5 (poisoned) is passed
    # over again, so no new spike and no rewind, and it ends where the rewound run ends
    resumed = spike_runs["resumed"]["save_dir"]
    assert "spike_rewind" not in (resumed / "metrics.jsonl").read_text()
    _assert_same_end(resumed, save_dir)
