"""Held-out perplexity on indexed data: the tool against a direct log-softmax computation."""
from __future__ import annotations

import json
import math
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatiny.cli import evaluate as evaluate_tool
from megatiny.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatiny.eval.perplexity import evaluate_perplexity, held_out_dataset, held_out_datasets, run_perplexity
from tests.eval.conftest import training_texts
from tests.helpers import REPO_ROOT, run_command

SEQ = 32


@pytest.fixture(scope="module")
def prefix(tmp_path_factory, tokenizer):
    """Every training text as one document (BOS ... EOS), uint16 tokens."""
    prefix = tmp_path_factory.mktemp("ppl") / "corpus_text_document"
    with IndexedDatasetBuilder(prefix, dtype=np.uint16) as builder:
        for text in training_texts():
            builder.add_document([tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id])
    return str(prefix)


@pytest.fixture(scope="module")
def small_prefix(tmp_path_factory, tokenizer):
    """A dataset about 1/10 the size of `prefix`: its first few texts, different token values."""
    prefix = tmp_path_factory.mktemp("ppl_small") / "small_text_document"
    with IndexedDatasetBuilder(prefix, dtype=np.uint16) as builder:
        for text in training_texts()[:12]:
            builder.add_document([tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id])
    return str(prefix)


def direct_loss(model, dataset) -> tuple[float, int]:
    """Mean -log p(label) from the model's logits, one sample at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = torch.from_numpy(np.asarray(dataset[i], dtype=np.int64))[None]
            logprobs = F.log_softmax(model(sample[:, :-1]).float(), dim=-1)
            total -= float(logprobs.gather(2, sample[:, 1:, None]).sum())
            count += SEQ
    return total / count, count


def test_one_epoch_of_the_split_each_token_predicted_once(prefix):
    dataset = held_out_dataset(prefix, SEQ, which="all")
    indexed = IndexedDataset(prefix)
    assert len(dataset) == (indexed.num_tokens - 1) // SEQ
    labels = Counter(np.concatenate([np.asarray(dataset[i])[1:] for i in range(len(dataset))]).tolist())
    every = Counter(np.concatenate([indexed.get_document(d) for d in range(indexed.num_documents)]).tolist())
    missing = every - labels
    assert not labels - every            # nothing predicted twice
    assert sum(missing.values()) == indexed.num_tokens - len(dataset) * SEQ  # only the tail/first token


def test_blend_scores_each_dataset_once_whatever_the_weights(prefix, small_prefix):
    """0.5/0.5 over datasets ~10x apart in size: each still gets exactly one epoch of its own tokens
    (sampling the blend by weight would repeat the small one and skip half of the large one)."""
    big, small = IndexedDataset(prefix), IndexedDataset(small_prefix)
    assert big.num_tokens > 8 * small.num_tokens
    datasets = held_out_datasets(f"0.5 {prefix} 0.5 {small_prefix}", SEQ, which="all")
    assert list(datasets) == [prefix, small_prefix]
    for name, indexed in ((prefix, big), (small_prefix, small)):
        dataset = datasets[name]
        assert len(dataset) == (indexed.num_tokens - 1) // SEQ
        labels = Counter(np.concatenate([np.asarray(dataset[i])[1:] for i in range(len(dataset))]).tolist())
        every = Counter(np.concatenate([indexed.get_document(d) for d in range(indexed.num_documents)])
                        .tolist())
        assert not labels - every            # nothing predicted twice
        assert sum((every - labels).values()) == indexed.num_tokens - len(dataset) * SEQ  # < SEQ + 1 left
        assert indexed.num_tokens - len(dataset) * SEQ <= SEQ
    with pytest.raises(ValueError, match="blend"):
        held_out_dataset(f"0.5 {prefix} 0.5 {small_prefix}", SEQ, which="all")


def test_blend_perplexity_is_token_weighted_over_datasets(prefix, small_prefix, weights_dir, trained_model):
    result = run_perplexity(weights_dir, f"0.9 {prefix} 0.1 {small_prefix}", SEQ, which="all",
                            batch_size=8, device="cpu", dtype="float32")
    assert list(result.datasets) == [prefix, small_prefix]
    for name in (prefix, small_prefix):
        expected, tokens = direct_loss(trained_model, held_out_dataset(name, SEQ, which="all"))
        assert result.datasets[name].tokens == tokens
        assert result.datasets[name].loss == pytest.approx(expected, rel=1e-5)
    parts = result.datasets.values()
    assert result.tokens == sum(r.tokens for r in parts)
    assert result.loss == pytest.approx(sum(r.loss * r.tokens for r in parts) / result.tokens, rel=1e-9)
    assert result.to_dict()["datasets"][small_prefix]["tokens"] == result.datasets[small_prefix].tokens


def test_perplexity_equals_direct_computation(prefix, trained_model):
    dataset = held_out_dataset(prefix, SEQ, which="valid", split="70,30,0")
    result = evaluate_perplexity(trained_model, dataset, batch_size=5)
    expected, tokens = direct_loss(trained_model, dataset)
    assert result.tokens == tokens == len(dataset) * SEQ
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    assert result.loss < math.log(trained_model.config.vocab_size)  # the model learned something


def test_perplexity_tool(prefix, weights_dir, trained_model, tmp_path, capsys):
    out = tmp_path / "out"
    code = evaluate_tool.main(["--perplexity", "--checkpoint", str(weights_dir), "--data-path", prefix,
                               "--seq-length", str(SEQ), "--split", "70,30,0", "--split-name", "valid",
                               "--batch-size", "4", "--device", "cpu", "--dtype", "float32",
                               "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "perplexity.json").read_text())
    expected, tokens = direct_loss(trained_model, held_out_dataset(prefix, SEQ, "valid", "70,30,0"))
    assert saved["loss"] == pytest.approx(expected, rel=1e-5)
    assert saved["tokens"] == tokens
    assert f"perplexity {saved['perplexity']:.3f}" in printed and f"tokens {tokens}" in printed


def test_perplexity_tool_with_compiled_blocks(prefix, weights_dir, trained_model, capsys):
    """--compile (aot_eager here: dynamo's tracing without Inductor's C++ compiles): the same loss
    as the eager computation, with the blocks really traced; a bad backend names the flag."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    args = ["--perplexity", "--checkpoint", str(weights_dir), "--data-path", prefix, "--seq-length", str(SEQ),
            "--split", "70,30,0", "--batch-size", "3", "--device", "cpu", "--dtype", "float32"]
    assert evaluate_tool.main([*args, "--compile", "--compile-backend", "aot_eager"]) == 0
    expected, tokens = direct_loss(trained_model, held_out_dataset(prefix, SEQ, "valid", "70,30,0"))
    loss = float(capsys.readouterr().out.split("loss ")[1].split(" nats")[0])
    assert loss == pytest.approx(expected, abs=1e-4)
    assert counters["stats"]["unique_graphs"] > 0 and sum(counters["graph_break"].values()) == 0
    torch._dynamo.reset()
    assert evaluate_tool.main([*args, "--compile", "--compile-backend", "tvm"]) == 2
    assert "--compile-backend: compile_backend must be one of" in capsys.readouterr().err


