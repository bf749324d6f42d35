"""Pretrain a megatiny model (plain python, `deepspeed tools/train.py ...`, mpirun).

`python tools/train.py ARGS` is `megatiny train ARGS` (megatiny/cli/train.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
import sys

from megatiny.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
