"""The `megatiny` lm-eval model against direct computations with the same GPT (real lm-eval)."""
from __future__ import annotations

import math

import lm_eval
import pytest
import torch
import torch.nn.functional as F

from megatiny.eval.harness import task_manager
from megatiny.eval.lm_eval_adapter import MegatinyLM
from megatiny.model.generate import generate
from tests.eval.conftest import DATA_DIR, instances

PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("Question: What is the capital of France?\nAnswer:", " Madrid"),
    ("Question: What do bees make?\nAnswer: ", "honey"),   # trailing space moves to the continuation
    ("", "The sky is blue on a clear day."),                # empty context: conditioned on BOS
    ("In Python, the keyword", " def defines a function, and the keyword for starts a loop"),
]


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | BOS + context), tokens split as encode(ctx + cont) after encode(ctx)."""
    bos = tokenizer.bos_id
    if context:
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        context_ids = [bos, *tokenizer.encode(stripped)]
        whole = [bos, *tokenizer.encode(stripped + continuation)]
    else:
        context_ids, whole = [bos], [bos, *tokenizer.encode(continuation)]
    target = whole[len(context_ids):]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]]))[0]
    logprobs = F.log_softmax(logits.float(), dim=-1)[len(context_ids) - 1:]
    picked = logprobs.gather(1, torch.tensor(target)[:, None])
    greedy = logprobs.argmax(-1).tolist() == target
    return float(picked.sum()), greedy


class _LogitsOnly(torch.nn.Module):
    """A causal LM without a KV cache (forces the adapter's recompute generation path)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, input_ids):
        return self.inner(input_ids)


@pytest.fixture(scope="module")
def lm(trained_model, tokenizer):
    return MegatinyLM(model=trained_model, tokenizer=tokenizer, batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def manager():
    return task_manager(["megatiny_local_mc", "megatiny_test_gen", "megatiny_test_rolling"], [str(DATA_DIR)])


@pytest.mark.parametrize("wrapped", [False, True], ids=["gpt", "logits-only-module"])
def test_loglikelihood_equals_direct_computation(trained_model, tokenizer, wrapped):
    model = _LogitsOnly(trained_model) if wrapped else trained_model
    lm = MegatinyLM(model=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    results = lm.loglikelihood(instances("loglikelihood", PAIRS), disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(PAIRS, results):
        expected, expected_greedy = direct_loglikelihood(trained_model, tokenizer, context, continuation)
        assert logprob == pytest.approx(expected, abs=1e-4), (context, continuation)
        assert greedy == expected_greedy
    # The trained model prefers the right answer.
    assert results[0][0] > results[1][0]


def test_batch_size_does_not_change_results(trained_model, tokenizer, manager):
    """Whole local MC task through lm-eval with batch 1 and batch 8: same per-item scores."""
    runs = {}
    for batch_size in (1, 8):
        lm = MegatinyLM(model=trained_model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
        runs[batch_size] = lm_eval.simple_evaluate(model=lm, tasks=["megatiny_local_mc"],
                                                   task_manager=manager, log_samples=True, bootstrap_iters=0)
    one, eight = (runs[b]["samples"]["megatiny_local_mc"] for b in (1, 8))
    assert len(one) == len(eight) == 112
    for a, b in zip(one, eight):
        assert a["doc_id"] == b["doc_id"]
        for (lp_a, greedy_a), (lp_b, greedy_b) in zip((r[0] for r in a["resps"]), (r[0] for r in b["resps"])):
            assert lp_a == pytest.approx(lp_b, abs=1e-4)
            assert greedy_a == greedy_b
    for metric in ("acc,none", "acc_norm,none"):
        assert runs[1]["results"]["megatiny_local_mc"][metric] == \
            runs[8]["results"]["megatiny_local_mc"][metric]
    # A model trained on these very facts does far better than chance (25%).
    assert runs[8]["results"]["megatiny_local_mc"]["acc,none"] > 0.4


def _model_loss_total(model, tokens: list[int], window: int) -> float:
    """-(summed log-likelihood) via the model's own fused loss, in Megatron-style samples of
    window + 1 tokens overlapping by one (valid when len(tokens) - 1 is a multiple of window)."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, window):
            sample = torch.tensor([tokens[start:start + window + 1]])
            total += float(model(sample[:, :-1], labels=sample[:, 1:])) * (sample.shape[1] - 1)
    return total


def test_loglikelihood_rolling_equals_model_loss(trained_model, tokenizer):
    """Rolling log-likelihood = -(the model's own mean loss x tokens), in one window or several."""
    short = "In Python, the keyword def defines a function."
    lm = MegatinyLM(model=trained_model, tokenizer=tokenizer, device="cpu")
    [rolling] = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(short,)]), disable_tqdm=True)
    tokens = [tokenizer.bos_id, *tokenizer.encode(short)]
    assert rolling == pytest.approx(-_model_loss_total(trained_model, tokens, len(tokens) - 1), rel=1e-5)

    # Longer than the context: with a window dividing the token count, lm-eval's rolling windows
    # are exactly consecutive training samples (window + 1 tokens, one token overlap).
    for repeats in range(8, 40):
        text = " ".join([short] * repeats)
        ids = tokenizer.encode(text)
        windows = [w for w in range(12, 41) if len(ids) % w == 0 and len(ids) // w >= 3]
        if windows:
            break
    lm = MegatinyLM(model=trained_model, tokenizer=tokenizer, batch_size=3, device="cpu",
                    max_length=windows[0])
    [rolling] = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    expected = -_model_loss_total(trained_model, [tokenizer.bos_id, *ids], windows[0])
    assert rolling == pytest.approx(expected, rel=1e-5)


def test_rolling_task_through_lm_eval(lm, trained_model, tokenizer, manager):
    """A loglikelihood_rolling task run by lm-eval reports perplexities from the same numbers."""
    out = lm_eval.simple_evaluate(model=lm, tasks=["megatiny_test_rolling"], task_manager=manager,
                                  log_samples=True, bootstrap_iters=0)
    samples = out["samples"]["megatiny_test_rolling"]
    texts = [s["doc"]["text"] for s in samples]
    direct = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]),
                                      disable_tqdm=True)
    assert any(len(tokenizer.encode(t)) > lm.max_length for t in texts)  # exercises several windows
    for sample, value in zip(samples, direct):
        assert sample["resps"][0][0] == pytest.approx(value, abs=1e-4)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    bits_per_byte = -sum(direct) / total_bytes / math.log(2)
    reported = out["results"]["megatiny_test_rolling"]["bits_per_byte,none"]
    assert reported == pytest.approx(bits_per_byte, rel=1e-4)


def test_generate_until_respects_stop_sequences(trained_model, tokenizer, manager):
    """Greedy generation through lm-eval = the model's own `generate`, cut at the first stop string."""
    outputs = {}
    for name, model in (("cached", trained_model), ("recompute", _LogitsOnly(trained_model))):
        lm = MegatinyLM(model=model, tokenizer=tokenizer, batch_size=4, device="cpu")
        out = lm_eval.simple_evaluate(model=lm, tasks=["megatiny_test_gen"], task_manager=manager,
                                      log_samples=True, bootstrap_iters=0)
        outputs[name] = out
    samples = outputs["cached"]["samples"]["megatiny_test_gen"]
    recomputed = outputs["recompute"]["samples"]["megatiny_test_gen"]
    assert [s["resps"] for s in samples] == [s["resps"] for s in recomputed]
    stops = ["\n", "."]
    cut_somewhere = 0
    for sample in samples:
        text = sample["resps"][0][0]
        assert not any(stop in text for stop in stops)
        prompt = [tokenizer.bos_id, *tokenizer.encode(sample["arguments"][0][0])]
        full = generate(trained_model, torch.tensor([prompt]), max_new_tokens=12,
                        eos_token_id=tokenizer.eos_id)
        new = [t for t in full[0, len(prompt):].tolist() if t != tokenizer.eos_id]
        reference = tokenizer.decode(new)
        for stop in stops:
            reference = reference.split(stop)[0]
        assert text == reference
        cut_somewhere += reference != tokenizer.decode(new)
    assert cut_somewhere > 0  # some generations really ran into a stop sequence
    assert outputs["cached"]["results"]["megatiny_test_gen"]["exact_match,none"] > 0


def test_generate_tokens_honours_token_budget(lm, tokenizer):
    prompt = [tokenizer.bos_id, *tokenizer.encode("Question: What is the capital of France?\nAnswer:")]
    [text] = lm.generate_tokens([prompt], max_new_tokens=3, until=[])
    assert len(tokenizer.encode(text)) <= 4  # 3 tokens; re-encoding may split a leading space
    assert text


def test_constructor_errors_are_clear(trained_model, tokenizer):
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        MegatinyLM(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="unknown argument"):
        MegatinyLM(model=trained_model, tokenizer=tokenizer, pretrained="x")
    with pytest.raises(ValueError, match="batch_size"):
        MegatinyLM(model=trained_model, tokenizer=tokenizer, batch_size="many")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        MegatinyLM(model=trained_model, tokenizer=tokenizer, max_length=4096)


def test_compiled_checkpoint_scores_and_generates_like_eager(weights_dir, trained_model, tokenizer, manager):
    """`compile=true` (lm-eval's --model_args, `megatiny evaluate --compile`): the checkpoint's
    blocks compiled (aot_eager: dynamo's tracing, eager kernels) give the eager log-likelihoods and
    greedy generations, with no graph break (SDPA once refused a symbolic is_causal: a break per
    call); once each kind of call (batch 1 or more, with or without the KV cache) has been seen
    with two lengths, requests of other lengths compile nothing more (the lengths became dynamic)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    lm = MegatinyLM(checkpoint=str(weights_dir), batch_size=2, device="cpu", dtype="float32", compile="true",
                    compile_backend="aot_eager")
    eager = MegatinyLM(model=trained_model, tokenizer=tokenizer, device="cpu")
    assert lm.model.model.layers[0]._megatiny_compiled
    graphs = []
    rounds = ((PAIRS, "What is the capital of France?"), (PAIRS[::-1][:4], "What do bees make?"),
              (PAIRS[1:], "Which language uses the keyword def?"))
    for pairs, question in rounds:
        results = lm.loglikelihood(instances("loglikelihood", pairs), disable_tqdm=True)
        for (context, continuation), (logprob, greedy) in zip(pairs, results):
            expected, expected_greedy = direct_loglikelihood(trained_model, tokenizer, context, continuation)
            assert logprob == pytest.approx(expected, abs=1e-4), (context, continuation)
            assert greedy == expected_greedy
        prompt = [tokenizer.bos_id, *tokenizer.encode(f"Question: {question}\nAnswer:")]
        assert lm.generate_tokens([prompt], 6, until=[]) == eager.generate_tokens([prompt], 6, until=[])
        graphs.append(counters["stats"]["unique_graphs"])
    assert sum(counters["graph_break"].values()) == 0, sorted(counters["graph_break"])[:3]
    assert graphs[0] > 0 and graphs[2] == graphs[1], graphs
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="compile_backend must be one of"):
        MegatinyLM(checkpoint=str(weights_dir), compile=True, compile_backend="cudagraphs")
