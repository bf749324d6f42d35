"""Generate text from a trained model.

`python tools/generate.py ARGS` is `megatiny generate ARGS` (megatiny/cli/generate.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
import sys

from megatiny.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
