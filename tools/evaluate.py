"""Evaluate a checkpoint: lm-eval task suites or perplexity.

`python tools/evaluate.py ARGS` is `megatiny evaluate ARGS` (megatiny/cli/evaluate.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
from megatiny.cli.evaluate import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
