"""`load_model(path)`: a ready-to-run megatiny GPT from any checkpoint format megatiny reads."""
from __future__ import annotations

import os
from typing import Any

import torch

from megatiny.checkpoint import hf
from megatiny.checkpoint.sources import open_weights
from megatiny.model import GPT, ModelRuntime
from megatiny.model.compile import prepare_compile


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", *, tag: str | None = None,
               weights: str = "auto", runtime: ModelRuntime | None = None) -> tuple[GPT, dict[str, Any]]:
    """Build a GPT in eval mode from `path` and return (model, metadata).

    `path`: a DeepSpeed checkpoint root (its `latest` tag, or `tag`), a tag directory, a megatiny
    weights directory or a Hugging Face Llama directory. `metadata` is the `megatiny.json` content
    (`model` is the ModelConfig; for an HF dir, `tokenizer` is the dir itself if it holds
    tokenizer files). `weights`: see `megatiny.checkpoint.sources.open_weights`. `runtime`: how the
    model computes (attention backend, compiled blocks; default: `ModelRuntime()`).
    """
    if runtime is not None and runtime.compile:
        prepare_compile()
    source = open_weights(path, tag=tag, weights=weights)
    with torch.device("meta"):
        model = GPT(source.config, runtime=runtime)
    state = {}
    for name in source.names():
        state[name] = source.tensor(name).to(dtype=dtype, device=device)
    if source.config.tie_word_embeddings:
        state[hf.TIED_HEAD] = state[hf.TIED_TO]
    model.load_state_dict(state, strict=True, assign=True)
    _check_tied(model, source.config.tie_word_embeddings)
    model.eval()
    return model, source.metadata


def _check_tied(model: GPT, tied: bool) -> None:
    head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    if tied and head is not embed:  # load_state_dict(assign=True) can break the tie: restore it
        model.lm_head.weight = embed
