"""A Llama-2-architecture decoder-only transformer, with Hugging Face parameter names.

GPT(config, parallel, runtime=...)        runtime: ModelRuntime (attention kernel, activation checkpointing)
  model.embed_tokens                      token embedding [V, h]
  model.layers[i]                         pre-norm block, i < num_layers
      input_layernorm -> self_attn        RMSNorm; q/k/v/o projections, RoPE, grouped-query attention
      post_attention_layernorm -> mlp     RMSNorm; SwiGLU: down(silu(gate(x)) * up(x))
  model.norm                              final RMSNorm
  lm_head                                 [V, h], fused with the loss when labels are given

Inference API (evaluation and generation use only these, never the submodules):
  forward(input_ids[, labels])            fp32 logits [B, T, V], or the fp32 mean loss
  hidden_states(input_ids)                final hidden states [B, T, h]
  next_token_log_probs(ids, rows, pos)    fp32 log-probabilities [N, V] at N chosen positions
  new_kv_cache(batch, length)             a cache for `megatiny.model.generate.generate`

`state_dict()` keys are exactly `transformers.LlamaForCausalLM`'s and q/k use HF's rotate-half RoPE
layout, so exporting to Hugging Face is a rename-free copy.

Model parallelism is a runtime argument, not part of the architecture: `GPT(config, parallel)`
with a `megatiny.parallel.state.ParallelState` (default `ParallelState.single_process()`: the
whole model in this process) uses Megatron tensor-parallel layers when
`parallel.tensor` > 1 (optionally with sequence parallelism) and DeepSpeed-Ulysses attention when
`parallel.context` > 1 (then every rank's inputs are its slice of the sequence). Parameter names
stay the same; tensor-parallel ranks hold shards: the layers are `megatiny.parallel.tensor_parallel`'s,
given this module's initialization (`linear_init`, `embedding_init`, `normal_init`), and the
vocabulary-parallel loss is `megatiny.model.loss`'s. The pipeline partition is
`megatiny.model.pipeline`.

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
from megatiny.model.compile import compile_blocks
from megatiny.model.config import ModelConfig, ModelRuntime
from megatiny.model.kernels import apply_rotary, rms_norm, rope_cos_sin
from megatiny.model.loss import linear_cross_entropy, vocab_parallel_linear_cross_entropy
from megatiny.model.parallel_checks import check_context_parallel, check_tensor_parallel
from megatiny.parallel import collectives
from megatiny.parallel import context_parallel as cp
from megatiny.parallel import tensor_parallel as tp
from megatiny.parallel.state import ParallelState


class Linear(nn.Linear):
    """Linear layer with weight ~ normal(0, std) (drawn after nn.Linear's own reset: `linear_init`
    repeats both for the tensor-parallel layers); optional bias, zero-initialized (as Hugging Face)."""

    def __init__(self, in_features: int, out_features: int, std: float, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        nn.init.normal_(self.weight, mean=0.0, std=std)
        if bias:
            nn.init.zeros_(self.bias)


class Embedding(nn.Embedding):
    """Token embedding with weight ~ normal(0, std) (drawn after nn.Embedding's own reset:
    `embedding_init` repeats both for the vocabulary-parallel embedding)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float):
        super().__init__(num_embeddings, embedding_dim)
        nn.init.normal_(self.weight, mean=0.0, std=std)


def linear_init(std: float, bias: bool = False) -> tp.InitMethod:
    """Fills a full [out, in] weight with `Linear`'s draws: nn.Linear's kaiming-uniform reset
    (and, with `bias`, its uniform draw of the bias, which `Linear` then zeroes: drawn here only to
    keep the random stream the one-rank model's), then normal(0, std); the tensor-parallel layers
    keep their shard of it."""
    def init(weight: torch.Tensor) -> torch.Tensor:
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if bias:
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(torch.empty(weight.shape[0]), -bound, bound)
        return nn.init.normal_(weight, mean=0.0, std=std)
    return init


