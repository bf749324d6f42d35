"""Pretrain a megatiny model: `megatiny train --config RUN.yaml [key=value ...]`.

Launch with any of (`tools/train.py` is the same command as `megatiny train`):
    megatiny train --config examples/tiny_cpu.yaml                         # one process
    deepspeed --num_gpus 8 tools/train.py --config examples/tinyllama_1.1b.yaml
    deepspeed --num_gpus 8 --module megatiny train --config examples/tinyllama_1.1b.yaml
    deepspeed --hostfile hostfile --master_addr node1 tools/train.py --config ...
    mpirun -np 16 python tools/train.py --config ...
Overrides are dotted keys, e.g. `batch.micro_batch_size=4 checkpoint.resume=none`.
Megatron's document flags are accepted as spellings of the data options: `--reset-attention-mask`,
`--reset-position-ids` and `--eod-mask-loss` set `data.reset_attention_mask=true` etc.
See docs/CONFIG.md for every key.

Check a config without starting anything (one process, no process group, no DeepSpeed import):
    megatiny train --config examples/tinyllama_1.1b.yaml --dry-run --world-size 8
validates it as a real run on that many ranks would (WORLD_SIZE from a launcher wins; default:
tensor x pipeline x context), then prints the layout, precision, batch arithmetic, a per-rank
memory estimate and the DeepSpeed config; exit status 0, or 2 with the real run's error.
"""
from __future__ import annotations

import argparse
import sys

from megatiny.training.config import RunConfig, load_config

# Megatron-LM flag -> the run config key it sets to true
MEGATRON_FLAGS = {"--reset-attention-mask": "data.reset_attention_mask",
                  "--reset-position-ids": "data.reset_position_ids",
                  "--eod-mask-loss": "data.eod_mask_loss"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config file (YAML or JSON)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and print what it resolves to; start nothing")
    parser.add_argument("--world-size", type=int, default=None, metavar="N",
                        help="with --dry-run: the number of ranks to validate for (default: the "
                             "launcher's WORLD_SIZE, else tensor x pipeline x context)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    megatron = parser.add_argument_group("Megatron spellings of run config keys")
    for flag in MEGATRON_FLAGS:
        megatron.add_argument(flag, action="store_true", help=f"= {MEGATRON_FLAGS[flag]}=true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides with dotted keys")
    args = parser.parse_args(argv)
    flags = [f"{key}=true" for flag, key in MEGATRON_FLAGS.items()
             if getattr(args, flag.lstrip("-").replace("-", "_"))]
    try:
        run = load_config(args.config, [*flags, *args.overrides])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(run, args.world_size)
    return run_training(run)


def dry_run(run: RunConfig, world_size: int | None) -> int:
    """`--dry-run`: validate and describe the run (megatiny.training.dry_run); 0, or 2 on a bad config."""
    from megatiny.training.dry_run import dry_run_world_size, report

    try:
        print(report(run, dry_run_world_size(run, world_size)))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_training(run: RunConfig) -> int:
    """Train (every rank); 0, 2 on a bad config, 1 on a non-finite loss under nan_policy: stop."""
    from megatiny.training.loop import NonFiniteLoss, train  # DeepSpeed: imported only to train

    try:
        train(run)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
