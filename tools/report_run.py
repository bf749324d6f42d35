"""Summarize a finished training run.

`python tools/report_run.py ARGS` is `megatiny report ARGS` (megatiny/cli/report.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
from megatiny.cli.report import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