def embedding_init(std: float) -> tp.InitMethod:
    """Fills a full [V, h] weight with `Embedding`'s draws: nn.Embedding's normal(0, 1) reset,
    then normal(0, std)."""
    def init(weight: torch.Tensor) -> torch.Tensor:
        nn.init.normal_(weight)
        return nn.init.normal_(weight, mean=0.0, std=std)
    return init


def normal_init(std: float) -> tp.InitMethod:
    """Fills a full weight with normal(0, std) (the LM head's only draw)."""
    return lambda weight: nn.init.normal_(weight, mean=0.0, std=std)


class RMSNorm(nn.Module):
    """RMSNorm; with `sequence_parallel_group` each rank normalizes only its sequence shard, so the
    weight's gradient is summed over that group."""

    def __init__(self, hidden_size: int, eps: float, sequence_parallel_group=None):
        super().__init__()
        self.eps = eps
        self.sequence_parallel_group = sequence_parallel_group
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.sequence_parallel_group is not None:
            weight = collectives.copy_to_group(weight, self.sequence_parallel_group)
        return rms_norm(x, weight, self.eps)


def _sequence_parallel_group(parallel: ParallelState):
    return parallel.tensor_group if parallel.sequence_parallel else None


def _column_linear(in_features: int, out_features: int, std: float, parallel: ParallelState,
                   bias: bool = False) -> nn.Module:
    if parallel.layout.tensor == 1:
        return Linear(in_features, out_features, std, bias)
    return tp.ColumnParallelLinear(in_features, out_features, linear_init(std, bias), parallel.tensor_group,
                                   bias)


def _row_linear(in_features: int, out_features: int, std: float, parallel: ParallelState,
                bias: bool = False) -> nn.Module:
    if parallel.layout.tensor == 1:
        return Linear(in_features, out_features, std, bias)
    return tp.RowParallelLinear(in_features, out_features, linear_init(std, bias), parallel.tensor_group,
                                parallel.sequence_parallel, bias)


def _sequence_shard(x: torch.Tensor, parallel: ParallelState) -> tuple[torch.Tensor, ...]:
    """(x,) under sequence parallelism, else (): the extra argument of column-parallel layers
    that lets them keep only the shard for backward."""
    return (x,) if parallel.sequence_parallel else ()


def _enter_tensor_parallel(x: torch.Tensor, parallel: ParallelState) -> torch.Tensor:
    if parallel.layout.tensor == 1:
        return x
    return tp.enter_tensor_parallel(x, parallel.tensor_group, parallel.sequence_parallel)


def _output_std(config: ModelConfig) -> float:
    """Megatron's scaled init for projections that write into the residual stream."""
    return config.init_std / math.sqrt(2.0 * config.num_layers)


