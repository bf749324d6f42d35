"""Merge several indexed datasets into one.

`python tools/merge_datasets.py ARGS` is `megatiny merge ARGS` (megatiny/cli/merge.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
from megatiny.cli.merge import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
