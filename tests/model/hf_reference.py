"""Build the Hugging Face `LlamaForCausalLM` equivalent of a megatiny model (test-only helper)."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from megatiny.checkpoint.hf import config_to_hf
from megatiny.model import GPT, ModelConfig, ModelRuntime


def llama_config(config: ModelConfig, attn_implementation: str = "eager") -> LlamaConfig:
    """The LlamaConfig megatiny's converter writes for `config` (eos unset: generate() runs to length)."""
    hf = LlamaConfig(**{**config_to_hf(config, torch.float32), "eos_token_id": None})
    hf._attn_implementation = attn_implementation
    return hf


def hf_copy(model: GPT, attn_implementation: str = "eager") -> LlamaForCausalLM:
    """A fp32 LlamaForCausalLM holding exactly `model`'s weights, copied by name (strict)."""
    hf = LlamaForCausalLM(llama_config(model.config, attn_implementation)).float()
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf.eval()


def random_gpt(config: ModelConfig, seed: int = 0, runtime: ModelRuntime | None = None) -> GPT:
    """GPT with random weights, norms included (ones would hide a wrong norm weight mapping)."""
    torch.manual_seed(seed)
    model = GPT(config, runtime=runtime)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model
