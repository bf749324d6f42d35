"""Hugging Face Llama / Qwen2 / Mistral <-> megatiny: config translation and the weight-name table.

megatiny's `GPT.state_dict()` already uses `LlamaForCausalLM` names (shared by `Qwen2ForCausalLM`
and `MistralForCausalLM`; attention biases are `self_attn.{q,k,v,o}_proj.bias`) with q/k in HF's rotate-half
RoPE layout, so weights move between the two formats unchanged. What can still go wrong is a key
that is missing, extra, or has the wrong shape (a GQA model exported with k/v sized for every
query head, a transposed matrix, ...): `weight_table` lists every tensor a config implies, with
its shape, and `check_entries` refuses anything else, naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from megatiny.model.config import ROPE_SCALING_TYPES, ModelConfig, RopeScaling
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
    qkv_bias = [("self_attn.q_proj.bias", (q_rows,)), ("self_attn.k_proj.bias", (kv_rows,)),
                ("self_attn.v_proj.bias", (kv_rows,))] if config.qkv_bias else []
    output_bias = [("self_attn.o_proj.bias", (h,))] if config.output_bias else []
    per_layer = [
        ("input_layernorm.weight", (h,)),
        ("self_attn.q_proj.weight", (q_rows, h)),
        *qkv_bias[:1],
        ("self_attn.k_proj.weight", (kv_rows, h)),
        *qkv_bias[1:2],
        ("self_attn.v_proj.weight", (kv_rows, h)),
        *qkv_bias[2:],
        ("self_attn.o_proj.weight", (h, q_rows)),
        *output_bias,
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

@dataclass(frozen=True)
class Family:
    """A Hugging Face model family megatiny's model computes exactly."""

    name: str          # ModelConfig.family
    architecture: str  # config.json "architectures"
    model_type: str    # config.json "model_type"


FAMILIES = {f.name: f for f in (Family("llama", "LlamaForCausalLM", "llama"),
                                Family("qwen2", "Qwen2ForCausalLM", "qwen2"),
                                Family("mistral", "MistralForCausalLM", "mistral"))}
_BY_MODEL_TYPE = {f.model_type: f for f in FAMILIES.values()}

# Families people ask for that are not Llama-shaped: why each is refused.
REFUSED_MODEL_TYPES = {
    "olmo2": "OLMo-2 normalizes after attention and MLP (no input norm) and applies QK-norm over all heads",
    "gemma": "Gemma scales embeddings by sqrt(hidden), uses (1 + weight) RMSNorm and GeLU",
    "gemma2": "Gemma 2 adds logit soft-capping, extra norms and alternating local/global layers",
    "gemma3": "Gemma 3 adds QK-norm, extra norms and alternating local/global layers",
    "qwen3": "Qwen3 applies QK-norm (RMSNorm on each query and key head)",
    "phi3": "Phi-3 fuses qkv and gate/up and uses longrope / su scaling",
}

HF_ARCHITECTURE = FAMILIES["llama"].architecture  # (the default family's; kept for callers)
HF_MODEL_TYPE = FAMILIES["llama"].model_type


