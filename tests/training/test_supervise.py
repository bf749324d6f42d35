"""`megatiny supervise` on real 2-rank DeepSpeed runs (tiny model, 16 steps, a checkpoint every 4):
a killed rank and a hung rank are relaunched and end bit for bit where an uninterrupted run ends;
a crash before every checkpoint and a config error make it give up; a damaged newest checkpoint is
named and the previous one used, again bit-exactly. The uninterrupted reference is run once.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from megatiny.checkpoint.io import write_latest
from megatiny.supervisor.events import read_events
from tests.helpers import REPO_ROOT, free_port, rank_env, run_command, timeout_s, venv_bin
from tests.training.conftest import write_run_config

pytestmark = pytest.mark.slow

FAULT_TRAIN = str(REPO_ROOT / "tests" / "training" / "fault_train.py")
BASE_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT), **rank_env()}
STEPS, SAVE_EVERY = 16, 4
RUN_S = timeout_s(steps=STEPS, seconds_per_step=4, extra_s=30)      # one launch of the whole run
FINAL = f"step_{STEPS:08d}"


def _config(root: Path, tiny_data, **sections) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sections = {"checkpoint": {"save_interval": SAVE_EVERY},
                "logging": {"log_interval": 4, "eval_interval": 0}, **sections}
    return write_run_config(root / "run.yaml", tiny_data, root / "ckpt", **sections)


def _ranks(config: Path, *args: str) -> list[str]:
    """2 ranks of fault_train.py through tests/rank_launcher.py (DeepSpeed's launcher's environment)."""
    return [venv_bin("python"), "-m", "tests.rank_launcher", "--nproc", "2",
            "--master-port", str(free_port()), FAULT_TRAIN, "--config", str(config), *args]


def _supervise(job: list[str], *options: str, launches: int = 2):
    return run_command([venv_bin("python"), "-m", "megatiny", "supervise", *options, "--", *job],
                       timeout=launches * RUN_S, env=BASE_ENV)


def _final_loss(save_dir: Path) -> float:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r.get("step") == STEPS and "loss" in r][-1]


def _weights(tag_dir: Path) -> dict[str, torch.Tensor]:
    from megatiny.checkpoint.load import load_model
    model, _ = load_model(tag_dir, dtype=torch.float32, device="cpu")
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_bit_exact(reference: dict, save_dir: Path) -> None:
    assert _final_loss(save_dir) == reference["loss"]
    weights = _weights(save_dir / FINAL)
    assert weights.keys() == reference["weights"].keys()
    for name, tensor in reference["weights"].items():
        assert torch.equal(weights[name], tensor), name


def _events(save_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_events(save_dir / "supervisor_events.jsonl") if e["event"] == kind]


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """The uninterrupted run, unsupervised: its step-16 loss and final weights."""
    root = tmp_path_factory.mktemp("reference")
    result = run_command(_ranks(_config(root, tiny_data)), timeout=RUN_S, env=BASE_ENV)
    assert result.returncode == 0, result.stdout[-4000:]
    save_dir = root / "ckpt"
    return {"save_dir": save_dir, "loss": _final_loss(save_dir), "weights": _weights(save_dir / FINAL)}


def test_kill9_of_a_rank_under_deepspeed_is_relaunched_and_ends_bit_exact(reference, tiny_data, tmp_path):
    config = _config(tmp_path, tiny_data)
    job = [venv_bin("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), FAULT_TRAIN,
           "--kill-at-step", "7", "--once", str(tmp_path / "fired"), "--config", str(config)]
    result = _supervise(job, "--max-restarts", "2", "--hang-timeout", "60")
    save_dir = tmp_path / "ckpt"
    assert result.returncode == 0, result.stdout[-5000:]
    fault, = _events(save_dir, "fault")
    # the dead rank (or the launcher that noticed it first), not rank 0 that failed of it
    assert fault["kind"] in ("rank_died", "exited") and (fault["rank"], fault["step"]) == (1, 7), fault
    assert "rank 1" in fault["message"] and "died at step 7 without reporting an error" in fault["message"]
    restart, = _events(save_dir, "restart")
    assert restart["resume_step"] == 4 and len(_events(save_dir, "launch")) == 2
    assert "resumed from" in result.stdout and "step_00000004: step 4" in result.stdout
    assert _events(save_dir, "finished")
    _assert_bit_exact(reference, save_dir)
    print(f"kill -9: detected {fault['last_beat_age_s']} s after the rank's last heartbeat; relaunched "
          f"{_events(save_dir, 'launch')[1]['time'] - fault['time']:.2f} s after; training again "
          f"{_events(save_dir, 'running')[1]['time'] - fault['time']:.1f} s after the fault")


def test_a_hung_rank_is_named_dumped_killed_and_relaunched_bit_exact(reference, tiny_data, tmp_path):
    hang_timeout = 10
    config = _config(tmp_path, tiny_data)
    job = _ranks(config, "--stop-at-step", "7", "--once", str(tmp_path / "fired"))
    result = _supervise(job, "--max-restarts", "1", "--hang-timeout", str(hang_timeout), "--dump-wait", "5")
    save_dir = tmp_path / "ckpt"
    assert result.returncode == 0, result.stdout[-5000:]
    fault, = _events(save_dir, "fault")
    assert fault["kind"] == "hang" and (fault["rank"], fault["step"]) == (1, 7), fault
    assert f"rank 1 on host {fault['host']}" in fault["message"] and "stopped at step 7" in fault["message"]
    assert fault["stalled_s"] <= hang_timeout + 10   # declared a hang (the stack dumps come after)
    assert "stacks of ranks [0, 1] dumped" in fault["message"]
    # The dumps themselves (faulthandler on SIGUSR1) are checked in-process by
    # tests/supervisor/test_rules.py. Here the woken rank's own stack (inside step_started) was
    # missing from the job's output in 2 of the 3 full-suite runs (it passed alone), although the
    # supervisor had signalled it: an open question of issue 21, so no assertion on the text here.
    assert _events(save_dir, "restart")[0]["resume_step"] == 4
    _assert_bit_exact(reference, save_dir)
    print(f"hang: declared after {fault['stalled_s']} s without progress (timeout {hang_timeout} s); fault "
          f"event {fault['last_beat_age_s']} s after the last heartbeat (stack dumps included); relaunched "
          f"{_events(save_dir, 'launch')[1]['time'] - fault['time']:.2f} s after")


def test_a_crash_before_every_checkpoint_gives_up_after_n_restarts(tiny_data, tmp_path):
    config = _config(tmp_path, tiny_data)
    result = _supervise(_ranks(config, "--raise-at-step", "2"), "--max-restarts", "1")
    save_dir = tmp_path / "ckpt"
    assert result.returncode != 0, result.stdout[-3000:]
    faults = _events(save_dir, "fault")
    assert len(_events(save_dir, "launch")) == 2 and len(faults) == 2
    # named: the rank that raised, not rank 0 that failed of it (on the closed connection, or a
    # SIGTERM from the launcher) after it
    for fault in faults:
        assert (fault["kind"], fault["rank"], fault["step"]) == ("rank_failed", 1, 2), fault
        assert fault["error"] == "InjectedFailure: rank 1 failed at the start of step 2", fault
    give_up, = _events(save_dir, "give_up")
    assert "1 restart(s) in a row produced no new checkpoint" in give_up["reason"]
    assert "giving up after launch 2" in result.stdout


def test_a_config_error_gives_up_after_the_second_launch(tiny_data, tmp_path):
    config = _config(tmp_path, tiny_data)
    save_dir = tmp_path / "ckpt"
    job = _ranks(config, "batch.micro_batch_size=3")  # 8 is no multiple of 3: refused before any step
    result = _supervise(job, "--max-restarts", "5", "--save-dir", str(save_dir))
    assert result.returncode != 0, result.stdout[-3000:]
    assert "must be a multiple of batch.micro_batch_size" in result.stdout
    assert len(_events(save_dir, "launch")) == 2
    assert "before its first step twice" in _events(save_dir, "give_up")[0]["reason"]


def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(reference, tiny_data, tmp_path):
    save_dir = tmp_path / "ckpt"
    for tag in ("step_00000008", "step_00000012"):
        shutil.copytree(reference["save_dir"] / tag, save_dir / tag)
    write_latest(save_dir, "step_00000012")
    victim = max((save_dir / "step_00000012").glob("*optim_states.pt"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40   # one flipped bit, same size
    victim.write_bytes(bytes(data))
    result = run_command(_ranks(_config(tmp_path, tiny_data)), timeout=RUN_S, env=BASE_ENV)
    assert result.returncode == 0, result.stdout[-5000:]
    assert f"{victim.name}: altered" in result.stdout
    assert "falling back to" in result.stdout and "step_00000008: step 8" in result.stdout
    assert (save_dir / "step_00000012.damaged" / victim.name).is_file()
    _assert_bit_exact(reference, save_dir)
