"""A checkpoint scored by our adapter = its Hugging Face export scored by lm-eval's own `hf` model."""
from __future__ import annotations

import json

import pytest

from megatiny.checkpoint import export_hf
from megatiny.eval.harness import LmEvalConfig, run_lm_eval

TASK = "megatiny_local_mc"


@pytest.fixture(scope="module")
def hf_dir(weights_dir, tmp_path_factory):
    return export_hf(weights_dir, tmp_path_factory.mktemp("hf") / "model", dtype="float32")


@pytest.fixture(scope="module")
def reports(weights_dir, hf_dir, tmp_path_factory):
    """The bundled task (all 112 items) through both backends, with results written to disk."""
    out = {}
    for backend, checkpoint in (("megatiny", weights_dir), ("hf", hf_dir)):
        config = LmEvalConfig(checkpoint=str(checkpoint), backend=backend, tasks=[TASK], batch_size=8,
                              device="cpu", dtype="float32",
                              output_dir=str(tmp_path_factory.mktemp(f"eval_{backend}")), log_samples=True)
        out[backend] = run_lm_eval(config)
    return out


@pytest.mark.slow
def test_accuracy_and_per_item_loglikelihoods_match_hf(reports):
    ours, theirs = reports["megatiny"], reports["hf"]
    for metric in ("acc,none", "acc_norm,none"):
        assert ours.results["results"][TASK][metric] == theirs.results["results"][TASK][metric]
    ours_samples, hf_samples = ours.results["samples"][TASK], theirs.results["samples"][TASK]
    assert len(ours_samples) == len(hf_samples) == 112
    largest = 0.0
    for a, b in zip(ours_samples, hf_samples):
        assert a["arguments"] == b["arguments"]
        for (lp_a, greedy_a), (lp_b, greedy_b) in zip((r[0] for r in a["resps"]), (r[0] for r in b["resps"])):
            largest = max(largest, abs(lp_a - lp_b))
            assert greedy_a == greedy_b
    assert largest < 1e-4, f"largest per-choice log-likelihood difference {largest}"


@pytest.mark.slow
def test_results_files(reports):
    """results.json carries lm-eval's numbers and our summary; results.md is the paper-style table."""
    report = reports["megatiny"]
    saved = json.loads(open(report.paths["json"]).read())
    score = saved["megatiny"]["scores"]["tasks"][TASK]
    assert score["metric"] == "acc_norm,none"  # tasks outside a suite report acc_norm when they have it
    acc = saved["results"][TASK]["acc_norm,none"]
    assert score["value"] == acc
    assert "samples" not in saved
    samples = [json.loads(line) for line in open(report.paths[f"samples_{TASK}"])]
    assert len(samples) == 112
    table = open(report.paths["markdown"]).read()
    assert table == report.table
    header, rule, row = table.splitlines()[:3]
    assert header.split("|")[1:-1] == [" Model ", f" {TASK} ", " Avg. "]
    assert f"{100 * acc:.2f}" in row
