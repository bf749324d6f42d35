"""Print what an indexed dataset holds.

`python tools/inspect_dataset.py ARGS` is `megatiny inspect ARGS` (megatiny/cli/inspect.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
from megatiny.cli.inspect import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
