"""tools/evaluate.py, the `python -m megatiny.eval` lm-eval wrapper, and the suite tables."""
from __future__ import annotations

import json
import sys

import pytest

from megatiny.cli import evaluate as evaluate_tool
from megatiny.eval.suites import SUITES, markdown_table, pick_metric, suite_scores
from tests.helpers import launch_ranks, run_command, timeout_s

TASK = "megatiny_local_mc"


@pytest.fixture(scope="module")
def tool_run(weights_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tool")
    argv = ["--checkpoint", str(weights_dir), "--tasks", TASK, "--limit", "24", "--batch-size", "6",
            "--device", "cpu", "--dtype", "float32", "--output-dir", str(out)]
    return evaluate_tool.main(argv), out


def test_tool_writes_results_and_table(tool_run, capsys):
    code, out = tool_run
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"][TASK]["sample_len"] == 24
    table = (out / "results.md").read_text()
    acc_norm = saved["results"][TASK]["acc_norm,none"]
    assert f"| {100 * acc_norm:.2f} | {100 * acc_norm:.2f} |" in table


def test_samples_are_kept_only_with_log_samples(weights_dir):
    from megatiny.eval.harness import LmEvalConfig, run_lm_eval

    for log_samples in (False, True):
        report = run_lm_eval(LmEvalConfig(checkpoint=str(weights_dir), tasks=[TASK], limit=3, batch_size=6,
                                          device="cpu", dtype="float32", log_samples=log_samples))
        assert ("samples" in report.results) is log_samples
        assert report.results["results"][TASK]["sample_len"] == 3


def test_tool_errors(weights_dir, tmp_path, capsys):
    assert evaluate_tool.main(["--checkpoint", str(weights_dir)]) == 2
    assert "--suite" in capsys.readouterr().err
    assert evaluate_tool.main(["--checkpoint", str(tmp_path / "nope"), "--tasks", TASK]) == 2
    assert "not found" in capsys.readouterr().err
    assert evaluate_tool.main(["--checkpoint", str(weights_dir), "--tasks", TASK,
                               "--include-path", str(tmp_path / "missing")]) == 2
    assert "include_paths" in capsys.readouterr().err
    assert evaluate_tool.main(["--checkpoint", str(weights_dir), "--tasks", TASK, "--backend", "hf",
                               "--compile"]) == 2
    assert "need the megatiny backend, not 'hf'" in capsys.readouterr().err


@pytest.mark.slow
def test_lm_eval_cli_wrapper_knows_megatiny(weights_dir, tool_run, tmp_path):
    """lm-eval's own CLI (through our wrapper) with --model megatiny gives the tool's numbers."""
    _, tool_out = tool_run
    out = tmp_path / "lm_eval_out"
    result = run_command([sys.executable, "-m", "megatiny.eval", "--model", "megatiny", "--model_args",
                          f"checkpoint={weights_dir},dtype=float32", "--batch_size", "5", "--device", "cpu",
                          "--tasks", TASK, "--limit", "24", "--output_path", str(out)],
                         timeout=timeout_s(extra_s=180))
    assert result.returncode == 0, result.stdout[-3000:]
    [written] = list(out.rglob("results_*.json"))
    theirs = json.loads(written.read_text())["results"][TASK]
    ours = json.loads((tool_out / "results.json").read_text())["results"][TASK]
    assert theirs["acc,none"] == ours["acc,none"] and theirs["acc_norm,none"] == ours["acc_norm,none"]


def _lm_eval_style(values: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per-task result dicts keyed like lm-eval's ("metric,filter", with stderr entries)."""
    return {task: {"alias": task, **{f"{m},none": v for m, v in metrics.items()},
                   **{f"{m}_stderr,none": 0.01 for m in metrics}}
            for task, metrics in values.items()}


def test_commonsense_table_uses_the_papers_metrics():
    suite = SUITES["tinyllama-commonsense"]
    acc_norm_tasks = {"hellaswag", "openbookqa", "arc_easy", "arc_challenge", "piqa"}
    values = {}
    for i, task in enumerate(suite.task_names):
        values[task] = {"acc": 0.30 + i / 100}
        if task in acc_norm_tasks:
            values[task]["acc_norm"] = 0.50 + i / 100
    scores = suite_scores(suite, _lm_eval_style(values))
    for i, task in enumerate(suite.task_names):
        expected = 50 + i if task in acc_norm_tasks else 30 + i
        assert scores["tasks"][task]["percent"] == pytest.approx(expected)
    assert scores["average"] == pytest.approx(sum(50 + i if t in acc_norm_tasks else 30 + i
                                                  for i, t in enumerate(suite.task_names)) / 7)
    table = markdown_table(suite, scores, "my-run")
    lines = table.splitlines()
    assert lines[0] == "| Model | HellaSwag | Obqa | WinoGrande | ARC-e | ARC-c | boolq | piqa | Avg. |"
    assert lines[2].startswith("| my-run | 50.00 | 51.00 | 32.00 | 53.00 | 54.00 | 35.00 | 56.00 |")
    assert lines[3] == ("| TinyLlama-1.1B (3T tokens, published) | 59.20 | 36.00 | 59.12 | 55.25 | 30.12 "
                        "| 57.83 | 73.29 | 52.99 |")


def test_missing_task_leaves_a_gap_and_no_average():
    suite = SUITES["tinyllama-commonsense"]
    values = {t: {"acc": 0.5, "acc_norm": 0.5} for t in suite.task_names if t != "boolq"}
    values["piqa"] = {"acc": 0.5}  # the suite reports piqa's acc_norm
    scores = suite_scores(suite, _lm_eval_style(values))
    assert scores["missing"] == ["boolq", "piqa"] and scores["average"] is None
    assert markdown_table(suite, scores, "x").splitlines()[2].endswith("| 50.00 | – | – | – |")


def test_pick_metric_prefers_unfiltered_and_skips_stderr():
    results = {"exact_match,strict-match": 0.1, "exact_match,none": 0.2, "exact_match_stderr,none": 0.01}
    assert pick_metric(results, "exact_match") == ("exact_match,none", 0.2)
    assert pick_metric({"pass@1,create_test": 0.05}, "pass@1") == ("pass@1,create_test", 0.05)
    with pytest.raises(KeyError, match="acc_norm"):
        pick_metric({"acc,none": 0.3}, "acc_norm")


@pytest.mark.slow
def test_tool_on_a_deepspeed_checkpoint_root(weights_dir, tool_run, tmp_path):
    """A 2-rank ZeRO-3 checkpoint root of the same weights evaluates to the same numbers."""
    save_dir = tmp_path / "checkpoints"
    launch = run_command([*launch_ranks(2), "tests/eval/ds_save_checkpoint.py", "--weights", str(weights_dir),
                          "--save-dir", str(save_dir)], timeout=timeout_s(extra_s=60))
    assert launch.returncode == 0, launch.stdout[-3000:]
    assert (save_dir / "latest").read_text().strip() == "step_00000080"
    out = tmp_path / "eval"
    code = evaluate_tool.main(["--checkpoint", str(save_dir), "--tasks", TASK, "--limit", "24",
                               "--batch-size", "6", "--device", "cpu", "--dtype", "float32",
                               "--output-dir", str(out)])
    assert code == 0
    ours = json.loads((out / "results.json").read_text())
    reference = json.loads((tool_run[1] / "results.json").read_text())
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"][TASK][metric] == reference["results"][TASK][metric]
    assert "| checkpoints (step 80) |" in (out / "results.md").read_text()
