"""End-to-end training runs: real DeepSpeed engines in real multi-process launches, on CPU.

Runs that need no launch of their own share one (tests/training/train_sequence.py: several runs
one after the other in the same ranks, each with its own process group, output and exit status).

One chain of runs shares its outputs across assertions (module-scoped fixtures):
  reference  2 ranks, ZeRO-3, precision auto, `deepspeed --hostfile` over ssh to localhost: 16 steps,
             saves 8, 16
  one `deepspeed --num_gpus 2` launch of two runs:
    init-2   2 steps from the reference's weights (checkpoint.init_from, fresh optimizer)
    killed   resumes the reference's step-8 checkpoint; rank 1 SIGKILLs itself while saving
             step 16 (so the launch fails: the last run)
  one plain `python` launch (1 rank) of two runs:
    single   resumes the killed run's directory: picks step 8 (the last complete save), converts
             it to a universal checkpoint (2 -> 1 ranks) and finishes
    init-1   init-2's run on one rank
Runs with injected faults (tests/training/fault_train.py), one plain `python` launch (1 rank):
  sigterm    ZeRO-1, SIGTERM during step 3: saves and stops
  nan-skip   ZeRO-3 with CPU offload and CPUAdam, a NaN loss at step 2 skipped
  nan-stop   bf16, nan_policy stop, a NaN loss at step 2: exit status 1
Launches of their own: `mpirun` (2 ranks, ZeRO-2), a bad config, the precision benchmark.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from megatiny.checkpoint.io import write_latest
from megatiny.checkpoint.metadata import read_metadata
from megatiny.precision import detect_hardware, resolve_precision
from tests.helpers import REPO_ROOT, free_port, rank_env, run_command, timeout_s, venv_bin
from tests.training.conftest import write_run_config
from tests.training.sshd import LocalSshd, missing_tools
from tests.training.train_sequence import PlannedRun, last_log, run_result, write_plan

pytestmark = pytest.mark.slow

TRAIN = str(REPO_ROOT / "tools" / "train.py")
TRAIN_SEQUENCE = str(REPO_ROOT / "tests" / "training" / "train_sequence.py")  # several runs, one launch
BASE_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT), **rank_env()}


def _metrics(save_dir: Path) -> dict[int, dict]:
    """step -> the training metrics recorded for it (the last record wins, as after a resume)."""
    out = {}
    for line in (save_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record
    return out


# A 16-step tiny-test run with its saves and validations (the longest single launch here).
RUN_TIMEOUT_S = timeout_s(steps=16, seconds_per_step=4, extra_s=60)
RUN_S = timeout_s(launches=0, steps=16, seconds_per_step=4, extra_s=60)  # one such run in a sequence


def _python_run(config: Path, *overrides: str):
    """Plain `python` (one rank) of tools/train.py."""
    return run_command([venv_bin("python"), TRAIN, "--config", str(config), *overrides],
                       timeout=RUN_TIMEOUT_S, env=BASE_ENV)


def _sequence(root: Path, start: list[str], ranks: int, runs: list[PlannedRun]
              ) -> tuple[subprocess.CompletedProcess, dict[str, subprocess.CompletedProcess]]:
    """One launch (`start`: the launcher's command, `ranks` ranks) of tests/training/train_sequence.py
    training `runs` in order: (the launch's result, run name -> its exit status and output)."""
    plan = write_plan(root / "plan.json", root / "logs", runs, wait_s=RUN_S)
    launch = run_command([*start, TRAIN_SEQUENCE, "--plan", str(plan)],
                         timeout=timeout_s(extra_s=len(runs) * RUN_S), env=BASE_ENV)
    launch.stdout += last_log(root / "logs")  # where it stopped, if it failed
    return launch, {run.name: run_result(root / "logs", run.name, ranks) for run in runs}


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("reference")
    save_dir = root / "ckpt"
    config = write_run_config(root / "run.yaml", tiny_data, save_dir)
    hostfile = root / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env_file = root / "deepspeed_env"  # variables for the ranks started over ssh
    env_file.write_text("".join(f"{k}={v}\n" for k, v in BASE_ENV.items()))
    port = free_port()
    with LocalSshd(root / "sshd") as sshd:
        result = run_command(
            [venv_bin("deepspeed"), "--hostfile", str(hostfile), "--master_addr", "127.0.0.1",
             "--master_port", str(port), "--launcher", "pdsh", TRAIN, "--config", str(config)],
            timeout=RUN_TIMEOUT_S, env={**BASE_ENV, **sshd.env(), "DS_ENV_FILE": str(env_file)})
    return {"result": result, "save_dir": save_dir, "config": config, "port": port}


def _init_from_config(root: Path, tiny_data, reference: dict) -> Path:
    """A 2-step run from the reference run's checkpoint root (weights only: fresh optimizer)."""
    root.mkdir()
    return write_run_config(root / "run.yaml", tiny_data, root / "ckpt", schedule={"train_steps": 2},
                            logging={"log_interval": 1, "eval_interval": 0},
                            checkpoint={"save_dir": str(root / "ckpt"), "save_interval": 0,
                                        "init_from": str(reference["save_dir"])})


@pytest.fixture(scope="module")
def two_rank_runs(reference, tiny_data, tmp_path_factory):
    """`deepspeed --num_gpus 2`: init-2, then killed (resume step 8 of the reference on 2 ranks;
    rank 1 dies, SIGKILL, in the middle of saving step 16, and with it the launch)."""
    root = tmp_path_factory.mktemp("two-ranks")
    save_dir = root / "killed" / "ckpt"
    save_dir.mkdir(parents=True)
    shutil.copytree(reference["save_dir"] / "step_00000008", save_dir / "step_00000008")
    write_latest(save_dir, "step_00000008")
    killed = write_run_config(root / "killed" / "run.yaml", tiny_data, save_dir)
    init = _init_from_config(root / "init-2", tiny_data, reference)
    deepspeed = [venv_bin("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
    launch, runs = _sequence(root, deepspeed, 2, [
        PlannedRun("init-2", ("--config", str(init))),
        PlannedRun("killed", ("--config", str(killed)), faults=("--kill-rank1-at-save", "16"))])
    assert runs["killed"].stdout, f"the launch ended before the killed run:\n{launch.stdout[-5000:]}"
    runs["killed"].returncode = launch.returncode  # the launch ended with it
    return {"killed": {"result": runs["killed"], "save_dir": save_dir, "config": killed},
            "init": (runs["init-2"], init.parent / "ckpt")}


@pytest.fixture(scope="module")
def killed(two_rank_runs):
    return two_rank_runs["killed"]


@pytest.fixture(scope="module")
def one_rank_runs(reference, killed, tiny_data, tmp_path_factory):
    """Plain python, one rank: single (resume auto in the directory of the killed run), init-1."""
    root = tmp_path_factory.mktemp("one-rank")
    init = _init_from_config(root / "init-1", tiny_data, reference)
    launch, runs = _sequence(root, [venv_bin("python")], 1,
                             [PlannedRun("single", ("--config", str(killed["config"]))),
                              PlannedRun("init-1", ("--config", str(init)))])
    assert launch.returncode == 0, launch.stdout[-5000:]
    return {"single": runs["single"], "init": (runs["init-1"], init.parent / "ckpt")}


@pytest.fixture(scope="module")
def single(killed, one_rank_runs):
    return {"result": one_rank_runs["single"], "save_dir": killed["save_dir"]}


FAULT_RUN_SECTIONS = {
    "sigterm": dict(distributed={"deepspeed_config": "ds_configs/zero1.json"}),
    "nan-skip": dict(schedule={"train_steps": 4}, logging={"log_interval": 1, "eval_interval": 0},
                     optimizer={"cpu_adam": True},
                     distributed={"deepspeed_config": "ds_configs/zero3_offload.json"}),
    "nan-stop": dict(nan_policy="stop", schedule={"train_steps": 4}, logging={"eval_interval": 0},
                     distributed={"deepspeed_config": "ds_configs/zero2.json"},
                     runtime={"precision": "bf16"}),
}


@pytest.fixture(scope="module")
def fault_runs(tiny_data, tmp_path_factory):
    """Plain python, one rank, fault_train.py's runs: sigterm, nan-skip, nan-stop (see the tests)."""
    root = tmp_path_factory.mktemp("faults")
    configs = {name: (root / name / "run.yaml", root / name / "ckpt") for name in FAULT_RUN_SECTIONS}
    for name, (config, save_dir) in configs.items():
        config.parent.mkdir()
        write_run_config(config, tiny_data, save_dir, **FAULT_RUN_SECTIONS[name])
    launch, runs = _sequence(root, [venv_bin("python")], 1, [
        PlannedRun("sigterm", ("--config", str(configs["sigterm"][0]), "runtime.precision=fp32"),
                   faults=("--sigterm-at-step", "3")),
        PlannedRun("nan-skip", ("--config", str(configs["nan-skip"][0])), faults=("--nan-at-step", "2")),
        PlannedRun("nan-stop", ("--config", str(configs["nan-stop"][0])), faults=("--nan-at-step", "2"))])
    assert launch.returncode == 0, launch.stdout[-5000:]
    return {name: (runs[name], configs[name][1]) for name in configs}


def test_hostfile_launch_over_ssh_trains_and_logs(reference):
    result, save_dir = reference["result"], reference["save_dir"]
    assert result.returncode == 0, result.stdout[-5000:]
    assert "2 ranks | ZeRO-3" in result.stdout
    losses = [m["loss"] for _, m in sorted(_metrics(save_dir).items())]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 1.0, losses  # learnable corpus: loss falls
    assert (save_dir / "latest").read_text() == "step_00000016"
    meta = read_metadata(save_dir / "step_00000016")
    state = meta["train_state"]
    assert (state.step, state.consumed_samples, state.skipped_steps) == (16, 128, 0)
    assert (state.world.world_size, state.world.zero_stage) == (2, 3) and meta["tokenizer"].endswith(".model")
    assert state.run_config["batch"]["global_batch_size"] == 8 and state.data["train"] is not None
    # precision auto: bf16 on a CPU with native bf16, fp32 on others; said at start-up and recorded
    expected = resolve_precision("auto", detect_hardware("cpu"))
    assert f"precision {expected.describe()}" in result.stdout
    assert state.world.precision == expected.name
    assert state.run_config["runtime"]["precision"] == "auto"
    # DeepSpeed's CPU shared-memory allreduce (a ~66 MB /dev/shm buffer a rank) is never set up
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{reference['port']}_*"))
    assert sorted(p.name for p in (save_dir / "step_00000016").glob("rng_state_rank*.pt")) == \
        ["rng_state_rank0.pt", "rng_state_rank1.pt"]


def test_tensorboard_has_the_scalars(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(reference["save_dir"] / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/consumed_samples", "perf/tokens_per_s",
                "perf/tokens_per_s_per_device", "perf/tflops_per_device", "perf/memory_gb", "valid/loss",
                "valid/perplexity"):
        assert tag in tags, tags
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8, 12, 16]
    assert [e.step for e in events.Scalars("valid/loss")] == [8, 16]
    assert events.Scalars("train/consumed_samples")[-1].value == 128


def test_resume_reproduces_the_uninterrupted_losses(reference, killed):
    result = killed["result"]
    assert "resumed from" in result.stdout and "step_00000008: step 8" in result.stdout, result.stdout[-4000:]
    expected = _metrics(reference["save_dir"])
    resumed = _metrics(killed["save_dir"])
    assert sorted(resumed) == list(range(9, 17))
    for step in range(9, 17):
        # Same ranks, same data position, same optimizer state: bitwise equal on CPU.
        assert resumed[step]["loss"] == expected[step]["loss"], (step, resumed[step], expected[step])
        assert resumed[step]["lr"] == expected[step]["lr"]
        assert resumed[step]["consumed_samples"] == expected[step]["consumed_samples"]


def test_kill_during_save_keeps_previous_checkpoint(killed):
    result, save_dir = killed["result"], killed["save_dir"]
    assert result.returncode != 0, result.stdout[-3000:]
    assert (save_dir / "latest").read_text() == "step_00000008"
    assert (save_dir / "step_00000016").is_dir()  # files of the interrupted save...
    assert not (save_dir / "step_00000016" / "megatiny.json").exists()  # ...never marked complete


def test_resume_after_kill_on_one_rank_from_two(reference, single):
    result, save_dir = single["result"], single["save_dir"]
    assert result.returncode == 0, result.stdout[-5000:]
    assert "made with 2 ranks, this run has 1" in result.stdout
    assert "1 ranks | ZeRO-3" in result.stdout and "resumed from" in result.stdout
    assert (save_dir / "latest").read_text() == "step_00000016"
    assert (save_dir / "step_00000016" / "megatiny.json").is_file()
    expected, resumed = _metrics(reference["save_dir"]), _metrics(save_dir)
    # Weights, Adam state and data position survive the 2 -> 1 change; only the reduction order
    # differs, so losses agree to bf16 precision or better (a fresh model would be at ~5.8).
    for step in range(9, 17):
        assert resumed[step]["loss"] == pytest.approx(expected[step]["loss"], rel=0.03), step
        assert resumed[step]["consumed_samples"] == expected[step]["consumed_samples"]


def test_mpirun_two_ranks_zero2(tiny_data, tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed")
    config = write_run_config(tmp_path / "run.yaml", tiny_data, tmp_path / "ckpt",
                              schedule={"train_steps": 3}, logging={"log_interval": 1, "eval_interval": 0},
                              distributed={"deepspeed_config": "ds_configs/zero2.json",
                                           "master_port": free_port(), "timeout_s": 120})
    cmd = ["mpirun", "-np", "2", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]
    for key in (*BASE_ENV, "PATH"):
        cmd += ["-x", key]
    result = run_command([*cmd, venv_bin("python"), TRAIN, "--config", str(config)], timeout=RUN_TIMEOUT_S,
                         env=BASE_ENV)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "2 ranks | ZeRO-2" in result.stdout and "step 3/3" in result.stdout
    assert (tmp_path / "ckpt" / "latest").read_text() == "step_00000003"


def test_single_process_zero1_stops_cleanly_on_sigterm(fault_runs):
    result, save_dir = fault_runs["sigterm"]
    assert result.returncode == 0, result.stdout[-5000:]
    assert "1 ranks | ZeRO-1 | precision fp32 (requested)" in result.stdout
    assert "stop requested (SIGTERM): saving a checkpoint at step 3" in result.stdout
    assert (save_dir / "latest").read_text() == "step_00000003"
    assert sorted(_metrics(save_dir)) == [1, 2, 3]


def test_offload_and_nan_skip(fault_runs):
    """ZeRO-3 with CPU offload of parameters and optimizer states, stepped by DeepSpeed's fused
    CPUAdam (JIT-built on first use, ~1 min, then cached); a NaN loss at step 2 is skipped."""
    result, save_dir = fault_runs["nan-skip"]
    assert result.returncode == 0, result.stdout[-5000:]
    assert "non-finite loss nan at step 2, micro-batch 0" in result.stdout
    metrics = _metrics(save_dir)
    assert metrics[2]["loss"] is None and metrics[2]["skipped_steps"] == 1
    assert all(metrics[s]["loss"] is not None for s in (1, 3, 4))
    assert metrics[3]["loss"] < 7.0


def test_nan_stop_policy_exits_with_error(fault_runs):
    """bf16 explicitly (it has no loss scaler to catch a NaN): on a CPU without native bf16 it runs
    emulated, with a warning; the run stops at its second step either way."""
    result, _ = fault_runs["nan-stop"]
    assert result.returncode == 1, result.stdout[-3000:]
    assert "precision bf16 (requested" in result.stdout
    emulated = not detect_hardware("cpu").native_bf16
    assert ("bf16 on a CPU without native bf16 is emulated and slow" in result.stdout) == emulated
    assert "error: non-finite loss at step 2" in result.stdout
    assert "Traceback" not in result.stdout


def test_bad_config_is_a_clear_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("batch: {micro_batch_size: 0}\n")
    result = _python_run(config)
    assert result.returncode == 2
    assert "batch.micro_batch_size must be an integer > 0" in result.stdout
    assert "Traceback" not in result.stdout


def test_init_from_continues_pretraining(reference, one_rank_runs, two_rank_runs):
    """Weights from the reference run's checkpoint root (ZeRO-3, 2 ranks), fresh optimizer, on 1 rank
    (plain python) and on 2 ZeRO-3 ranks (every rank must join the parameter gathers of the copy, or
    rank 0 hangs). Both see the same first global batch with the same weights: the same loss."""
    first = {}
    for ranks, (result, save_dir) in ((1, one_rank_runs["init"]), (2, two_rank_runs["init"])):
        assert result.returncode == 0, result.stdout[-5000:]
        assert "initialised the weights from" in result.stdout
        first[ranks] = _metrics(save_dir)[1]["loss"]
    trained = _metrics(reference["save_dir"])[16]["loss"]
    assert first[1] < trained + 0.5 < 5.0, (first, trained)  # an untrained model starts near ln(320) = 5.8
    assert first[2] == pytest.approx(first[1], abs=0.02), first  # sums in another order (bf16: visibly)


def test_precision_benchmark_prints_ratios_to_fp32():
    result = run_command([venv_bin("python"), str(REPO_ROOT / "benchmarks" / "bench_precision.py"),
                          "--preset", "tiny-test", "--seq", "32", "--micro-batch", "2", "--steps", "1",
                          "--warmup", "1", "--precisions", "fp32", "auto"],
                         timeout=timeout_s(launches=2, extra_s=30), env=BASE_ENV)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "512x512 matmul, 1 thread: fp32" in result.stdout
    expected = resolve_precision("auto", detect_hardware("cpu"))
    assert f"auto = {expected.describe()}" in result.stdout
    assert "1.00x fp32" in result.stdout and "auto " in result.stdout
