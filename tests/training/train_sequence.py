"""Several training runs, one after the other, in the same ranks: one launch, so the interpreter,
the torch/DeepSpeed imports and the launch are paid once. Launched like tools/train.py (plain
`python` for one rank; tests/rank_launcher.py, `deepspeed --num_gpus N`, ... for more):

    python tests/training/train_sequence.py --plan PLAN.json

The plan (`write_plan`) lists runs by name. A run is `megatiny train ARGV` (megatiny.cli.train.main,
what tools/train.py runs: its `error: ...` lines and exit statuses 2 and 1 included), or, with
`faults`, tests/training/fault_train.py's main with those flags and ARGV. Each rank writes its
stdout and stderr of run NAME (file descriptors 1 and 2: C++ output and DeepSpeed's logging too)
to OUT_DIR/NAME/rank<R>.log and the run's exit status to OUT_DIR/NAME/rank<R>.status; a run that
fails does not stop the next ones (each test reads its own run: `run_result`). `copy_step` first
copies a checkpoint's tag directory into a save directory, named `latest` there (a resume of that
step with `resume: auto`).

Every run makes and ends its own process group, as a launch does. Before each run rank 0 does the
copy, picks a free rendezvous port for the run and publishes it in a key-value store on the
launch's MASTER_PORT; the other ranks start the run when it is there (at most `wait_s` later), so
no rank reads a half-copied checkpoint nor meets the previous run's rendezvous.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

from megatiny.checkpoint.io import write_latest
from megatiny.process_env import exit_fast, free_port


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sequence: `megatiny train ARGV`, or fault_train.py's main with `faults`
    (its flags, e.g. ("--nan-at-step", "2")) and ARGV; `copy_step` (TAG_DIR, SAVE_DIR) first."""

    name: str
    argv: tuple[str, ...]
    faults: tuple[str, ...] | None = None
    copy_step: tuple[str, str] | None = None


def write_plan(path: Path, out_dir: Path, runs: list[PlannedRun], wait_s: float) -> Path:
    """The plan file of a sequence: `runs` in order, their outputs under `out_dir`, and how long
    a rank waits for rank 0 to start a run (`wait_s`: at least the longest run)."""
    path.write_text(json.dumps({"out_dir": str(out_dir), "wait_s": wait_s,
                                "runs": [asdict(run) for run in runs]}))
    return path


def run_result(out_dir: Path, name: str, ranks: int) -> subprocess.CompletedProcess:
    """Run `name` of a finished sequence: its exit status (the first non-zero one of its ranks;
    None when a rank never finished it: it died) and its ranks' output, rank 0's first."""
    run_dir = Path(out_dir) / name
    statuses = [run_dir / f"rank{r}.status" for r in range(ranks)]
    status = None
    if all(path.exists() for path in statuses):
        status = next((s for s in (int(path.read_text()) for path in statuses) if s), 0)
    output = "".join(path.read_text() for path in sorted(run_dir.glob("rank*.log")))
    return subprocess.CompletedProcess(name, status, output)


def last_log(out_dir: Path) -> str:
    """Rank 0's output of the newest run that has one (where a launch that failed was)."""
    logs = sorted(Path(out_dir).glob("*/rank0.log"), key=lambda path: path.stat().st_mtime)
    return f"\n--- {logs[-1]} ---\n{logs[-1].read_text()}" if logs else ""


# ---------------------------------------------------------------------- the launched side
@contextmanager
def output_to(path: Path):
    """File descriptors 1 and 2 (and so print, logging and C++ output) go to `path` inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def copy_step(tag_dir: str, save_dir: str) -> None:
    """`tag_dir` (ROOT/step_N) copied into `save_dir`, which names it `latest`."""
    target = Path(save_dir)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tag_dir, target / Path(tag_dir).name)
    write_latest(target, Path(tag_dir).name)


class RunPorts:
    """Rank 0 prepares each run and publishes its rendezvous port; the other ranks wait for it
    (at most `wait_s`). One rank (plain `python`): no store, a free port per run."""

    def __init__(self, wait_s: float):
        self.rank, self.world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.store = None
        if self.world > 1:
            import torch.distributed as dist

            self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                       self.world, is_master=self.rank == 0,
                                       timeout=timedelta(seconds=wait_s))

    def start(self, index: int, prepare: Callable[[], None] | None = None) -> None:
        """Before run `index`: `prepare()` on rank 0, then MASTER_PORT of the run's process group."""
        if self.rank == 0:
            if prepare is not None:
                prepare()
            port = str(free_port())
            if self.store is not None:
                self.store.set(f"run-{index}", port)
        else:
            port = self.store.get(f"run-{index}").decode()  # waits (at most wait_s)
        os.environ["MASTER_PORT"] = port


def train_once(run: dict) -> int:
    """One run's exit status, as its own launch would have exited."""
    if run["faults"] is not None:
        from tests.training.fault_train import main as fault_train

        return fault_train([*run["faults"], *run["argv"]])
    from megatiny.cli.train import main as megatiny_train

    return megatiny_train(list(run["argv"]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True)
    parser.add_argument("--local_rank", type=int, default=None)  # rank launchers
    args = parser.parse_args()
    plan = json.loads(Path(args.plan).read_text())
    ports = RunPorts(plan["wait_s"])
    for index, run in enumerate(plan["runs"]):
        ports.start(index, partial(copy_step, *run["copy_step"]) if run["copy_step"] else None)
        run_dir = Path(plan["out_dir"]) / run["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"[train_sequence] rank {ports.rank}: run {run['name']}", flush=True)
        with output_to(run_dir / f"rank{ports.rank}.log"):
            status = train_once(run)
        (run_dir / f"rank{ports.rank}.status").write_text(str(status))
        print(f"[train_sequence] rank {ports.rank}: run {run['name']} exited {status}", flush=True)
    return 0


if __name__ == "__main__":
    exit_fast(main())
