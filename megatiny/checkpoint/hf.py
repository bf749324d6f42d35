"""Hugging Face Llama <-> megatiny: config translation and the weight-name table.

megatiny's `GPT.state_dict()` already uses `LlamaForCausalLM` names with q/k in HF's rotate-half
RoPE layout, so weights move between the two formats unchanged. What can still go wrong is a key
that is missing, extra, or has the wrong shape (a GQA model exported with k/v sized for every
query head, a transposed matrix, ...): `weight_table` lists every tensor a config implies, with
its shape, and `check_entries` refuses anything else, naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from megatiny.model.config import ModelConfig
from megatiny.precision import DTYPE_NAMES, parse_dtype

HF_ARCHITECTURE = "LlamaForCausalLM"
HF_MODEL_TYPE = "llama"

# ---------------------------------------------------------------------------------------------
# Weight names: the one place that says which tensors exist, in both directions.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightEntry:
    """One tensor of the model: its megatiny name, its HF name, and its shape."""

    megatiny: str
    hf: str
    shape: tuple[int, ...]


def weight_table(config: ModelConfig) -> list[WeightEntry]:
    """Every stored tensor of a model with `config`, in HF's order.

    With tied embeddings `lm_head.weight` is the same tensor as `model.embed_tokens.weight` and is
    not stored (as `save_pretrained` does); loaders re-tie it.
    """
    h, f, v = config.hidden_size, config.ffn_hidden_size, config.vocab_size
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_query_groups * config.head_dim  # GQA: k/v have one head per group
    per_layer = [
        ("input_layernorm.weight", (h,)),
        ("self_attn.q_proj.weight", (q_rows, h)),
        ("self_attn.k_proj.weight", (kv_rows, h)),
        ("self_attn.v_proj.weight", (kv_rows, h)),
        ("self_attn.o_proj.weight", (h, q_rows)),
        ("post_attention_layernorm.weight", (h,)),
        ("mlp.gate_proj.weight", (f, h)),
        ("mlp.up_proj.weight", (f, h)),
        ("mlp.down_proj.weight", (h, f)),
    ]
    # GPT.state_dict() keys are HF names, so the megatiny and HF columns agree; they are kept
    # separate so a future rename on either side is a one-line change here.
    entries = [WeightEntry("model.embed_tokens.weight", "model.embed_tokens.weight", (v, h))]
    for i in range(config.num_layers):
        for suffix, shape in per_layer:
            name = f"model.layers.{i}.{suffix}"
            entries.append(WeightEntry(name, name, shape))
    entries.append(WeightEntry("model.norm.weight", "model.norm.weight", (h,)))
    if not config.tie_word_embeddings:
        entries.append(WeightEntry("lm_head.weight", "lm_head.weight", (v, h)))
    return entries


TIED_HEAD = "lm_head.weight"
TIED_TO = "model.embed_tokens.weight"


def check_entries(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                  source: str, what: str = "tensor") -> None:
    """Raise ValueError naming every missing/unexpected key and every shape mismatch."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k}: found {tuple(found[k])}, expected {tuple(expected[k])}"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing {what}(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected {what}(s) (no mapping for them): {_preview(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch: {_preview(wrong)}")
    if problems:
        raise ValueError(f"{source}: weights do not match the model config; " + "; ".join(problems))


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------
# Config translation
# ---------------------------------------------------------------------------------------------

def config_to_hf(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The `config.json` of a `LlamaForCausalLM` equal to `config`, weights stored in `dtype`."""
    dtype_name = DTYPE_NAMES[parse_dtype(dtype)]
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": HF_MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_query_groups,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.rms_norm_eps,
        # transformers >= 5 reads rope_parameters, 4.x reads rope_theta; both say the same.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


def generation_config(config: ModelConfig) -> dict[str, Any]:
    return {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "do_sample": False}


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """A ModelConfig for an HF Llama `config.json` dict; ValueError for anything megatiny's
    model cannot represent exactly (it would load, then produce different outputs)."""
    def fail(problem: str) -> ValueError:
        return ValueError(f"{source}: {problem}; megatiny models are plain Llama-2 decoders "
                          f"(RoPE without scaling, RMSNorm, SwiGLU, GQA, no biases)")

    architectures = hf.get("architectures") or []
    if hf.get("model_type") != HF_MODEL_TYPE or architectures not in ([], [HF_ARCHITECTURE]):
        raise fail(f"model_type {hf.get('model_type')!r} / architectures {architectures} is not "
                   f"a Llama causal LM ({HF_MODEL_TYPE!r} / [{HF_ARCHITECTURE!r}])")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            raise fail(f"{field} is true")
    if hf.get("hidden_act", "silu") != "silu":
        raise fail(f"hidden_act is {hf['hidden_act']!r}, not 'silu'")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise fail(f"pretraining_tp is {hf['pretraining_tp']} (only 1 is supported)")
    rope_theta = _rope_theta(hf, fail)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads"):
        if name not in hf:
            raise fail(f"field {name!r} is missing")
    heads = hf["num_attention_heads"]
    groups = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * heads != hf["hidden_size"]:
        raise fail(f"head_dim {head_dim} x num_attention_heads {heads} != hidden_size "
                   f"{hf['hidden_size']} (megatiny derives head_dim = hidden_size / heads)")
    bos, eos = hf.get("bos_token_id"), hf.get("eos_token_id")
    if isinstance(eos, list):
        if len(eos) != 1:
            raise fail(f"eos_token_id is a list {eos} (megatiny supports one EOS id)")
        eos = eos[0]
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            ffn_hidden_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_attention_heads=heads, num_query_groups=groups,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=float(rope_theta),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)),
            bos_token_id=1 if bos is None else int(bos), eos_token_id=2 if eos is None else int(eos))
    except ValueError as e:
        raise fail(str(e)) from None


def _rope_theta(hf: dict[str, Any], fail) -> float:
    """rope_theta from either transformers-5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    scaling = hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise fail(f"rope_scaling {scaling} is set")
    params = hf.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default":
        raise fail(f"rope_parameters {params} is not plain RoPE")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if "rope_theta" in hf and "rope_theta" in params and float(hf["rope_theta"]) != float(theta):
        raise fail(f"rope_theta {hf['rope_theta']} disagrees with rope_parameters {params}")
    return float(theta)
