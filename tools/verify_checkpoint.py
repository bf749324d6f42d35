"""Check checkpoints against their manifests.

`python tools/verify_checkpoint.py verify PATH` is `megatiny checkpoint verify PATH`
(megatiny/cli/checkpoint.py); the tools/ path is kept for scripts that take a script path.
"""
import sys

from megatiny.cli.checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
