"""KV-cache generation equals cache-free generation and Hugging Face's greedy generate."""
import pytest
import torch

from megatiny.model import ModelConfig
from megatiny.model.generate import generate, sample_next_token
from tests.model.hf_reference import hf_copy, random_gpt

CONFIG = ModelConfig(vocab_size=89, hidden_size=64, ffn_hidden_size=96, num_layers=2,
                     num_attention_heads=8, num_query_groups=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def model():
    # Larger weights than the default init make the greedy path depend on the whole context.
    return random_gpt(CONFIG.replace(init_std=0.2), seed=5).eval()


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_greedy_with_cache_equals_without_cache(model, backend):
    previous, model.model.runtime.attention_backend = model.model.runtime.attention_backend, backend
    try:
        prompt = torch.randint(0, CONFIG.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
        cached = generate(model, prompt, max_new_tokens=20)
        uncached = generate(model, prompt, max_new_tokens=20, use_cache=False)
    finally:
        model.model.runtime.attention_backend = previous
    assert cached.shape == (3, 27) and torch.equal(cached[:, :7], prompt)
    assert torch.equal(cached, uncached)


def test_greedy_matches_hf_generate(model):
    hf = hf_copy(model, attn_implementation="sdpa")
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    ours = generate(model, prompt, max_new_tokens=25)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=25,
                         do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    assert len(set(ours[0, 5:].tolist())) > 3  # not a degenerate constant continuation


def test_eos_pads_finished_rows_and_stops(model):
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 4), generator=torch.Generator().manual_seed(2))
    free = generate(model, prompt, max_new_tokens=12)
    eos = int(free[0, 6])  # row 0 emits this token at its third new position
    out = generate(model, prompt, max_new_tokens=12, eos_token_id=eos)
    assert torch.equal(out[0, :7], free[0, :7])
    assert torch.all(out[0, 7:] == eos)
    # Generation stops right after the step in which the last row first emits eos (or at 16).
    ends = []
    for row in range(2):
        hits = (free[row, 4:] == eos).nonzero()
        ends.append(4 + int(hits[0]) + 1 if len(hits) else 16)
    assert out.shape[1] == max(ends)
    assert torch.equal(out[1, :ends[1]], free[1, :ends[1]])


def test_stop_callback_ends_rows_and_sees_every_token(model):
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 4), generator=torch.Generator().manual_seed(2))
    free = generate(model, prompt, max_new_tokens=12)
    seen = []

    def stop(tokens):  # row 0 after 3 new tokens, row 1 after 5
        seen.append(tokens.clone())
        new = tokens.shape[1] - prompt.shape[1]
        return torch.tensor([new >= 3, new >= 5])

    pad = CONFIG.vocab_size - 1
    out = generate(model, prompt, max_new_tokens=12, eos_token_id=pad, stop=stop)
    assert out.shape == (2, 9)  # ends after the step in which the last row stops
    assert [t.shape[1] for t in seen] == list(range(5, 10))
    assert torch.equal(seen[-1], out)
    assert torch.equal(out[1], free[1, :9]) and torch.equal(out[0, :7], free[0, :7])
    assert torch.all(out[0, 7:] == pad)  # a stopped row is padded like a row that emitted EOS


def test_model_without_cache_api_generates_like_gpt(model):
    class LogitsOnly(torch.nn.Module):  # any causal LM returning [B, T, V] logits
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids):
            return self.inner(input_ids)

    prompt = torch.randint(0, CONFIG.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    assert torch.equal(generate(LogitsOnly(), prompt, 10, use_cache=False), generate(model, prompt, 10))


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_token(logits[:2]), torch.tensor([4, 4]))
    top2 = sample_next_token(logits, temperature=1.0, top_k=2, generator=gen)
    assert set(top2.tolist()) == {3, 4}
    # softmax probs ~ [.012, .032, .087, .237, .644]: top_p 0.7 keeps {4, 3}, 0.5 keeps {4}
    assert set(sample_next_token(logits, 1.0, top_p=0.7, generator=gen).tolist()) == {3, 4}
    assert set(sample_next_token(logits, 1.0, top_p=0.5, generator=gen).tolist()) == {4}
    hot = sample_next_token(logits, temperature=100.0, generator=gen)
    assert set(hot.tolist()) == {0, 1, 2, 3, 4}


def test_sampled_generation_is_reproducible_with_a_generator(model):
    prompt = torch.zeros(2, 3, dtype=torch.long)
    runs = [generate(model, prompt, 10, temperature=0.8, top_k=20, top_p=0.9,
                     generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_invalid_arguments(model):
    prompt = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, prompt, max_new_tokens=62)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompt, 2, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, prompt, 2, temperature=1.0, top_k=0)


def test_a_list_of_eos_ids_stops_at_any_of_them(model):
    prompt = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(4))
    free = generate(model, prompt, max_new_tokens=8)
    new = free[0, 5:].tolist()
    stop = new[3]
    first = new.index(stop)  # the first time that token appears
    stopped = generate(model, prompt, max_new_tokens=8, eos_token_id=[10_000, stop])
    assert stopped[0, 5:].tolist() == new[:first + 1]
