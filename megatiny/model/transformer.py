"""A Llama-2-architecture decoder-only transformer, with Hugging Face parameter names.

GPT(config, runtime)                      runtime: ModelRuntime (attention kernel, activation checkpointing)
  model.embed_tokens                      token embedding [V, h]
  model.layers[i]                         pre-norm block, i < num_layers
      input_layernorm -> self_attn        RMSNorm; q/k/v/o projections, RoPE, grouped-query attention
      post_attention_layernorm -> mlp     RMSNorm; SwiGLU: down(silu(gate(x)) * up(x))
  model.norm                              final RMSNorm
  lm_head                                 [V, h], fused with the loss when labels are given

`state_dict()` keys are exactly `transformers.LlamaForCausalLM`'s and q/k use HF's rotate-half RoPE
layout, so exporting to Hugging Face is a rename-free copy.

ZeRO-3 friendly: weights are initialized inside each leaf module's own __init__ (where
`deepspeed.zero.Init` still sees full tensors), RoPE tables are computed on the fly (no buffers),
and every parameter is used only inside the forward of the module that owns it (DeepSpeed gathers
a module's parameters around its forward).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megatiny.model.attention import KVCache, causal_attention, check_installed, resolve_backend
from megatiny.model.config import ModelConfig, ModelRuntime
from megatiny.model.kernels import apply_rotary, rms_norm, rope_cos_sin
from megatiny.model.loss import linear_cross_entropy


class Linear(nn.Linear):
    """Bias-free linear layer with weight ~ normal(0, std)."""

    def __init__(self, in_features: int, out_features: int, std: float):
        super().__init__(in_features, out_features, bias=False)
        nn.init.normal_(self.weight, mean=0.0, std=std)


class Embedding(nn.Embedding):
    """Token embedding with weight ~ normal(0, std)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float):
        super().__init__(num_embeddings, embedding_dim)
        nn.init.normal_(self.weight, mean=0.0, std=std)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def _output_std(config: ModelConfig) -> float:
    """Megatron's scaled init for projections that write into the residual stream."""
    return config.init_std / math.sqrt(2.0 * config.num_layers)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.layer_index = layer_index
        self.num_heads, self.num_groups, self.head_dim = (config.num_attention_heads,
                                                          config.num_query_groups, d)
        self.q_proj = Linear(h, self.num_heads * d, config.init_std)
        self.k_proj = Linear(h, self.num_groups * d, config.init_std)
        self.v_proj = Linear(h, self.num_groups * d, config.init_std)
        self.o_proj = Linear(self.num_heads * d, h, _output_std(config))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, h], cos/sin [T, head_dim] (see `rope_cos_sin`) -> [B, T, h]."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_groups, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_groups, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
        out = causal_attention(q, k, v, backend)  # [B, T, H, D]
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h, f = config.hidden_size, config.ffn_hidden_size
        self.gate_proj = Linear(h, f, config.init_std)
        self.up_proj = Linear(h, f, config.init_std)
        self.down_proj = Linear(f, h, _output_std(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        # Registration order = HF's state_dict order.
        self.self_attn = Attention(config, layer_index)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, backend, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, blocks and final norm (HF's `LlamaModel`): token ids -> final hidden states."""

    def __init__(self, config: ModelConfig, runtime: ModelRuntime | None = None):
        super().__init__()
        self.config = config
        self.runtime = runtime if runtime is not None else ModelRuntime()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, config.init_std)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """input_ids Long[B, T] -> hidden [B, T, h]; with a cache, positions continue after it."""
        cfg = self.config
        x = self.embed_tokens(input_ids)
        start = kv_cache.length if kv_cache is not None else 0
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, x.dtype)
        backend = resolve_backend(self.runtime.attention_backend, x.device, x.dtype)
        every = self.runtime.activation_checkpointing
        recompute = every > 0 and kv_cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute and i % every == 0:
                x = checkpoint(layer, x, cos, sin, backend, use_reentrant=False)
            else:
                x = layer(x, cos, sin, backend, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(input_ids.shape[1])
        return self.norm(x)


class LMHead(nn.Module):
    """Output projection [V, h]; given labels it returns the chunked, fused cross-entropy loss."""

    def __init__(self, config: ModelConfig, tied_weight: nn.Parameter | None = None):
        super().__init__()
        if tied_weight is not None:
            self.weight = tied_weight
        else:
            self.weight = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))
            nn.init.normal_(self.weight, mean=0.0, std=config.init_std)

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., h] -> fp32 logits [..., V]; given labels (shape [...]) the fp32 mean loss."""
        if labels is None:
            return F.linear(hidden, self.weight).float()
        flat_mask = loss_mask.reshape(-1) if loss_mask is not None else None
        return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.weight,
                                    labels.reshape(-1), flat_mask)


class GPT(nn.Module):
    """Decoder-only language model. See the module docstring for the layout."""

    def __init__(self, config: ModelConfig, runtime: ModelRuntime | None = None):
        super().__init__()
        runtime = runtime if runtime is not None else ModelRuntime()
        check_installed(runtime.attention_backend)  # fail at construction, not at the first forward
        self.config = config
        self.model = Decoder(config, runtime)
        tied = self.model.embed_tokens.weight if config.tie_word_embeddings else None
        self.lm_head = LMHead(config, tied_weight=tied)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, *, kv_cache: KVCache | None = None,
                last_token_only: bool = False) -> torch.Tensor:
        """Logits or loss.

        input_ids Long[B, T]. Without labels: fp32 logits [B, T, V] ([B, 1, V] with
        last_token_only). With labels Long[B, T] (already shifted: labels[:, t] is the token after
        input_ids[:, t]; -100 ignored) and optional loss_mask [B, T] (1 counts, 0 ignored): the fp32
        scalar mean loss over counted tokens. kv_cache: see `megatiny.model.generate`.
        """
        self._check_inputs(input_ids, labels, loss_mask, kv_cache, last_token_only)
        hidden = self.model(input_ids, kv_cache)
        if last_token_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden, labels, loss_mask)

    def _check_inputs(self, input_ids, labels, loss_mask, kv_cache, last_token_only) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor [batch, seq], got "
                             f"{input_ids.dtype} {tuple(input_ids.shape)}")
        end = input_ids.shape[1] + (kv_cache.length if kv_cache is not None else 0)
        if end > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {end} positions exceeds ModelConfig.max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        for name, tensor in (("labels", labels), ("loss_mask", loss_mask)):
            if tensor is not None and tensor.shape != input_ids.shape:
                raise ValueError(f"{name} shape {tuple(tensor.shape)} must equal input_ids shape "
                                 f"{tuple(input_ids.shape)}")
        if loss_mask is not None and labels is None:
            raise ValueError("loss_mask given without labels")
        if last_token_only and labels is not None:
            raise ValueError("last_token_only is for inference; it cannot be combined with labels")

    def num_parameters(self) -> int:
        """Number of distinct parameters (full sizes, also when ZeRO-3 has partitioned them)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.parameters())

    def new_kv_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KV cache for this model, in the dtype and device of its weights."""
        weight = self.model.embed_tokens.weight
        cfg = self.config
        return KVCache(cfg.num_layers, batch_size, max_length, cfg.num_query_groups, cfg.head_dim,
                       weight.dtype, weight.device)
