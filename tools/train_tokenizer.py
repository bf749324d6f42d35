"""Train a Llama-style sentencepiece tokenizer.

`python tools/train_tokenizer.py ARGS` is `megatiny train-tokenizer ARGS`
(megatiny/cli/train_tokenizer.py); the tools/ path is kept for Megatron-style scripts.
"""
from megatiny.cli.train_tokenizer import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
