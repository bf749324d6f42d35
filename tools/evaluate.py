"""Evaluate a checkpoint: lm-eval task suites or perplexity.

`python tools/evaluate.py ARGS` is `megatiny evaluate ARGS` (megatiny/cli/evaluate.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
import sys

from megatiny.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
