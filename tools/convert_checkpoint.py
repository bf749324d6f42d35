"""Convert checkpoints to and from Hugging Face Llama.

`python tools/convert_checkpoint.py ARGS` is `megatiny convert ARGS` (megatiny/cli/convert.py); the tools/
path is kept for Megatron-style scripts and launchers that take a script path.
"""
from megatiny.cli.convert import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
