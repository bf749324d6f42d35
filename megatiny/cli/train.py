"""Pretrain a megatiny model: `megatiny train --config RUN.yaml [key=value ...]`.

Launch with any of (`tools/train.py` is the same command as `megatiny train`):
    megatiny train --config examples/tiny_cpu.yaml                         # one process
    deepspeed --num_gpus 8 tools/train.py --config examples/tinyllama_1.1b.yaml
    deepspeed --num_gpus 8 --module megatiny train --config examples/tinyllama_1.1b.yaml
    deepspeed --hostfile hostfile --master_addr node1 tools/train.py --config ...
    mpirun -np 16 python tools/train.py --config ...
Overrides are dotted keys, e.g. `batch.micro_batch_size=4 checkpoint.resume=none`.
See docs/CONFIG.md for every key.
"""
from __future__ import annotations

import argparse
import sys

from megatiny.training.config import load_config
from megatiny.training.loop import NonFiniteLoss, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config file (YAML or JSON)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key=value overrides with dotted keys")
    args = parser.parse_args(argv)
    try:
        run = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
