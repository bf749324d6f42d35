"""Train a Llama-style sentencepiece tokenizer.

`python tools/train_tokenizer.py ARGS` is `megatiny train-tokenizer ARGS`
(megatiny/cli/train_tokenizer.py); the tools/ path is kept for Megatron-style scripts.
"""
import sys

from megatiny.cli.train_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
