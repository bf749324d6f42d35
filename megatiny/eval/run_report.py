"""Summaries of a finished run: loss curves from TensorBoard logs and a unigram baseline.

A model has learned something only if its validation loss is well below the cross entropy of
the best context-free guess, the training set's unigram distribution; `unigram_cross_entropy`
computes that baseline in nats per token.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megatiny.checkpoint.layout import resolve_tag_dir
from megatiny.checkpoint.metadata import read_metadata
from megatiny.data.builder import build_gpt_datasets
from megatiny.fileio import atomic_output
from megatiny.training.config import RunConfig


@dataclass
class ScalarSeries:
    tag: str
    steps: np.ndarray   # int64 [N]
    values: np.ndarray  # float64 [N]


def read_scalars(log_dir: str | os.PathLike) -> dict[str, ScalarSeries]:
    """Every scalar tag in the TensorBoard event files under `log_dir` (recursively)."""
    log_dir = Path(log_dir)
    event_dirs = sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")})
    if not event_dirs:
        raise FileNotFoundError(f"{log_dir}: no TensorBoard event files (events.out.tfevents.*)")
    merged: dict[str, dict[int, float]] = {}
    for directory in event_dirs:
        accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                merged.setdefault(tag, {})[event.step] = event.value  # later runs (resumes) win
    return {tag: ScalarSeries(tag, np.array(sorted(points), dtype=np.int64),
                              np.array([points[s] for s in sorted(points)], dtype=np.float64))
            for tag, points in merged.items()}


def plot_loss_curves(scalars: dict[str, ScalarSeries], output_png: str | os.PathLike,
                     baseline: float | None = None, title: str = "megatiny training") -> Path:
    """Plot every tag whose name contains 'loss' against the step; write `output_png`."""
    import matplotlib  # optional (megatiny[eval]); the rest of this module works without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_tags = sorted(tag for tag in scalars if "loss" in tag.lower())
    if not loss_tags:
        raise ValueError(f"no loss scalars among the TensorBoard tags {sorted(scalars)}")
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for tag in loss_tags:
        series = scalars[tag]
        axis.plot(series.steps, series.values, marker="." if len(series.steps) < 40 else None,
                  label=tag)
    if baseline is not None:
        axis.axhline(baseline, color="grey", linestyle="--", label=f"unigram baseline {baseline:.2f}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross entropy (nats/token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    output_png = Path(output_png)
    try:
        with atomic_output(output_png, "wb") as f:
            figure.savefig(f, format="png")
    finally:
        plt.close(figure)
    return output_png


def unigram_cross_entropy(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int,
                          smoothing: float = 1.0) -> float:
    """Cross entropy (nats/token) of `eval_tokens` under the add-`smoothing` unigram model of
    `train_tokens`. Both are 1-D integer token arrays; ids must be < vocab_size."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size)
    if counts.shape[0] > vocab_size:
        raise ValueError(f"train tokens contain id {counts.shape[0] - 1} >= vocab_size {vocab_size}")
    log_probs = np.log(counts + smoothing) - np.log(counts.sum() + smoothing * vocab_size)
    eval_tokens = np.asarray(eval_tokens, dtype=np.int64)
    if eval_tokens.size == 0:
        raise ValueError("no evaluation tokens")
    return float(-log_probs[eval_tokens].mean())


def run_of_checkpoint(path: str | os.PathLike) -> tuple[RunConfig, dict]:
    """The run config a training checkpoint (root or tag dir) was written by, and its metadata
    (megatiny.json only; no weights are read)."""
    tag_dir = resolve_tag_dir(path)
    metadata = read_metadata(tag_dir)
    stored = metadata["train_state"].run_config
    if not stored:
        raise ValueError(f"{tag_dir}: its megatiny.json records no run config (not written by megatiny "
                         "training); point --checkpoint at a training checkpoint")
    return RunConfig.from_dict(stored, source=f"{tag_dir} (train_state.run_config)"), metadata


def unigram_baseline_for_run(run: RunConfig, vocab_size: int, max_samples: int = 4096) -> float:
    """Unigram cross entropy of the run's validation samples under its training samples' unigram
    distribution, on the same blend, split and sequence length the run used. Only predicted
    tokens count, as in the model's loss: tokens 1.. of each seq_length + 1 sample."""
    if run.data is None:
        raise ValueError("the run has no data section")
    train, valid, _ = build_gpt_datasets(run.data, run.batch.seq_length, (max_samples, max_samples // 4, 0),
                                         run.seed)
    if valid is None:
        raise ValueError("the run has no validation split (data.split or valid_data_path)")
    train_tokens = np.concatenate([train[i][1:] for i in range(len(train))])
    valid_tokens = np.concatenate([valid[i][1:] for i in range(len(valid))])
    return unigram_cross_entropy(train_tokens, valid_tokens, vocab_size)
