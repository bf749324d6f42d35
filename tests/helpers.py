"""Shared helpers for tests: subprocess runs with timeouts sized by their work, free ports, the
venv's executables."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from megatiny.process_env import free_port as free_port  # re-exported: tests import it from here
from megatiny.process_env import path_with_interpreter_bin

REPO_ROOT = Path(__file__).resolve().parents[1]

# Seconds a child process may take, sized for the slowest machine CI may get: 2 cores, AVX2 only
# (no native bf16, so `precision: auto` trains in fp32), with the other core busy.
LAUNCH_S = 90.0  # interpreter + torch/deepspeed imports + process group, per launch
TIMEOUT_SCALE_ENV = "MEGATINY_TEST_TIMEOUT_SCALE"  # multiplies every budget (e.g. 3 on a slow laptop)


def timeout_s(*, launches: int = 1, steps: int = 0, seconds_per_step: float = 1.0,
              extra_s: float = 0.0) -> float:
    """The time budget of a subprocess: `launches` process starts, `steps` training steps of
    `seconds_per_step` each and `extra_s` of other work, times $MEGATINY_TEST_TIMEOUT_SCALE."""
    scale = float(os.environ.get(TIMEOUT_SCALE_ENV, "1"))
    return scale * (launches * LAUNCH_S + steps * seconds_per_step + extra_s)


def per_test_timeout_s() -> float:
    """The deadline of one test, fixtures included: the longest test (a fixture training several
    checkpoints, ~3 min here, ~6.5 min on a slow AVX2-only CPU) fits in it with room to spare."""
    return timeout_s(launches=10)


# What a rank started over ssh (or by mpirun) must see to behave like this process: where DeepSpeed's
# ops are built, and the CPU instruction-set caps that decide `precision: auto` and the kernels.
RANK_ENV_KEYS = ("TORCH_EXTENSIONS_DIR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                 "MKL_ENABLE_INSTRUCTIONS")


def rank_env() -> dict[str, str]:
    """The RANK_ENV_KEYS set in this process, for launchers' environment files."""
    return {key: os.environ[key] for key in RANK_ENV_KEYS if key in os.environ}


def launch_ranks(ranks: int) -> list[str]:
    """The start of a command running `ranks` local ranks of what follows it (tests/rank_launcher.py:
    DeepSpeed's launcher's environment, without its two extra interpreters). Runs from REPO_ROOT."""
    return [sys.executable, "-m", "tests.rank_launcher", "--nproc", str(ranks),
            "--master-port", str(free_port())]


def inductor_cache_dir() -> str:
    """The suite's own Inductor cache (.pytest_cache/torchinductor, kept between suite runs so a
    rerun skips the C++ compiles), one subdirectory per CPU kind as in megatiny.model.compile."""
    from megatiny.model.compile import cache_dir_for_this_cpu

    return str(cache_dir_for_this_cpu(REPO_ROOT / ".pytest_cache" / "torchinductor"))


def venv_bin(name: str) -> str:
    """Path of an executable installed beside the running interpreter (e.g. `deepspeed`)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def output_tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_command(cmd: list[str], timeout: float, cwd: Path | str = REPO_ROOT,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` with stdout+stderr captured together as text; never raises on exit status.

    On timeout the whole process group (launchers' ranks too) is killed and the test fails with
    the tail of what the child printed, so a slow or hung run says where it was."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env["PATH"] = path_with_interpreter_bin(full_env.get("PATH"))
    if env:
        full_env.update(env)
    with subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as process:
        try:
            stdout, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            os.killpg(process.pid, signal.SIGKILL)
            try:    # a grandchild that left the process group can hold the pipe open: bounded too
                rest, _ = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                rest = "(output pipe still held open by a process outside the group)"
            partial = expired.output or ""
            partial = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
            pytest.fail(f"timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}\n"
                        f"--- last output ---\n{output_tail(partial + (rest or ''))}", pytrace=False)
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, None)


def finish_rank(out_dir: str | Path, name: str, results: dict) -> None:
    """The end of a launched worker script's rank: `results` to OUT_DIR/NAME-rankR.json, then a
    barrier (the test reads every rank's file once the launch exits) and the process group's end."""
    import json

    import torch.distributed as dist

    (Path(out_dir) / f"{name}-rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A directory NAME that `build(directory)` fills once per test run, however many pytest-xdist
    workers ask for it (each worker has its own session fixtures): the first builds it under a lock,
    the others wait for it (at most a test's deadline) and reuse it. A failed build leaves nothing,
    so a later caller builds again and fails with its own output."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    directory, done = shared / f"once-{name}", shared / f"once-{name}.done"
    deadline = time.monotonic() + per_test_timeout_s()
    with open(shared / f"once-{name}.lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"waited {per_test_timeout_s():.0f} s for another worker to build "
                                f"{directory}")
                time.sleep(0.2)
        try:
            if not done.exists():
                if directory.exists():  # left by a build that failed
                    shutil.rmtree(directory)
                directory.mkdir()
                build(directory)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return directory
