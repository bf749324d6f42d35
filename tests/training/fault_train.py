"""`tools/train.py` with faults injected, for the crash and NaN tests (launched like tools/train.py):

    python tests/training/fault_train.py --config RUN.yaml [--nan-at-step N] [--sigterm-at-step N]
        [--kill-rank1-at-save N] [key=value ...]

Steps are 1-based, as logged: `--nan-at-step 2` makes every rank's losses of step 2 NaN,
`--sigterm-at-step 3` has rank 0 send itself SIGTERM during step 3, `--kill-rank1-at-save 16` has
rank 1 SIGKILL itself after writing its files of the step-16 checkpoint, before it is complete.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import torch

from megatiny.training.config import load_config
from megatiny.training.loop import NonFiniteLoss, TrainCallbacks, train


class Faults(TrainCallbacks):
    def __init__(self, nan_at_step: int | None, sigterm_at_step: int | None, kill_rank1_at_save: int | None):
        self.nan_at_step, self.sigterm_at_step = nan_at_step, sigterm_at_step
        self.kill_rank1_at_save = kill_rank1_at_save

    def step_started(self, step: int, rank: int) -> None:
        if step + 1 == self.sigterm_at_step and rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    def micro_batch_loss(self, step: int, micro: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        return torch.full_like(loss, float("nan")) if step + 1 == self.nan_at_step else loss

    def shards_written(self, step: int, rank: int) -> None:
        if step == self.kill_rank1_at_save and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--local_rank", type=int, default=None)  # deepspeed launcher
    parser.add_argument("--nan-at-step", type=int)
    parser.add_argument("--sigterm-at-step", type=int)
    parser.add_argument("--kill-rank1-at-save", type=int)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    run = load_config(args.config, args.overrides)
    try:
        train(run, Faults(args.nan_at_step, args.sigterm_at_step, args.kill_rank1_at_save))
    except NonFiniteLoss as e:  # as tools/train.py reports it
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
