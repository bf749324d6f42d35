"""`tools/train.py` with faults injected, for the crash and NaN tests (launched like tools/train.py):

    python tests/training/fault_train.py --config RUN.yaml [--config RUN2.yaml ...] [--nan-at-step N]
        [--sigterm-at-step N] [--kill-rank1-at-save N] [--kill-at-step N] [--stop-at-step N]
        [--raise-at-step N] [--poison-at-step N] [--fault-rank R] [--once FILE] [key=value ...]

Steps are 1-based, as logged: `--nan-at-step 2` makes every rank's losses of step 2 NaN,
`--sigterm-at-step 3` has rank 0 send itself SIGTERM during step 3, `--kill-rank1-at-save 16` has
rank 1 SIGKILL itself after writing its files of the step-16 checkpoint, before it is complete.
For the supervisor: `--kill-at-step 7` has rank `--fault-rank` (default 1) SIGKILL itself at the
start of step 7, `--stop-at-step 7` SIGSTOP itself (a hang), `--raise-at-step 2` raise `InjectedFailure`;
with `--once FILE` each of these fires only while FILE does not exist (it is created first), so
the relaunched command runs clean. Several `--config`s are trained one after the other in the same
processes (one launch for several runs). `--poison-at-step 3` multiplies every rank's losses of step 3
by 1000 as the ranks compare them (a loss spike).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

from megatiny.process_env import exit_fast
from megatiny.training.config import load_config
from megatiny.training.loop import NonFiniteLoss, TrainCallbacks, train

# How long a rank waits for rank 0 to start the next of several runs: rank 0 ends the same run
# first, so seconds; the bound only matters when rank 0 died and the launcher has not noticed.
RUN_WAIT_S = 300


class InjectedFailure(RuntimeError):
    """A rank's training raising (a bug, a full disk), as `--raise-at-step` injects it."""


class Faults(TrainCallbacks):
    def __init__(self, args: argparse.Namespace):
        self.nan_at_step, self.sigterm_at_step = args.nan_at_step, args.sigterm_at_step
        self.kill_rank1_at_save = args.kill_rank1_at_save
        self.args = args

    def _fire_once(self) -> bool:
        """Whether a --once fault fires now (and never again in this directory)."""
        if self.args.once is None:
            return True
        marker = Path(self.args.once)
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return False
        return True

    def step_started(self, step: int, rank: int) -> None:
        if step + 1 == self.sigterm_at_step and rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        if rank != self.args.fault_rank:
            return
        if step + 1 == self.args.kill_at_step and self._fire_once():
            os.kill(os.getpid(), signal.SIGKILL)
        if step + 1 == self.args.stop_at_step and self._fire_once():
            os.kill(os.getpid(), signal.SIGSTOP)
        if step + 1 == self.args.raise_at_step and self._fire_once():
            raise InjectedFailure(f"rank {rank} failed at the start of step {step + 1}")

    def micro_batch_loss(self, step: int, micro: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        if step + 1 == self.args.poison_at_step:
            return loss * 1000.0
        return torch.full_like(loss, float("nan")) if step + 1 == self.nan_at_step else loss

    def shards_written(self, step: int, rank: int) -> None:
        if step == self.kill_rank1_at_save and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """Train with the faults of `argv` (default: the command line); the exit status."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, action="append")
    parser.add_argument("--local_rank", type=int, default=None)  # deepspeed launcher
    parser.add_argument("--nan-at-step", type=int)
    parser.add_argument("--sigterm-at-step", type=int)
    parser.add_argument("--kill-rank1-at-save", type=int)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--stop-at-step", type=int)
    parser.add_argument("--raise-at-step", type=int)
    parser.add_argument("--poison-at-step", type=int)
    parser.add_argument("--fault-rank", type=int, default=1)
    parser.add_argument("--once", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        ports = None
        if len(args.config) > 1:  # imported only here: ranks started over ssh may not find `tests`
            from tests.training.train_sequence import RunPorts

            ports = RunPorts(wait_s=RUN_WAIT_S)
        for run, config in enumerate(args.config):
            if ports is not None:  # a fresh rendezvous port for each run's process group
                ports.start(run)
            train(load_config(config, args.overrides), Faults(args))
    except NonFiniteLoss as e:  # as tools/train.py reports it
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_fast(main())
