"""Pretrain a megatiny model (plain python, `deepspeed tools/train.py ...`, mpirun).

`python tools/train.py ARGS` is `megatiny train ARGS` (megatiny/cli/train.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
from megatiny.cli.train import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
