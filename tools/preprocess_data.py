"""Tokenize jsonl corpora into Megatron-format indexed datasets.

`python tools/preprocess_data.py ARGS` is `megatiny preprocess ARGS` (megatiny/cli/preprocess.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
import sys

from megatiny.cli.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