class Attention(nn.Module):
    """Grouped-query attention; under tensor parallelism this rank's H/T heads and G/T groups.

    q/k/v carry biases with `qkv_bias` (Qwen2), o_proj with `output_bias`; the layer attends within
    `config.layer_sliding_window(layer_index)` positions when that is set (Mistral, Qwen2)."""

    def __init__(self, config: ModelConfig, layer_index: int, parallel: ParallelState):
        super().__init__()
        h, d, heads, groups = (config.hidden_size, config.head_dim, config.num_attention_heads,
                               config.num_query_groups)
        self.layer_index = layer_index
        self.parallel = parallel
        t = parallel.layout.tensor
        self.num_heads, self.num_groups, self.head_dim = heads // t, groups // t, d
        self.window = config.layer_sliding_window(layer_index)
        bias = config.qkv_bias
        self.q_proj = _column_linear(h, heads * d, config.init_std, parallel, bias)
        self.k_proj = _column_linear(h, groups * d, config.init_std, parallel, bias)
        self.v_proj = _column_linear(h, groups * d, config.init_std, parallel, bias)
        self.o_proj = _row_linear(heads * d, h, _output_std(config), parallel, config.output_bias)
        self.ulysses = cp.UlyssesAttention(causal_attention, parallel.context_group) \
            if parallel.layout.context > 1 else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str,
                kv_cache: KVCache | None = None, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, h], cos/sin [T, head_dim] or [B, T, head_dim] (see `rope_cos_sin`) -> [B, T, h].

        Under sequence parallelism x and the output are this rank's [B, T/tensor, h] shard.
        document_ids: Long[B, S] of the whole sequences (also under context parallelism), or None."""
        shard = _sequence_shard(x, self.parallel)
        x = _enter_tensor_parallel(x, self.parallel)
        b, t, _ = x.shape
        q = self.q_proj(x, *shard).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, *shard).view(b, t, self.num_groups, self.head_dim)
        v = self.v_proj(x, *shard).view(b, t, self.num_groups, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
        if self.ulysses is not None:  # whole sequences for H/C heads: the window applies as is
            out = self.ulysses(q, k, v, backend, self.window, document_ids)
        else:
            out = causal_attention(q, k, v, backend, self.window, document_ids)  # [B, T, H, D]
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, parallel: ParallelState):
        super().__init__()
        h, f = config.hidden_size, config.ffn_hidden_size
        self.parallel = parallel
        self.gate_proj = _column_linear(h, f, config.init_std, parallel)
        self.up_proj = _column_linear(h, f, config.init_std, parallel)
        self.down_proj = _row_linear(f, h, _output_std(config), parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shard = _sequence_shard(x, self.parallel)
        x = _enter_tensor_parallel(x, self.parallel)
        return self.down_proj(F.silu(self.gate_proj(x, *shard)) * self.up_proj(x, *shard))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, config: ModelConfig, layer_index: int, parallel: ParallelState):
        super().__init__()
        # Registration order = HF's state_dict order.
        self.self_attn = Attention(config, layer_index, parallel)
        self.mlp = MLP(config, parallel)
        sp_group = _sequence_parallel_group(parallel)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, sp_group)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, sp_group)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str,
                kv_cache: KVCache | None = None, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, backend, kv_cache, document_ids)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, blocks and final norm (HF's `LlamaModel`): token ids -> final hidden states."""

    def __init__(self, config: ModelConfig, parallel: ParallelState, runtime: ModelRuntime | None = None):
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.runtime = runtime if runtime is not None else ModelRuntime()
        self.embed_tokens = token_embedding(config, parallel)
        self.layers = nn.ModuleList(Block(config, i, parallel) for i in range(config.num_layers))
        if self.runtime.compile:
            compile_blocks(self.layers, self.runtime.compile_backend)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, _sequence_parallel_group(parallel))

    def forward(self, input_ids: torch.Tensor, kv_cache: KVCache | None = None,
                position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids Long[B, T] -> hidden [B, T, h]; with a cache, positions continue after it.

        Sequence parallel: hidden is this rank's [B, T/tensor, h] shard. Context parallel:
        input_ids is this rank's slice of the sequences, at positions context_rank x T onwards.
        position_ids Long[B, T] (the same slice as input_ids): RoPE positions instead of those;
        document_ids Long[B, S] (whole sequences): attention kept inside documents."""
        cfg = self.config
        x = self.embed_tokens(input_ids)
        if kv_cache is not None:
            start = kv_cache.length
        else:
            start = self.parallel.context_rank * input_ids.shape[1]
        if position_ids is not None:
            cos, sin = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, x.dtype, cfg.rope_scaling)
        else:
            cos, sin = rotary_tables(cfg, start, input_ids.shape[1], x)
        backend = resolve_backend(self.runtime.attention_backend, x.device, x.dtype)
        every = self.runtime.activation_checkpointing
        recompute = every > 0 and kv_cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute and i % every == 0:
                x = checkpoint(layer, x, cos, sin, backend, None, document_ids, use_reentrant=False)
            else:
                x = layer(x, cos, sin, backend, kv_cache, document_ids)
        if kv_cache is not None:
            kv_cache.advance(input_ids.shape[1])
        return self.norm(x)


def token_embedding(config: ModelConfig, parallel: ParallelState) -> nn.Module:
    """The token embedding: vocabulary-parallel under tensor parallelism."""
    if parallel.layout.tensor == 1:
        return Embedding(config.vocab_size, config.hidden_size, config.init_std)
    return tp.VocabParallelEmbedding(config.vocab_size, config.hidden_size, embedding_init(config.init_std),
                                     parallel.tensor_group, parallel.sequence_parallel)


def rotary_tables(config: ModelConfig, start: int, length: int, like: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE cos/sin [length, head_dim] for positions start.. in the dtype and device of `like`."""
    positions = torch.arange(start, start + length, device=like.device)
    return rope_cos_sin(positions, config.head_dim, config.rope_theta, like.dtype, config.rope_scaling)


class LMHead(nn.Module):
    """Output projection [V, h]; given labels it returns the chunked, fused cross-entropy loss."""

    def __init__(self, config: ModelConfig, parallel: ParallelState,
                 tied_weight: nn.Parameter | None = None):
        super().__init__()
        self.parallel = parallel
        if tied_weight is not None:
            self.weight = tied_weight
        elif parallel.layout.tensor > 1:  # this rank's vocabulary rows
            self.weight = tp.sharded_parameter((config.vocab_size, config.hidden_size),
                                               normal_init(config.init_std), 0, parallel.tensor_group)
        else:
            self.weight = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))
            nn.init.normal_(self.weight, mean=0.0, std=config.init_std)

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., h] -> fp32 logits [..., V]; given labels (shape [...]) the fp32 mean loss.

        Tensor parallel: full logits are gathered from the vocabulary shards; the loss never
        forms them. Context parallel: the loss is the mean over the whole sequences."""
        parallel = self.parallel
        tensor_parallel = parallel.layout.tensor > 1
        if labels is None:
            logits = F.linear(_enter_tensor_parallel(hidden, parallel), self.weight).float()
            return collectives.gather_last_dim(logits, parallel.tensor_group) if tensor_parallel \
                else logits
        context_group = parallel.context_group if parallel.layout.context > 1 else None
        if tensor_parallel:
            if not parallel.sequence_parallel:  # (SP: the loss gathers the shards itself)
                hidden = tp.enter_tensor_parallel(hidden, parallel.tensor_group, False)
            loss = vocab_parallel_linear_cross_entropy(hidden, self.weight, labels,
                                                       parallel.tensor_group, loss_mask,
                                                       count_group=context_group,
                                                       sequence_parallel=parallel.sequence_parallel)
        else:
            flat_mask = loss_mask.reshape(-1) if loss_mask is not None else None
            loss = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.weight,
                                        labels.reshape(-1), flat_mask, count_group=context_group)
        return loss if context_group is None else cp.sum_loss_over_context(loss, context_group)


class GPT(nn.Module):
    """Decoder-only language model. See the module docstring for the layout."""

    def __init__(self, config: ModelConfig, parallel: ParallelState | None = None, *,
                 runtime: ModelRuntime | None = None):
        super().__init__()
        runtime = runtime if runtime is not None else ModelRuntime()
        check_installed(runtime.attention_backend)  # fail at construction, not at the first forward
        parallel = parallel if parallel is not None else ParallelState.single_process()
        check_tensor_parallel(config, parallel.layout)  # (a run's config validation did too)
        check_context_parallel(config, parallel.layout)
        self.config = config
        self.parallel = parallel
        self.model = Decoder(config, parallel, runtime)
        tied = self.model.embed_tokens.weight if config.tie_word_embeddings else None
        self.lm_head = LMHead(config, parallel, tied_weight=tied)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, *, kv_cache: KVCache | None = None,
                last_token_only: bool = False, position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits or loss.

        input_ids Long[B, T] (context parallel: this rank's slice, see
        `megatiny.parallel.context_parallel.split_for_context`). Without labels: fp32 logits
        [B, T, V] ([B, 1, V] with last_token_only). With labels Long[B, T] (already shifted:
        labels[:, t] is the token after input_ids[:, t]; -100 ignored) and optional loss_mask
        [B, T] (1 counts, 0 ignored): the fp32 scalar mean loss over counted tokens.
        kv_cache: see `megatiny.model.generate`.
        Packed documents (`megatiny.data.document_mask`): position_ids Long[B, T] (the same slice
        as input_ids) replace the RoPE positions; document_ids Long[B, S] of the WHOLE sequences
        (context parallel too) keep attention inside each document. Not with kv_cache.
        """
        self._check_inputs(input_ids, labels, loss_mask, kv_cache, last_token_only)
        self._check_document_inputs(input_ids, kv_cache, position_ids, document_ids)
        hidden = self.model(input_ids, kv_cache, position_ids, document_ids)
        if last_token_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden, labels, loss_mask)

    def hidden_states(self, input_ids: torch.Tensor, *, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states (after the last RMSNorm, before the output projection).

        input_ids Long[B, T] -> [B, T, hidden_size] in the model's dtype (sequence or context
        parallel: this rank's part of the sequence). With kv_cache the positions continue after the
        cached ones and the cache is extended (see `megatiny.model.generate`).
        """
        self._check_inputs(input_ids, None, None, kv_cache, False)
        return self.model(input_ids, kv_cache)

    def next_token_log_probs(self, input_ids: torch.Tensor, rows: torch.Tensor,
                             positions: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the token that follows chosen positions.

        input_ids Long[B, T]; rows and positions Long[N] pick the N positions (rows[i], positions[i]).
        Returns fp32 [N, vocab_size]: row i is log softmax of the logits at input_ids[rows[i],
        positions[i]], i.e. the distribution of the token after it. The output projection runs only
        at those N positions, which for a small model with a large vocabulary is most of the work
        a full `forward` would do. On one rank or under tensor parallelism alone (the positions
        index whole sequences).
        """
        parallel = self.parallel
        if parallel.sequence_parallel or parallel.layout.context > 1:
            raise ValueError("next_token_log_probs needs whole sequences on every rank: not with "
                             "parallel.sequence_parallel or parallel.context > 1")
        hidden = self.hidden_states(input_ids)
        return F.log_softmax(self.lm_head(hidden[rows, positions]), dim=-1)

    def _check_inputs(self, input_ids, labels, loss_mask, kv_cache, last_token_only) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor [batch, seq], got "
                             f"{input_ids.dtype} {tuple(input_ids.shape)}")
        self._check_parallel_inputs(input_ids, kv_cache, last_token_only)
        end = input_ids.shape[1] * self.parallel.layout.context \
            + (kv_cache.length if kv_cache is not None else 0)
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

    def _check_document_inputs(self, input_ids, kv_cache, position_ids, document_ids) -> None:
        if position_ids is None and document_ids is None:
            return
        if kv_cache is not None:
            raise ValueError("position_ids / document_ids are for whole packed sequences, not with kv_cache")
        if position_ids is not None and position_ids.shape != input_ids.shape:
            raise ValueError(f"position_ids shape {tuple(position_ids.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")
        whole = (input_ids.shape[0], input_ids.shape[1] * self.parallel.layout.context)
        if document_ids is not None and tuple(document_ids.shape) != whole:
            raise ValueError(f"document_ids must cover the whole sequences {whole}, got "
                             f"{tuple(document_ids.shape)}")

    def _check_parallel_inputs(self, input_ids, kv_cache, last_token_only) -> None:
        parallel = self.parallel
        split = parallel.sequence_parallel or parallel.layout.context > 1
        if split and (kv_cache is not None or last_token_only):
            raise ValueError("kv_cache / last_token_only (generation) are not supported with "
                             "parallel.sequence_parallel or parallel.context > 1; generate with "
                             "tensor parallelism alone or on one rank")
        if parallel.sequence_parallel and input_ids.shape[1] % parallel.layout.tensor:
            raise ValueError(f"with parallel.sequence_parallel the sequence length "
                             f"({input_ids.shape[1]}) must be divisible by parallel.tensor "
                             f"({parallel.layout.tensor})")

    def num_parameters(self) -> int:
        """Number of distinct parameters on this rank (full sizes, also when ZeRO-3 has
        partitioned them; a tensor-parallel rank counts its shards)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.parameters())

    def new_kv_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KV cache for this model, in the dtype and device of its weights."""
        weight = self.model.embed_tokens.weight
        cfg = self.config
        return KVCache(cfg.num_layers, batch_size, max_length,
                       cfg.num_query_groups // self.parallel.layout.tensor, cfg.head_dim,
                       weight.dtype, weight.device)
