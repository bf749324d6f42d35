"""Several `megatiny train` runs, one after the other, in the same ranks (one launch, so the
interpreter, the torch/DeepSpeed imports and the launch are paid once). Launched like tools/train.py
(plain `python` for one rank, tests/rank_launcher.py for more):

    python tests/training/train_sequence.py --plan PLAN.json

PLAN.json: {"out_dir": DIR, "wait_s": S, "runs": [{"name": N, "argv": [...], "copy_step": null |
[SOURCE_TAG_DIR, SAVE_DIR]}, ...]}. Each run is `megatiny train ARGV` (megatiny.cli.train.main,
what tools/train.py runs: its `error: ...` lines and exit status 2 or 1 included) with this rank's
stdout and stderr (file descriptors 1 and 2: C++ and DeepSpeed's logging too) written to
DIR/N/rank<R>.log and its exit status to DIR/N/rank<R>.status; a run that fails does not stop the
next ones (each test reads its own run's status). `copy_step` first copies a checkpoint's tag
directory into SAVE_DIR and names it `latest` there (a resume of that step with `resume: auto`).

Before each run rank 0 does that copy, picks a free rendezvous port for the run's process group
(each run makes and destroys its own, like a launch) and publishes it in a key-value store on the
launch's MASTER_PORT; the other ranks start the run when it is there (at most `wait_s` later), so
they never read a half-copied checkpoint nor meet a previous run's rendezvous.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from megatiny.checkpoint.io import write_latest
from megatiny.cli.train import main as train_main
from megatiny.process_env import exit_fast, free_port


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
    """Rank 0 prepares each run and publishes its rendezvous port; the other ranks wait for it.
    One rank (plain `python`): no store, a free port per run."""

    def __init__(self, wait_s: float):
        self.rank, self.world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.store = None
        if self.world > 1:
            import torch.distributed as dist

            self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                       self.world, is_master=self.rank == 0,
                                       timeout=timedelta(seconds=wait_s))

    def start(self, index: int, run: dict) -> None:
        """Before run `index`: its checkpoint copy (rank 0), then MASTER_PORT of its process group."""
        if self.rank == 0:
            if run.get("copy_step"):
                copy_step(*run["copy_step"])
            port = str(free_port())
            if self.store is not None:
                self.store.set(f"run-{index}", port)
        else:
            port = self.store.get(f"run-{index}").decode()  # waits (at most wait_s)
        os.environ["MASTER_PORT"] = port


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True)
    parser.add_argument("--local_rank", type=int, default=None)  # rank launchers
    args = parser.parse_args()
    plan = json.loads(Path(args.plan).read_text())
    ports = RunPorts(plan["wait_s"])
    for index, run in enumerate(plan["runs"]):
        ports.start(index, run)
        run_dir = Path(plan["out_dir"]) / run["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"[train_sequence] rank {ports.rank}: run {run['name']}", flush=True)
        with output_to(run_dir / f"rank{ports.rank}.log"):
            status = train_main(run["argv"])
        (run_dir / f"rank{ports.rank}.status").write_text(str(status))
        print(f"[train_sequence] rank {ports.rank}: run {run['name']} exited {status}", flush=True)
    return 0


if __name__ == "__main__":
    exit_fast(main())
