"""Tokenize jsonl corpora into Megatron-format indexed datasets.

`python tools/preprocess_data.py ARGS` is `megatiny preprocess ARGS` (megatiny/cli/preprocess.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
from megatiny.cli.preprocess import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
