"""Model configuration: a typed dataclass and named presets.

`ModelConfig` describes a Llama-family decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention)
and the variations of today's small open models: an explicit head size (`kv_channels`), RoPE
frequency scaling (`rope_scaling`: Llama 3's `llama3`, or `linear`), attention projection biases
(Qwen2: q/k/v; Llama's `attention_bias`: q/k/v/o) and sliding-window attention (Mistral: every
layer; Qwen2: layers from `first_sliding_layer` on). Field names follow Megatron
(`num_query_groups`, `ffn_hidden_size`, `kv_channels`); the Hugging Face translation lives in
`megatiny.checkpoint.hf`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTENTION_BACKENDS = ("auto", "flash_attn", "sdpa", "math")
# torch.compile backends of the compiled blocks: Inductor generates kernels; aot_eager traces the
# same forward and backward graphs (Dynamo, AOTAutograd) and runs them with eager kernels.
COMPILE_BACKENDS = ("inductor", "aot_eager")
# Hugging Face model families megatiny imports and exports (`megatiny.checkpoint.hf.FAMILIES`).
FAMILIES = ("llama", "qwen2", "mistral")
ROPE_SCALING_TYPES = ("llama3", "linear")
# transformers' other rope types: their frequencies (and for some, attention scale) differ in ways
# megatiny does not compute, so a model using them is refused rather than silently mis-rotated.
REFUSED_ROPE_SCALING_TYPES = ("dynamic", "yarn", "longrope")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, as Hugging Face's `rope_scaling` / `rope_parameters`.

    `linear`: every inverse frequency divided by `factor`.
    `llama3` (Llama 3.1/3.2): with d = head_dim, inv_i = theta^(-2i/d) and wavelength
    w_i = 2 pi / inv_i: w_i < original / high_freq_factor keeps inv_i; w_i > original /
    low_freq_factor uses inv_i / factor; in between, with s = (original / w_i - low) / (high - low),
    inv = (1 - s) inv_i / factor + s inv_i. Unlike `dynamic`, neither depends on sequence length.
    The maths is `megatiny.model.kernels.scaled_inverse_frequencies`.
    """

    type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.type in REFUSED_ROPE_SCALING_TYPES:
            raise ValueError(f"ModelConfig.rope_scaling.type {self.type!r} is not supported "
                             f"(supported: {ROPE_SCALING_TYPES})")
        if self.type not in ROPE_SCALING_TYPES:
            raise ValueError(f"ModelConfig.rope_scaling.type: unknown RoPE scaling {self.type!r} "
                             f"(supported: {ROPE_SCALING_TYPES})")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or self.factor <= 0:
            raise ValueError(f"ModelConfig.rope_scaling.factor must be > 0, got {self.factor!r}")
        llama3_fields = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if self.type == "llama3":
            missing = [name for name in llama3_fields if getattr(self, name) is None]
            if missing:
                raise ValueError(f"ModelConfig.rope_scaling: type llama3 needs {missing}")
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ValueError("ModelConfig.rope_scaling: llama3 needs 0 < low_freq_factor < "
                                 f"high_freq_factor, got {self.low_freq_factor}, {self.high_freq_factor}")
        else:
            given = [name for name in llama3_fields if getattr(self, name) is not None]
            if given:
                raise ValueError(f"ModelConfig.rope_scaling: {given} only apply to type llama3")

    @classmethod
    def from_value(cls, value: RopeScaling | dict[str, Any] | None) -> RopeScaling | None:
        """A RopeScaling from itself, None or a mapping of its fields (a megatiny.json / YAML)."""
        if value is None or isinstance(value, RopeScaling):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"ModelConfig.rope_scaling must be a mapping or null, got {value!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"ModelConfig.rope_scaling: unknown field(s) {unknown}; known: {sorted(known)}")
        if "type" not in value:
            raise ValueError("ModelConfig.rope_scaling.type is required (llama3 or linear)")
        return cls(**value)


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
    bos_token_id: int | None = 1
    """None: the model has no BOS token (Qwen2)"""
    eos_token_id: int | list[int] = 2
    """one id or a list (every id in it stops generation; the first is the one a tokenizer export names)"""
    family: str = "llama"
    """the Hugging Face family it exports as: llama (LlamaForCausalLM), qwen2, mistral"""
    kv_channels: int | None = None
    """per-head size when it is not hidden_size / num_attention_heads (Llama-3.2-3B, Qwen); None:
    derived (an explicit value equal to the derived one is stored as None)"""
    rope_scaling: RopeScaling | None = None
    """RoPE frequency scaling (`RopeScaling`; a mapping with `type` llama3 or linear); None: plain RoPE"""
    qkv_bias: bool = False
    """biases on q_proj, k_proj, v_proj (Qwen2; Llama's attention_bias)"""
    output_bias: bool = False
    """bias on o_proj (Llama's attention_bias, not Qwen2)"""
    sliding_window: int | None = None
    """attention sees the last `sliding_window` positions (itself included); None: full causal"""
    first_sliding_layer: int = 0
    """layers with index >= this use the sliding window (Mistral 0; Qwen2's max_window_layers)"""

    def __post_init__(self) -> None:
        self.rope_scaling = RopeScaling.from_value(self.rope_scaling)
        if isinstance(self.eos_token_id, tuple):
            self.eos_token_id = list(self.eos_token_id)
        if self.kv_channels is not None and self.kv_channels * self.num_attention_heads == self.hidden_size:
            self.kv_channels = None
        self._check_fields()

    def _check_fields(self) -> None:
        for name in ("vocab_size", "hidden_size", "ffn_hidden_size", "num_layers",
                     "num_attention_heads", "num_query_groups", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("kv_channels", "sliding_window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"ModelConfig.{name} must be a positive integer or null, got {value!r}")
        first = self.first_sliding_layer
        if not isinstance(first, int) or isinstance(first, bool) or first < 0:
            raise ValueError(f"ModelConfig.first_sliding_layer must be an integer >= 0, got {first!r}")
        for name in ("qkv_bias", "output_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {getattr(self, name)!r}")
        self._check_token_ids()
        self._check_family()
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads}), or set kv_channels (the head size)")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"ModelConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_query_groups ({self.num_query_groups})")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig: head_dim ({self.head_dim}) must be even for RoPE")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0 or self.init_std <= 0:
            raise ValueError("ModelConfig.rms_norm_eps, rope_theta and init_std must be > 0")

    def _check_family(self) -> None:
        """Each family's own form of the variable features (what its HF class can express)."""
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if self.family == "llama" and self.qkv_bias != self.output_bias:
            raise ValueError("ModelConfig: family llama has biases on all of q/k/v/o (attention_bias) or "
                             f"none; got qkv_bias={self.qkv_bias}, output_bias={self.output_bias}")
        if self.family == "qwen2" and (not self.qkv_bias or self.output_bias):
            raise ValueError("ModelConfig: family qwen2 has biases on q/k/v and none on o: set "
                             "qkv_bias: true, output_bias: false")
        if self.family == "mistral" and (self.qkv_bias or self.output_bias):
            raise ValueError("ModelConfig: family mistral has no attention biases (qkv_bias, output_bias)")
        if self.family == "llama" and self.sliding_window is not None:
            raise ValueError("ModelConfig.sliding_window is not part of family llama; use family mistral "
                             "(every layer) or qwen2 (layers from first_sliding_layer)")
        if self.family != "qwen2" and self.first_sliding_layer:
            raise ValueError(f"ModelConfig.first_sliding_layer is qwen2's (max_window_layers); family "
                             f"{self.family} slides every layer or none")
        if self.first_sliding_layer and self.sliding_window is None:
            raise ValueError("ModelConfig.first_sliding_layer is set but sliding_window is null")

    def _check_token_ids(self) -> None:
        bos, eos = self.bos_token_id, self.eos_token_id
        if bos is not None and (not isinstance(bos, int) or isinstance(bos, bool) or bos < 0):
            raise ValueError(f"ModelConfig.bos_token_id must be a token id >= 0 or null, got {bos!r}")
        ids = eos if isinstance(eos, list) else [eos]
        if not ids or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
            raise ValueError(f"ModelConfig.eos_token_id must be a token id >= 0 or a non-empty list "
                             f"of them, got {eos!r}")

    @property
    def head_dim(self) -> int:
        """Per-head size: kv_channels, else hidden_size / num_attention_heads."""
        if self.kv_channels is not None:
            return self.kv_channels
        return self.hidden_size // self.num_attention_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every end-of-sequence id (one or more)."""
        eos = self.eos_token_id
        return tuple(eos) if isinstance(eos, list) else (eos,)

    @property
    def document_eos_token_id(self) -> int:
        """The one EOS id where a single id is needed (a tokenizer's eos_token): the first."""
        return self.eos_token_ids[0]

    def layer_sliding_window(self, layer_index: int) -> int | None:
        """The attention window of layer `layer_index` (positions it sees, itself included), or None."""
        if self.sliding_window is None or layer_index < self.first_sliding_layer:
            return None
        return self.sliding_window

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of the model this config builds."""
        h, f, layers = self.hidden_size, self.ffn_hidden_size, self.num_layers
        q = self.num_attention_heads * self.head_dim
        kv = self.num_query_groups * self.head_dim
        biases = (q + 2 * kv if self.qkv_bias else 0) + (h if self.output_bias else 0)
        per_layer = h * q + 2 * h * kv + q * h + biases + 3 * h * f + 2 * h
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
        if "head_dim" in unknown:
            raise ValueError("ModelConfig: the head size field is `kv_channels` (head_dim is derived "
                             "from it, or from hidden_size / num_attention_heads)")
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
    `compile`: torch.compile each transformer block (`megatiny.model.compile`).
    `compile_backend`: the backend of those compiles, inductor | aot_eager (COMPILE_BACKENDS).
    """

    attention_backend: str = "auto"
    activation_checkpointing: int = 0
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, "
                             f"got {self.attention_backend!r}")
        every = self.activation_checkpointing
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError("activation_checkpointing must be an integer >= 0 "
                             f"(0 none, 1 every block, k every k-th block), got {every!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}")
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile_backend must be one of {COMPILE_BACKENDS}, "
                             f"got {self.compile_backend!r}")


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(ModelRuntime))
# The fields of the variations beyond Llama 2, whose defaults are the plain Llama 2 decoder: a
# model section with `preset: null` written before they existed stays complete without them.
FAMILY_FIELDS = ("family", "kv_channels", "rope_scaling", "qkv_bias", "output_bias", "sliding_window",
                 "first_sliding_layer")


