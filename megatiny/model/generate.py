"""Autoregressive generation with a key/value cache: greedy, temperature, top-k and top-p sampling."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from megatiny.model.attention import KVCache
from megatiny.model.transformer import GPT

# stop(tokens Long[B, T + k]) -> Bool[B]: which rows are done after their k-th new token.
StopCallback = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | Sequence[int] | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             stop: StopCallback | None = None) -> torch.Tensor:
    """Extend each prompt by up to `max_new_tokens` tokens.

    input_ids Long[B, T] (equal-length prompts, no padding) -> Long[B, T + n], n <= max_new_tokens.
    temperature 0 is greedy (argmax); otherwise tokens are sampled from softmax(logits / temperature)
    restricted to the top_k most likely and/or the smallest set with probability >= top_p, with
    `generator` (on its device; the logits are moved there). A row is finished once it emits
    eos_token_id (one id, or any of a list such as Llama 3's stop tokens) or once `stop` (called
    after every step with all tokens so far) returns True for it; finished rows are padded with
    eos_token_id (the first, when a list) and generation ends early when
    every row is finished. With use_cache the prompt is processed once and each step feeds only
    the newest token (the cache keeps the kv groups' keys/values); without it every step re-runs
    the whole sequence.

    model: a megatiny `GPT`, or (with use_cache=False) any causal LM whose forward(input_ids)
    returns logits [B, T, V] or an object with `.logits`.
    """
    _check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    total = input_ids.shape[1] + max_new_tokens
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_positions is not None and total > max_positions:
        raise ValueError(f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"ModelConfig.max_position_embeddings ({max_positions})")
    cache = model.new_kv_cache(input_ids.shape[0], total) if use_cache else None
    stop_ids = None if eos_token_id is None else torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=input_ids.device)
    tokens = input_ids
    step_input = input_ids
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = _next_token_logits(model, step_input, cache)  # [B, V] fp32
        if temperature > 0 and generator is not None:
            logits = logits.to(generator.device)
        next_token = sample_next_token(logits, temperature, top_k, top_p, generator).to(input_ids.device)
        if stop_ids is not None:
            next_token = torch.where(finished, torch.full_like(next_token, int(stop_ids[0])), next_token)
            finished |= torch.isin(next_token, stop_ids)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if stop is not None:
            finished |= stop(tokens).to(finished.device)
        step_input = next_token[:, None] if use_cache else tokens
        if (eos_token_id is not None or stop is not None) and bool(finished.all()):
            break
    return tokens


def _next_token_logits(model: torch.nn.Module, step_input: torch.Tensor,
                       cache: KVCache | None) -> torch.Tensor:
    """fp32 logits [B, V] for the token after the last of Long[B, T] `step_input`."""
    if isinstance(model, GPT):
        return model(step_input, kv_cache=cache, last_token_only=True)[:, -1]
    output = model(step_input)
    return (output.logits if hasattr(output, "logits") else output)[:, -1].float()


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """logits [B, V] -> Long[B]: argmax when temperature is 0, else a filtered sample."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None,
                         top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
