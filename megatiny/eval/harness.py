"""Run lm-evaluation-harness tasks or suites on a checkpoint and write results JSON + a table.

    report = run_lm_eval(LmEvalConfig(checkpoint="runs/x/checkpoints", suite="tinyllama-commonsense",
                                      output_dir="runs/x/eval"))

`backend="megatiny"` scores the checkpoint in place with our adapter (DeepSpeed checkpoint root or
tag dir, megatiny weights dir, or Hugging Face dir); `backend="hf"` hands a Hugging Face export to
lm-eval's own `hf` model (the reference the adapter is tested against).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lm_eval
import torch
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager
from lm_eval.utils import handle_non_serializable

from megatiny.eval.lm_eval_adapter import MegatinyLM
from megatiny.eval.suites import Suite, adhoc_suite, get_suite, markdown_table, suite_scores
from megatiny.eval.tasks import BUNDLED_TASKS_DIR
from megatiny.fileio import atomic_write_text
from megatiny.model import ModelRuntime
from megatiny.precision import DTYPE_NAMES, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

BACKENDS = ("megatiny", "hf")


@dataclass
class LmEvalConfig:
    """What to evaluate, on what, and where the results go.

    checkpoint: see module docstring (unused when `run_lm_eval` is given an `lm`).
    suite / tasks: a named suite (megatiny.eval.suites.SUITES) or lm-eval task names (not both).
    include_paths: extra directories of task YAMLs; the bundled `megatiny/eval/tasks` is always on.
    num_fewshot: override the shots of every task (default: the suite's, else the task's).
    limit: evaluate only the first N documents per task (or a fraction < 1), for quick checks.
    output_dir: where results.json / results.md (and samples_*.jsonl with log_samples) go.
    runtime: how the megatiny backend's model computes (compiled blocks: `ModelRuntime(compile=True)`).
    """

    checkpoint: str | None = None
    backend: str = "megatiny"
    tokenizer: str | None = None
    suite: str | None = None
    tasks: list[str] = field(default_factory=list)
    include_paths: list[str] = field(default_factory=list)
    num_fewshot: int | None = None
    batch_size: int = 8
    device: str | None = None
    dtype: str = "auto"
    add_bos_token: bool | None = None
    limit: float | None = None
    output_dir: str | None = None
    log_samples: bool = False
    confirm_run_unsafe_code: bool = False
    seed: int = 1234
    runtime: ModelRuntime = field(default_factory=ModelRuntime)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"LmEvalConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.runtime.compile and self.backend != "megatiny":
            raise ValueError("compiled blocks (LmEvalConfig.runtime.compile, --compile) need the megatiny "
                             f"backend, not {self.backend!r}")
        if bool(self.suite) == bool(self.tasks):
            raise ValueError("LmEvalConfig: give exactly one of suite (e.g. 'tinyllama-commonsense') "
                             "or tasks (lm-eval task names)")
        if self.suite:
            get_suite(self.suite)
        if self.batch_size <= 0:
            raise ValueError(f"LmEvalConfig.batch_size must be positive, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"LmEvalConfig.num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"LmEvalConfig.limit must be positive, got {self.limit}")
        for path in self.include_paths:
            if not Path(path).is_dir():
                raise ValueError(f"LmEvalConfig.include_paths: {path} is not a directory of task YAMLs")

    def build_suite(self) -> Suite:
        return get_suite(self.suite) if self.suite else adhoc_suite(self.tasks, self.num_fewshot)


@dataclass
class EvaluationReport:
    results: dict[str, Any]   # lm-eval's output (merged over few-shot groups) + "megatiny" summary
    scores: dict[str, Any]    # suite_scores(...)
    table: str                # markdown
    paths: dict[str, str]     # files written


def task_manager(task_names: list[str], include_paths: list[str]):
    """An lm-eval TaskManager that knows `task_names`.

    Indexing lm-eval's ~10k built-in task files takes tens of seconds, so the built-ins are only
    indexed when a task is not among our bundled and user-given YAMLs.
    """
    paths = [str(BUNDLED_TASKS_DIR), *map(str, include_paths)]
    local = TaskManager(include_path=paths, include_defaults=False)
    if all(name in local.all_tasks for name in task_names):
        return local
    manager = TaskManager(include_path=paths)
    unknown = [name for name in task_names if name not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}; list them with `lm-eval ls tasks`, or give "
                         f"--include-path DIR for your own task YAMLs")
    return manager


def build_lm(config: LmEvalConfig):
    """The lm-eval model object for `config.backend`."""
    if config.checkpoint is None:
        raise ValueError("LmEvalConfig.checkpoint is required (a checkpoint or weights directory)")
    if not Path(config.checkpoint).exists():
        raise FileNotFoundError(f"{config.checkpoint}: checkpoint not found")
    if config.backend == "megatiny":
        return MegatinyLM(checkpoint=config.checkpoint, tokenizer=config.tokenizer,
                          batch_size=config.batch_size, device=config.device, dtype=config.dtype,
                          add_bos_token=config.add_bos_token, seed=config.seed,
                          compile=config.runtime.compile, compile_backend=config.runtime.compile_backend)
    # lm-eval's hf model defaults to cuda even on machines without it.
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Our "auto", not transformers' (which takes the export's bf16 even where bf16 is emulated).
    dtype = DTYPE_NAMES[resolve_dtype(config.dtype, resolve_device(device))]
    args: dict[str, Any] = {"pretrained": config.checkpoint, "batch_size": config.batch_size,
                            "dtype": dtype, "device": device}
    if config.tokenizer:
        args["tokenizer"] = config.tokenizer
    if config.add_bos_token is not None:
        args["add_bos_token"] = config.add_bos_token
    return get_model("hf").create_from_arg_obj(args)


def run_lm_eval(config: LmEvalConfig, lm=None, model_label: str | None = None) -> EvaluationReport:
    """Evaluate `config`'s suite or tasks; `lm` (an lm-eval LM) replaces loading the checkpoint.

    Tasks are run in one `simple_evaluate` call per distinct few-shot count, all on one model.
    """
    suite = config.build_suite()
    manager = task_manager(suite.task_names, config.include_paths)
    lm = lm if lm is not None else build_lm(config)
    by_shots: dict[int | None, list[str]] = {}
    for task in suite.tasks:
        shots = config.num_fewshot if config.num_fewshot is not None else task.num_fewshot
        by_shots.setdefault(shots, []).append(task.task)
    merged: dict[str, Any] = {}
    for shots, names in by_shots.items():
        output = lm_eval.simple_evaluate(
            model=lm, tasks=names, num_fewshot=shots, task_manager=manager, limit=config.limit,
            log_samples=config.log_samples, confirm_run_unsafe_code=config.confirm_run_unsafe_code,
            random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed,
            fewshot_random_seed=config.seed, bootstrap_iters=1000)
        _merge(merged, output)
    scores = suite_scores(suite, merged["results"])
    label = model_label or default_label(config.checkpoint, lm)
    table = markdown_table(suite, scores, label)
    merged["megatiny"] = {"config": asdict(config), "scores": scores}
    paths = write_outputs(config.output_dir, merged, table, config.log_samples) if config.output_dir else {}
    return EvaluationReport(results=merged, scores=scores, table=table, paths=paths)


def default_label(checkpoint: str | None, lm) -> str:
    """Table row label: the checkpoint directory's name, with the training step when known."""
    name = Path(checkpoint).resolve().name if checkpoint else "model"
    step = (getattr(lm, "metadata", None) or {}).get("step")
    return f"{name} (step {step})" if step else name


def _merge(into: dict[str, Any], output: dict[str, Any]) -> None:
    """Fold one simple_evaluate output into the running result (dict-valued keys are merged)."""
    for key, value in output.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        elif key not in into:
            into[key] = value


def write_outputs(output_dir: str | os.PathLike, results: dict[str, Any], table: str,
                  log_samples: bool) -> dict[str, str]:
    """results.json, results.md and (with log_samples) samples_TASK.jsonl, each written atomically."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in results.items() if k != "samples"}
    paths = {"json": atomic_write_text(out / "results.json",
                                   json.dumps(summary, indent=2, default=handle_non_serializable)),
             "markdown": atomic_write_text(out / "results.md", table)}
    if log_samples:
        for task, samples in results.get("samples", {}).items():
            lines = "".join(json.dumps(s, default=handle_non_serializable) + "\n" for s in samples)
            paths[f"samples_{task}"] = atomic_write_text(out / f"samples_{task}.jsonl", lines)
    return paths


