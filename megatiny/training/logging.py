"""Rank-0 reporting: a console line per log interval, TensorBoard scalars, a JSON-lines metrics file.

TensorBoard tags: train/loss, train/lr, train/grad_norm, train/consumed_samples,
train/skipped_steps, perf/tokens_per_s, perf/tokens_per_s_per_device, perf/tflops_per_device,
perf/mfu (when the device peak is known), perf/memory_gb, valid/loss, valid/perplexity.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch


def memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated (GPU) or resident set size of this process (CPU), GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import psutil
    return psutil.Process(os.getpid()).memory_info().rss / 2**30


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    return f"{hours}:{minutes:02d}:{secs:02d}"


def console_line(step: int, total_steps: int, m: dict[str, Any], eta_s: float) -> str:
    """One human-readable progress line, e.g.
    `step   120/1000 | loss 3.4512 | lr 2.40e-04 | gnorm 0.81 | 12.3k tok/s/dev | 45.1 TFLOP/s | MFU 14.5%
     | mem 3.2 GiB | samples 960 | ETA 0:10:21`."""
    parts = [f"step {step:>{len(str(total_steps))}}/{total_steps}", f"loss {m['loss']:.4f}",
             f"lr {m['lr']:.2e}"]
    if m.get("grad_norm") is not None:
        parts.append(f"gnorm {m['grad_norm']:.3f}")
    tok = m["tokens_per_s_per_device"]
    parts.append(f"{tok / 1000:.1f}k tok/s/dev" if tok >= 1000 else f"{tok:.0f} tok/s/dev")
    tflops = m["tflops_per_device"]
    parts.append(f"{tflops:.1f} TFLOP/s/dev" if tflops >= 1 else f"{1000 * tflops:.2f} GFLOP/s/dev")
    if "mfu" in m:
        parts.append(f"MFU {100 * m['mfu']:.1f}%")
    parts.append(f"mem {m['memory_gb']:.1f} GiB")
    parts.append(f"samples {m['consumed_samples']}")
    if m.get("skipped_steps"):
        parts.append(f"skipped {m['skipped_steps']}")
    parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


class MetricsLogger:
    """Does nothing on ranks other than 0."""

    def __init__(self, rank: int, tensorboard_dir: str | None, metrics_file: str | None):
        self.enabled = rank == 0
        self.writer = None
        self.metrics = None
        if not self.enabled:
            return
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=tensorboard_dir)
        if metrics_file:
            Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
            self.metrics = open(metrics_file, "a", buffering=1)

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def record(self, step: int, values: dict[str, Any]) -> None:
        """Append one JSON line {"step": step, **values} to the metrics file."""
        if self.metrics is not None:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                     for k, v in values.items()}
            self.metrics.write(json.dumps({"step": step, **clean}) + "\n")

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()
