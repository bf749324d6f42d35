"""The trainer in-process (plain python, one rank, tiny fp32 model) with faults injected through
TrainCallbacks: a NaN micro-batch is dropped, a SIGTERM stops the run with a checkpoint, and a
second call resumes from it; under a supervisor's heartbeat directory, a stop request does the
same and an error is reported in the heartbeat. (A step whose every micro-batch is NaN is tested
in a subprocess: test_train_runs.py::test_offload_and_nan_skip.)"""
from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from megatiny.checkpoint.layout import read_latest
from megatiny.checkpoint.manager import CheckpointManager
from megatiny.checkpoint.metadata import read_metadata
from megatiny.heartbeat import HEARTBEAT_DIR_ENV, read_beats, request_stop
from megatiny.model.config import get_preset
from megatiny.training.config import load_config
from megatiny.training.loop import TrainCallbacks, train
from tests.training.conftest import write_run_config


class Faults(TrainCallbacks):
    """A NaN loss in micro-batch 0 of (0-based) step `nan_step`; SIGTERM to this process during
    step `sigterm_step`."""

    def __init__(self, nan_step: int | None = None, sigterm_step: int | None = None):
        self.nan_step, self.sigterm_step = nan_step, sigterm_step
        self.saves: list[int] = []

    def step_started(self, step: int, rank: int) -> None:
        if step == self.sigterm_step:
            os.kill(os.getpid(), signal.SIGTERM)

    def micro_batch_loss(self, step, micro, rank, loss):
        return torch.full_like(loss, float("nan")) if (step, micro) == (self.nan_step, 0) else loss

    def shards_written(self, step: int, rank: int) -> None:
        self.saves.append(step)


def test_nan_skip_then_sigterm_then_resume_in_process(tiny_data, tmp_path, restore_environment, capsys):
    save_dir = tmp_path / "ckpt"
    config = write_run_config(tmp_path / "run.yaml", tiny_data, save_dir,
                              schedule={"train_steps": 5, "warmup_steps": 1},
                              checkpoint={"save_interval": 0},
                              logging={"log_interval": 1, "eval_interval": 0},
                              distributed={"deepspeed_config": "ds_configs/zero1.json", "timeout_s": 60},
                              runtime={"precision": "fp32"})
    run = load_config(config)
    faults = Faults(nan_step=1, sigterm_step=2)
    first = train(run, faults)
    out = capsys.readouterr().out
    assert "step 2: skipping micro-batch 0" in out and "micro-batch 1" not in out
    assert "stop requested (SIGTERM): saving a checkpoint at step 3" in out
    assert first.stopped_by_signal and first.step == 3 and first.consumed_samples == 24
    assert first.skipped_steps == 0 and all(math.isfinite(loss) for loss in first.losses)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop's handler is gone again
    assert faults.saves == [3] and read_latest(save_dir) == "step_00000003"
    state = read_metadata(save_dir / "step_00000003")["train_state"]
    assert (state.step, state.consumed_samples, state.skipped_steps) == (3, 24, 0)
    assert (state.world.world_size, state.world.zero_stage, state.world.precision) == (1, 1, "fp32")

    # Another architecture is refused; another attention kernel is a runtime choice and resumes.
    with pytest.raises(ValueError, match="model config differs"):
        manager = CheckpointManager(save_dir, rank=0, world_size=1)
        manager.find_resume("auto", get_preset("tiny-test", num_layers=3))
    run = load_config(config, ["runtime.attention_backend=math"])
    second = train(run, Faults())
    assert "resumed from" in capsys.readouterr().out
    assert not second.stopped_by_signal and second.step == 5 and second.consumed_samples == 40
    assert len(second.losses) == 2 and all(math.isfinite(loss) for loss in second.losses)
    assert read_latest(save_dir) == "step_00000005"


class RaiseAt(TrainCallbacks):
    def __init__(self, step: int):
        self.step = step

    def step_started(self, step: int, rank: int) -> None:
        if step == self.step:
            raise OSError("No space left on device")


def test_a_supervisors_stop_request_and_a_failure_in_the_heartbeat(tiny_data, tmp_path, restore_environment,
                                                                   capsys):
    save_dir, beats = tmp_path / "ckpt", tmp_path / "beats"
    config = write_run_config(tmp_path / "run.yaml", tiny_data, save_dir,
                              schedule={"train_steps": 3, "warmup_steps": 1}, checkpoint={"save_interval": 0},
                              logging={"log_interval": 1, "eval_interval": 0},
                              distributed={"deepspeed_config": "ds_configs/zero1.json", "timeout_s": 60},
                              runtime={"precision": "fp32"})
    os.environ[HEARTBEAT_DIR_ENV] = str(beats)
    beats.mkdir()
    request_stop(beats)
    stopped = train(load_config(config))
    out = capsys.readouterr().out
    assert "stop requested (the supervisor's request): saving a checkpoint at step 1" in out
    assert stopped.stopped_by_signal and stopped.step == 1 and read_latest(save_dir) == "step_00000001"
    beat = read_beats(beats)[0]
    assert (beat.phase, beat.step, beat.train_steps, beat.error) == ("done", 1, 3, None)
    (beats / "stop").unlink()
    with pytest.raises(OSError, match="No space left"):
        train(load_config(config), RaiseAt(step=1))   # resumed at step 1: fails at the start of step 2
    beat = read_beats(beats)[0]
    assert (beat.phase, beat.step, beat.error) == ("step", 2, "OSError: No space left on device")
