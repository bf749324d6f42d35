"""Build the Hugging Face `LlamaForCausalLM` equivalent of a megatiny model (test-only helper)."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from megatiny.model import GPT, ModelConfig


def llama_config(config: ModelConfig, attn_implementation: str = "eager") -> LlamaConfig:
    hf = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.ffn_hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_query_groups,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings,
        attention_bias=False, mlp_bias=False, bos_token_id=config.bos_token_id, eos_token_id=None,
        pad_token_id=None)
    hf._attn_implementation = attn_implementation
    return hf


def hf_copy(model: GPT, attn_implementation: str = "eager") -> LlamaForCausalLM:
    """A fp32 LlamaForCausalLM holding exactly `model`'s weights, copied by name (strict)."""
    hf = LlamaForCausalLM(llama_config(model.config, attn_implementation)).float()
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf.eval()


def random_gpt(config: ModelConfig, seed: int = 0) -> GPT:
    """GPT with random weights, norms included (ones would hide a wrong norm weight mapping)."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model
