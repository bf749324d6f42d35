"""GPT's parameter names, counts and numerics against transformers.LlamaForCausalLM."""
import pytest
import torch
from transformers import LlamaForCausalLM

from megatiny.model import GPT, ModelConfig, ModelRuntime, get_preset
from tests.model.hf_reference import hf_copy, llama_config, random_gpt

# Small configs exercising GQA (8 heads / 2 groups), MHA, MQA, tying and a non-default rope_theta.
CONFIGS = {
    "gqa": ModelConfig(vocab_size=97, hidden_size=64, ffn_hidden_size=96, num_layers=2,
                       num_attention_heads=8, num_query_groups=2, max_position_embeddings=64),
    "mha-tied": ModelConfig(vocab_size=50, hidden_size=48, ffn_hidden_size=80, num_layers=3,
                            num_attention_heads=4, num_query_groups=4, max_position_embeddings=32,
                            tie_word_embeddings=True, rope_theta=500.0, rms_norm_eps=1e-6),
    "mqa": ModelConfig(vocab_size=64, hidden_size=32, ffn_hidden_size=64, num_layers=2,
                       num_attention_heads=4, num_query_groups=1, max_position_embeddings=32),
}


def test_tinyllama_parameter_count_and_hf_names_on_meta_device():
    config = get_preset("tinyllama-1.1b")
    with torch.device("meta"):
        model = GPT(config)
        hf = LlamaForCausalLM(llama_config(config))
    assert model.num_parameters() == 1_100_048_384 == config.num_parameters()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert ours == theirs
    assert list(ours) == list(theirs)  # same order too, so exported files look like HF's


def test_init_std_and_scaled_output_projections():
    config = get_preset("nano-2m", init_std=0.05)
    torch.manual_seed(0)
    model = GPT(config)
    scaled = config.init_std / (2 * config.num_layers) ** 0.5
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(param == 1.0), name
            continue
        expected = scaled if name.endswith(("o_proj.weight", "down_proj.weight")) else config.init_std
        assert abs(param.float().std().item() - expected) < 0.1 * expected, name
        assert abs(param.float().mean().item()) < 0.1 * expected, name


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_logits_loss_and_grads_match_hf_llama(name, backend):
    config = CONFIGS[name]
    model = random_gpt(config, seed=1, runtime=ModelRuntime(attention_backend=backend))
    hf = hf_copy(model)
    torch.manual_seed(2)
    sample = torch.randint(0, config.vocab_size, (3, 25))
    inputs, labels = sample[:, :-1], sample[:, 1:]

    ours = model(inputs)
    theirs = hf(input_ids=inputs).logits
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    # HF shifts labels itself: with labels=inputs it scores positions 0..T-2 against inputs[1:],
    # which is our labels without the last column.
    mask = torch.ones_like(labels, dtype=torch.float32)
    mask[:, -1] = 0
    loss = model(inputs, labels=labels, loss_mask=mask)
    hf_loss = hf(input_ids=inputs, labels=inputs).loss
    torch.testing.assert_close(loss, hf_loss, atol=1e-6, rtol=1e-6)

    loss.backward()
    hf_loss.backward()
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, hf_grads[n], atol=1e-6, rtol=1e-4, msg=n)


def test_loss_counts_every_position_with_prescored_labels():
    """No internal shift: the loss is the mean over all T given (input, next-token) pairs."""
    config = CONFIGS["gqa"]
    model = random_gpt(config)
    sample = torch.randint(0, config.vocab_size, (2, 9))
    inputs, labels = sample[:, :-1], sample[:, 1:]
    logits = model(inputs)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size),
                                                 labels.reshape(-1))
    torch.testing.assert_close(model(inputs, labels=labels), expected, atol=1e-6, rtol=1e-6)


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    config = CONFIGS["gqa"]
    model = random_gpt(config)
    ids = torch.randint(0, config.vocab_size, (2, 20))
    changed = ids.clone()
    changed[:, 12] = (ids[:, 12] + 1) % config.vocab_size
    for backend in ("math", "sdpa"):
        model.model.runtime.attention_backend = backend
        a, b = model(ids), model(changed)
        torch.testing.assert_close(a[:, :12], b[:, :12], atol=0, rtol=0)
        assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_gives_identical_loss_and_grads(every):
    base = get_preset("tiny-test", num_layers=4)
    plain = random_gpt(base, seed=3)
    ckpt = random_gpt(base, seed=3, runtime=ModelRuntime(activation_checkpointing=every))
    sample = torch.randint(0, base.vocab_size, (2, 33))
    results = []
    for model in (plain, ckpt):
        loss = model(sample[:, :-1], labels=sample[:, 1:])
        loss.backward()
        results.append((loss, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-7, rtol=1e-6, msg=name)


def test_bf16_model_trains_and_matches_fp32_roughly():
    config = get_preset("tiny-test")
    model = random_gpt(config)
    sample = torch.randint(0, config.vocab_size, (2, 17))
    loss32 = model(sample[:, :-1], labels=sample[:, 1:])
    model16 = random_gpt(config).to(torch.bfloat16)
    loss16 = model16(sample[:, :-1], labels=sample[:, 1:])
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, atol=0.05, rtol=0.01)
    loss16.backward()
    assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all()
               for p in model16.parameters())


def test_bad_inputs_raise_clear_errors():
    model = GPT(get_preset("tiny-test"))
    ids = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="labels shape"):
        model(ids, labels=ids[:, :-1])
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        model(ids.float())
    with pytest.raises(ValueError, match="loss_mask given without labels"):
        model(ids, loss_mask=torch.ones(2, 8))
    with pytest.raises(ValueError, match="last_token_only"):
        model(ids, labels=ids, last_token_only=True)
    with pytest.raises(RuntimeError, match="flash-attn"):
        GPT(get_preset("tiny-test"), runtime=ModelRuntime(attention_backend="flash_attn"))


def test_hidden_states_and_next_token_log_probs_match_forward():
    model = random_gpt(CONFIGS["gqa"], seed=4).eval()
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids)  # [3, 10, 97]
        hidden = model.hidden_states(ids)
        rows, positions = torch.tensor([0, 0, 2, 1]), torch.tensor([9, 3, 0, 5])
        picked = model.next_token_log_probs(ids, rows, positions)
    assert hidden.shape == (3, 10, 64)
    torch.testing.assert_close(model.lm_head(hidden), logits)
    assert picked.shape == (4, 97) and picked.dtype == torch.float32
    torch.testing.assert_close(picked, torch.log_softmax(logits[rows, positions], dim=-1))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.hidden_states(torch.zeros(1, 65, dtype=torch.long))
