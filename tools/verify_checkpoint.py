"""Check checkpoints against their manifests.

`python tools/verify_checkpoint.py verify PATH` is `megatiny checkpoint verify PATH`
(megatiny/cli/checkpoint.py); the tools/ path is kept for scripts that take a script path.
"""
from megatiny.cli.checkpoint import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
