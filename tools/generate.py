"""Generate text from a trained model.

`python tools/generate.py ARGS` is `megatiny generate ARGS` (megatiny/cli/generate.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
from megatiny.cli.generate import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
