"""Named evaluation suites and the paper-style results table.

A suite is a list of lm-eval tasks, each with the few-shot count and the metric to report.
`tinyllama-commonsense` reproduces Table 2 of the TinyLlama paper: seven zero-shot tasks through
lm-evaluation-harness, reporting acc_norm where the harness computes it (HellaSwag, OpenBookQA,
ARC-Easy, ARC-Challenge, PIQA) and acc where it does not (WinoGrande, BoolQ), as TinyLlama's
EVAL.md states ("We report the acc_norm by default"). The average is the unweighted mean of the
seven percentages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SuiteTask:
    """One column of a suite's table.

    task: lm-eval task (or group) name. label: column header. metric: the lm-eval metric name
    (without the ",filter" suffix). num_fewshot: shots to request; None keeps the task's default.
    """

    task: str
    label: str
    metric: str
    num_fewshot: int | None = 0


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: tuple[SuiteTask, ...]
    # Published rows to print under ours: {row label: {task: percentage}}; an "average" entry is
    # the published average (printed instead of the mean of the rounded columns).
    references: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]


_COMMONSENSE = (
    SuiteTask("hellaswag", "HellaSwag", "acc_norm"),
    SuiteTask("openbookqa", "Obqa", "acc_norm"),
    SuiteTask("winogrande", "WinoGrande", "acc"),
    SuiteTask("arc_easy", "ARC-e", "acc_norm"),
    SuiteTask("arc_challenge", "ARC-c", "acc_norm"),
    SuiteTask("boolq", "boolq", "acc"),
    SuiteTask("piqa", "piqa", "acc_norm"),
)


def _row(values: tuple[float, ...], tasks: tuple[SuiteTask, ...], average: float) -> dict[str, float]:
    return {t.task: v for t, v in zip(tasks, values, strict=True)} | {"average": average}


SUITES: dict[str, Suite] = {
    "tinyllama-commonsense": Suite(
        name="tinyllama-commonsense",
        description="TinyLlama paper Table 2: zero-shot commonsense reasoning",
        tasks=_COMMONSENSE,
        references={
            # TinyLlama EVAL.md, base models (lm-evaluation-harness, acc_norm by default).
            "TinyLlama-1.1B (3T tokens, published)": _row(
                (59.20, 36.00, 59.12, 55.25, 30.12, 57.83, 73.29), _COMMONSENSE, 52.99),
            "Pythia-1.0B (300B tokens, published)": _row(
                (47.16, 31.40, 53.43, 48.99, 27.05, 60.83, 69.21), _COMMONSENSE, 48.30),
        },
    ),
    "tinyllama-problem-solving": Suite(
        name="tinyllama-problem-solving",
        description="MMLU (5-shot), BBH (3-shot), DROP (3-shot), HumanEval (0-shot, pass@1)",
        tasks=(
            SuiteTask("mmlu", "MMLU", "acc", 5),
            SuiteTask("bbh_fewshot", "BBH", "exact_match", 3),
            SuiteTask("drop", "DROP", "f1", 3),
            SuiteTask("humaneval", "HumanEval", "pass@1", 0),
        ),
        note=("TinyLlama measured these with instruct-eval, not lm-eval; prompts and scoring differ, "
              "so compare against runs of this suite, not the paper. HumanEval executes generated "
              "code: it needs --confirm-run-unsafe-code and HF_ALLOW_CODE_EVAL=1."),
    ),
    "local": Suite(
        name="local",
        description="megatiny's bundled offline multiple-choice task (no network needed)",
        tasks=(SuiteTask("megatiny_local_mc", "megatiny_local_mc", "acc"),),
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name]


def adhoc_suite(task_names: list[str], num_fewshot: int | None = None) -> Suite:
    """A suite over arbitrary tasks, reporting each one's preferred metric (see `pick_metric`)."""
    if not task_names:
        raise ValueError("--tasks: give at least one task name")
    return Suite(name="tasks", description=", ".join(task_names),
                 tasks=tuple(SuiteTask(t, t, "", num_fewshot) for t in task_names))


# Preferred metrics for tasks outside a suite: the paper's convention first (acc_norm over acc).
_METRIC_PREFERENCE = ("acc_norm", "acc", "exact_match", "f1", "pass@1", "word_perplexity", "mc2")


def pick_metric(task_results: dict[str, Any], metric: str = "") -> tuple[str, float]:
    """(result key, value) for `metric` in one task's lm-eval results, e.g. ("acc_norm,none", 0.59).

    lm-eval keys metrics as "name,filter"; the "none" filter wins, then the first other one. With
    metric "" the first of acc_norm, acc, exact_match, ... that the task reports is used.
    """
    wanted = (metric,) if metric else _METRIC_PREFERENCE
    for name in wanted:
        keys = [k for k in task_results
                if k.split(",")[0] == name and not k.split(",")[0].endswith("_stderr")]
        keys.sort(key=lambda k: (k != f"{name},none", k))
        for key in keys:
            value = task_results[key]
            if isinstance(value, (int, float)):
                return key, float(value)
    raise KeyError(f"metric {metric or wanted!r} not found in results (has {sorted(task_results)})")


def suite_scores(suite: Suite, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-task scores of one lm-eval run (results["results"]) in the suite's convention.

    Returns {"tasks": {task: {"metric": key, "value": fraction, "percent": value x 100}},
    "missing": tasks without the metric, "average": mean percent over tasks with a 0..1 metric
    (None if any task is missing)}.
    Perplexity-like metrics are reported as they are (not x 100) and left out of the average.
    """
    scores: dict[str, dict[str, Any]] = {}
    missing = []
    for task in suite.tasks:
        try:
            key, value = pick_metric(results[task.task], task.metric)
        except KeyError:  # task not run, or it does not report the suite's metric
            missing.append(task.task)
            continue
        is_fraction = not key.split(",")[0].endswith("perplexity") and not key.startswith("bits_per_byte")
        scores[task.task] = {"label": task.label, "metric": key, "value": value,
                             "percent": 100.0 * value if is_fraction else None}
    percents = [s["percent"] for s in scores.values() if s["percent"] is not None]
    average = sum(percents) / len(percents) if percents and not missing else None
    return {"suite": suite.name, "tasks": scores, "missing": missing, "average": average}


def markdown_table(suite: Suite, scores: dict[str, Any], model_label: str) -> str:
    """The paper's layout: one row per model, tasks as columns, the average last.

    Our row comes first, then the suite's published reference rows.
    """
    header = ["Model", *[t.label for t in suite.tasks], "Avg."]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    ours = []
    for task in suite.tasks:
        entry = scores["tasks"].get(task.task)
        ours.append(None if entry is None else
                    entry["percent"] if entry["percent"] is not None else entry["value"])
    lines.append("| " + " | ".join([model_label, *map(fmt, ours), fmt(scores["average"])]) + " |")
    for label, row in suite.references.items():
        values = [row.get(t.task) for t in suite.tasks]
        average = row.get("average")
        if average is None and all(v is not None for v in values):
            average = sum(values) / len(values)
        lines.append("| " + " | ".join([label, *map(fmt, values), fmt(average)]) + " |")
    metrics = ", ".join(f"{t.label}: {scores['tasks'][t.task]['metric'].split(',')[0]}"
                        for t in suite.tasks if t.task in scores["tasks"])
    text = "\n".join(lines) + "\n"
    if metrics:
        text += f"\nMetrics: {metrics}. Scores are percentages.\n"
    if suite.note:
        text += f"\n{suite.note}\n"
    return text