def config_to_hf(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The `config.json` of the family's own class (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
    `MistralForCausalLM`) equal to `config`, weights stored in `dtype`."""
    family = FAMILIES[config.family]
    dtype_name = DTYPE_NAMES[parse_dtype(dtype)]
    rope = _rope_parameters(config)
    out = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
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
        # transformers >= 5 reads rope_parameters, 4.x reads rope_theta and rope_scaling.
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": None if config.rope_scaling is None else  # (4.x form: theta stays outside)
        {k: v for k, v in rope.items() if k != "rope_theta"},
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }
    if config.family == "llama":
        out.update(attention_bias=config.qkv_bias, mlp_bias=False, pretraining_tp=1)
    elif config.family == "mistral":
        out["sliding_window"] = config.sliding_window
    else:  # qwen2: a layer slides when use_sliding_window and its index >= max_window_layers
        sliding = config.sliding_window is not None
        out.update(use_sliding_window=sliding, sliding_window=config.sliding_window,
                   max_window_layers=config.first_sliding_layer if sliding else config.num_layers,
                   layer_types=["sliding_attention" if config.layer_sliding_window(i) else "full_attention"
                                for i in range(config.num_layers)])
    return out


def _rope_parameters(config: ModelConfig) -> dict[str, Any]:
    scaling = config.rope_scaling
    if scaling is None:
        return {"rope_type": "default", "rope_theta": config.rope_theta}
    fields = {k: v for k, v in dataclasses.asdict(scaling).items() if k != "type" and v is not None}
    return {"rope_type": scaling.type, "rope_theta": config.rope_theta, **fields}


def generation_config(config: ModelConfig) -> dict[str, Any]:
    return {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "do_sample": False}


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """A ModelConfig for an HF Llama / Qwen2 / Mistral `config.json` dict; ValueError naming the
    field and value for anything megatiny's model cannot represent exactly (it would load, then
    produce different outputs)."""
    supported = ", ".join(f.architecture for f in FAMILIES.values())

    def fail(problem: str) -> ValueError:
        return ValueError(f"{source}: {problem}; megatiny computes Llama-family decoders (RoPE with "
                          f"optional llama3/linear scaling, RMSNorm, SwiGLU, GQA, optional q/k/v(/o) "
                          f"biases and sliding window): {supported}")

    family = _family(hf, fail)
    if hf.get("mlp_bias"):
        raise fail("mlp_bias is true")
    if hf.get("hidden_act", "silu") != "silu":
        raise fail(f"hidden_act is {hf['hidden_act']!r}, not 'silu'")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise fail(f"pretraining_tp is {hf['pretraining_tp']} (only 1 is supported)")
    rope_theta, rope_scaling = _rope(hf, fail)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads"):
        if name not in hf:
            raise fail(f"field {name!r} is missing")
    heads = hf["num_attention_heads"]
    groups = hf.get("num_key_value_heads") or heads
    eos = hf.get("eos_token_id")
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    window, first_sliding = _sliding_window(hf, family, fail)
    bias = bool(hf.get("attention_bias", False)) if family.name == "llama" else family.name == "qwen2"
    try:
        return ModelConfig(
            family=family.name,
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            ffn_hidden_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_attention_heads=heads, num_query_groups=groups,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)),
            bos_token_id=hf.get("bos_token_id"), eos_token_id=2 if eos is None else eos,
            kv_channels=hf.get("head_dim"), rope_scaling=rope_scaling,
            qkv_bias=bias, output_bias=bias and family.name == "llama",
            sliding_window=window, first_sliding_layer=first_sliding)
    except ValueError as e:
        raise fail(str(e)) from None


def _family(hf: dict[str, Any], fail) -> Family:
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    if model_type in REFUSED_MODEL_TYPES:
        raise fail(f"model_type {model_type!r} {architectures} is not supported: "
                   f"{REFUSED_MODEL_TYPES[model_type]}")
    family = _BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise fail(f"model_type {model_type!r} / architectures {architectures} is not a supported family "
                   f"(model_type one of {sorted(_BY_MODEL_TYPE)})")
    if architectures not in ([], [family.architecture]):
        raise fail(f"architectures {architectures} is not [{family.architecture!r}] (model_type "
                   f"{model_type!r}); only the causal LM head is supported")
    return family


def _sliding_window(hf: dict[str, Any], family: Family, fail) -> tuple[int | None, int]:
    """(window, first sliding layer) of Mistral (every layer) or Qwen2 (use_sliding_window and
    layer index >= max_window_layers; its `layer_types`, when written, must say the same)."""
    if family.name == "llama":
        return None, 0
    window = hf.get("sliding_window")
    if family.name == "mistral":
        return window, 0
    if not hf.get("use_sliding_window", False):
        window, first = None, 0
    else:
        first = hf.get("max_window_layers", 0)
    layers = hf.get("num_hidden_layers")
    written = hf.get("layer_types")
    if written is not None and isinstance(layers, int):
        expected = ["sliding_attention" if window is not None and i >= first else "full_attention"
                    for i in range(layers)]
        if list(written) != expected:
            raise fail(f"layer_types {written} differs from the rule use_sliding_window / "
                       f"max_window_layers ({expected}); per-layer patterns are not supported")
    return window, first


def _rope(hf: dict[str, Any], fail) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from transformers-5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    scaling = hf.get("rope_scaling") or {}
    params = hf.get("rope_parameters") or {}
    for name, values in (("rope_scaling", scaling), ("rope_parameters", params)):
        if not isinstance(values, dict) or any(isinstance(v, dict) for v in values.values()):
            raise fail(f"{name} {values} is not one RoPE setting for every layer")
        if values.get("partial_rotary_factor", 1.0) != 1.0:
            raise fail(f"{name}.partial_rotary_factor is {values['partial_rotary_factor']} (only 1.0)")
    merged = {**scaling, **params}
    for key in set(scaling) & set(params):
        if scaling[key] != params[key] and key not in ("type", "rope_type"):
            raise fail(f"rope_scaling.{key} {scaling[key]} disagrees with "
                       f"rope_parameters.{key} {params[key]}")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if "rope_theta" in hf and float(hf["rope_theta"]) != theta:
        raise fail(f"rope_theta {hf['rope_theta']} disagrees with rope_parameters {params}")
    kinds = {values.get("rope_type", values.get("type")) for values in (scaling, params) if values}
    kinds.discard(None)
    kinds = kinds or {"default"}
    if len(kinds) > 1:
        raise fail(f"rope_scaling {scaling} and rope_parameters {params} name different rope types")
    (kind,) = kinds
    if kind == "default":
        return theta, None
    field = "rope_parameters.rope_type" if params.get("rope_type") else "rope_scaling.rope_type"
    if kind not in ROPE_SCALING_TYPES:
        raise fail(f"{field} {kind!r} is not supported (supported: default, {', '.join(ROPE_SCALING_TYPES)})")
    keys = ("factor",) + (("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                          if kind == "llama3" else ())
    missing = [k for k in keys if k not in merged]
    if missing:
        raise fail(f"{field} {kind!r} without {missing}")
    return theta, RopeScaling(type=kind, **{k: merged[k] for k in keys})
