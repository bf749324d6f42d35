"""megatiny: pretraining of small Llama-family language models under DeepSpeed."""

__version__ = "0.1.0"