def test_perplexity_tool_errors(prefix, weights_dir, capsys):
    args = ["--perplexity", "--checkpoint", str(weights_dir), "--data-path", prefix, "--device", "cpu"]
    assert evaluate_tool.main([*args, "--seq-length", "4096"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    assert evaluate_tool.main([*args, "--seq-length", "32", "--split", "100,0,0"]) == 2
    assert "the valid split (split '100,0,0') holds fewer than 33 tokens" in capsys.readouterr().err
    assert evaluate_tool.main(args) == 2
    assert "--seq-length" in capsys.readouterr().err


# Run in a fresh interpreter in which every `import lm_eval...` fails, as without megatiny[eval].
_WITHOUT_LM_EVAL = """
import importlib.abc, sys

class _NoLmEval(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _NoLmEval())
"""


def _run_without_lm_eval(code: str):
    return run_command([sys.executable, "-c", _WITHOUT_LM_EVAL + code], timeout=120,
                       env={"PYTHONPATH": str(REPO_ROOT)})


def test_perplexity_library_runs_without_lm_eval(prefix, weights_dir, trained_model):
    code = f"""
import torch
from megatiny.checkpoint import load_model
from megatiny.eval.perplexity import evaluate_perplexity, held_out_dataset
model, _ = load_model({str(weights_dir)!r})
result = evaluate_perplexity(model, held_out_dataset({prefix!r}, {SEQ}, "all"), batch_size=4)
assert "lm_eval" not in sys.modules
try:
    import lm_eval
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("lm_eval was importable: the block does not work")
print(f"LOSS {{result.loss!r}}")
"""
    result = _run_without_lm_eval(code)
    assert result.returncode == 0, result.stdout[-3000:]
    loss = float(result.stdout.split("LOSS ")[1].split()[0])
    expected = evaluate_perplexity(trained_model, held_out_dataset(prefix, SEQ, "all"), batch_size=4).loss
    assert loss == pytest.approx(expected, rel=1e-6)


def test_perplexity_command_runs_without_lm_eval(prefix, weights_dir):
    code = f"""
from megatiny.cli import main
sys.exit(main(["evaluate", "--perplexity", "--checkpoint", {str(weights_dir)!r}, "--data-path", {prefix!r},
               "--seq-length", "{SEQ}", "--split-name", "all", "--device", "cpu", "--dtype", "float32"]))
"""
    result = _run_without_lm_eval(code)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "perplexity" in result.stdout
