"""Convert checkpoints to and from Hugging Face Llama.

`python tools/convert_checkpoint.py ARGS` is `megatiny convert ARGS` (megatiny/cli/convert.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
import sys

from megatiny.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