def architecture_differences(found: ModelConfig, expected: ModelConfig) -> list[str]:
    """`field: found != expected` for every ModelConfig field where the two differ."""
    return [f"{f.name}: {getattr(found, f.name)!r} != {getattr(expected, f.name)!r}"
            for f in dataclasses.fields(ModelConfig) if getattr(found, f.name) != getattr(expected, f.name)]


# Llama 3.1 / 3.2's RoPE scaling (their config.json "rope_scaling").
_LLAMA3_SCALING = RopeScaling(type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)

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
    # Today's small open models, shaped as their published Hugging Face config.json (parameter
    # counts, tied embeddings counted once, are tested against the published figures).
    "llama-3.2-1b": ModelConfig(vocab_size=128256, hidden_size=2048, ffn_hidden_size=8192, num_layers=16,
                                num_attention_heads=32, num_query_groups=8, max_position_embeddings=131072,
                                rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING, tie_word_embeddings=True,
                                bos_token_id=128000, eos_token_id=128001),
    "llama-3.2-3b": ModelConfig(vocab_size=128256, hidden_size=3072, ffn_hidden_size=8192, num_layers=28,
                                num_attention_heads=24, num_query_groups=8, kv_channels=128,
                                max_position_embeddings=131072, rope_theta=500000.0,
                                rope_scaling=_LLAMA3_SCALING, tie_word_embeddings=True,
                                bos_token_id=128000, eos_token_id=128001),
    # (its published initializer_range is 1 / sqrt(576), not 0.02)
    "smollm2-135m": ModelConfig(vocab_size=49152, hidden_size=576, ffn_hidden_size=1536, num_layers=30,
                                num_attention_heads=9, num_query_groups=3, max_position_embeddings=8192,
                                rope_theta=100000.0, tie_word_embeddings=True, init_std=0.041666666666666664,
                                bos_token_id=0, eos_token_id=0),
    "smollm2-360m": ModelConfig(vocab_size=49152, hidden_size=960, ffn_hidden_size=2560, num_layers=32,
                                num_attention_heads=15, num_query_groups=5, max_position_embeddings=8192,
                                rope_theta=100000.0, tie_word_embeddings=True,
                                bos_token_id=0, eos_token_id=0),
    "smollm2-1.7b": ModelConfig(vocab_size=49152, hidden_size=2048, ffn_hidden_size=8192, num_layers=24,
                                num_attention_heads=32, num_query_groups=32, max_position_embeddings=8192,
                                rope_theta=130000.0, tie_word_embeddings=True,
                                bos_token_id=0, eos_token_id=0),
    "qwen2.5-0.5b": ModelConfig(family="qwen2", vocab_size=151936, hidden_size=896, ffn_hidden_size=4864,
                                num_layers=24, num_attention_heads=14, num_query_groups=2,
                                max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                qkv_bias=True, tie_word_embeddings=True, bos_token_id=151643,
                                eos_token_id=151643),
    "qwen2.5-1.5b": ModelConfig(family="qwen2", vocab_size=151936, hidden_size=1536, ffn_hidden_size=8960,
                                num_layers=28, num_attention_heads=12, num_query_groups=2,
                                max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                qkv_bias=True, tie_word_embeddings=True, bos_token_id=151643,
                                eos_token_id=151643),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A copy of preset `name` with `overrides` applied (validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
