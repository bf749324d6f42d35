"""Model configuration: a typed dataclass and named presets.

`ModelConfig` describes a Llama-2-architecture decoder (RoPE, RMSNorm, SwiGLU, grouped-query
attention). Field names follow Megatron (`num_query_groups`, `ffn_hidden_size`); `to_hf_dict`
and `from_hf_dict` live in `megatiny.checkpoint.hf`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTENTION_BACKENDS = ("auto", "flash_attn", "sdpa", "math")


@dataclass
class ModelConfig:
    """Shape and numerics of a megatiny GPT model: everything that determines its weights.

    How the model is computed (attention kernel, activation checkpointing) is a `ModelRuntime`,
    so two configs describe the same architecture exactly when they are equal.
    """

    vocab_size: int = 32000
    hidden_size: int = 2048
    ffn_hidden_size: int = 5632
    num_layers: int = 22
    num_attention_heads: int = 32
    num_query_groups: int = 4
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    init_std: float = 0.02
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "ffn_hidden_size", "num_layers",
                     "num_attention_heads", "num_query_groups", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"ModelConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_query_groups ({self.num_query_groups})")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig: head_dim ({self.head_dim}) must be even for RoPE")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0 or self.init_std <= 0:
            raise ValueError("ModelConfig.rms_norm_eps, rope_theta and init_std must be > 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of the model this config builds."""
        h, f, layers = self.hidden_size, self.ffn_hidden_size, self.num_layers
        kv = self.num_query_groups * self.head_dim
        per_layer = h * h + 2 * h * kv + h * h + 3 * h * f + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        total = layers * per_layer + h + embeddings
        return total if include_embeddings else total - embeddings

    def flops_per_token(self, seq_length: int) -> float:
        """Training FLOPs per token (forward + backward), torchtitan/TinyLlama convention:
        6 x (params - input embedding params) + 12 x layers x heads x head_dim x seq_length.

        Attention is not halved for causality. The LM head is a matmul, so it counts; with tied
        embeddings the one shared matrix is that matmul and nothing is subtracted.
        """
        input_embedding = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return (6 * (self.num_parameters() - input_embedding)
                + 12 * self.num_layers * self.num_attention_heads * self.head_dim * seq_length)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        moved = sorted(set(unknown) & set(RUNTIME_FIELDS))
        if moved:
            raise ValueError(f"ModelConfig: {moved} are not architecture fields; they are runtime choices "
                             f"(ModelRuntime; `runtime.{moved[0]}` in a run config)")
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class ModelRuntime:
    """How a GPT computes, without changing its weights (so not part of `ModelConfig`).

    `attention_backend`: auto | flash_attn | sdpa | math (see `megatiny.model.attention`).
    `activation_checkpointing`: 0 = none, 1 = every block, k = every k-th block.
    """

    attention_backend: str = "auto"
    activation_checkpointing: int = 0

    def __post_init__(self) -> None:
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, "
                             f"got {self.attention_backend!r}")
        every = self.activation_checkpointing
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError("activation_checkpointing must be an integer >= 0 "
                             f"(0 none, 1 every block, k every k-th block), got {every!r}")


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(ModelRuntime))


PRESETS: dict[str, ModelConfig] = {
    # Test-sized models (CPU, seconds per step).
    "tiny-test": ModelConfig(vocab_size=512, hidden_size=64, ffn_hidden_size=176, num_layers=2,
                             num_attention_heads=8, num_query_groups=2,
                             max_position_embeddings=128),
    "nano-2m": ModelConfig(vocab_size=2048, hidden_size=128, ffn_hidden_size=352, num_layers=4,
                           num_attention_heads=8, num_query_groups=2,
                           max_position_embeddings=256),
    # Scaling-run sizes between the toys and TinyLlama.
    "micro-20m": ModelConfig(vocab_size=32000, hidden_size=256, ffn_hidden_size=704,
                             num_layers=6, num_attention_heads=8, num_query_groups=2,
                             max_position_embeddings=2048),
    "mini-120m": ModelConfig(vocab_size=32000, hidden_size=768, ffn_hidden_size=2048,
                             num_layers=12, num_attention_heads=12, num_query_groups=4,
                             max_position_embeddings=2048),
    "small-460m": ModelConfig(vocab_size=32000, hidden_size=1536, ffn_hidden_size=4096,
                              num_layers=16, num_attention_heads=24, num_query_groups=4,
                              max_position_embeddings=2048),
    # The reference recipe: exactly 1,100,048,384 parameters.
    "tinyllama-1.1b": ModelConfig(),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A copy of preset `name` with `overrides` applied (validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
