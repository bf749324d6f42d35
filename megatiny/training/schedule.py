"""Learning-rate schedule: linear warmup, then cosine (or linear) decay to a floor.

TinyLlama: warmup 2,000 steps to 4e-4, cosine to 4e-5 at the last step.
"""
from __future__ import annotations

import math

from megatiny.training.config import OptimizerConfig, ScheduleConfig


def learning_rate(step: int, optimizer: OptimizerConfig, schedule: ScheduleConfig) -> float:
    """LR used for optimizer step `step` (0-based: the first update uses step 0).

    Warmup is linear from lr/warmup at step 0 to lr at step warmup-1, so no step has LR 0.
    """
    max_lr, min_lr = optimizer.lr, optimizer.min_lr
    warmup = schedule.warmup_steps
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if schedule.style == "constant":
        return max_lr
    decay_end = schedule.decay_steps or schedule.train_steps
    if step >= decay_end:
        return min_lr
    progress = (step - warmup) / max(1, decay_end - warmup)
    if schedule.style == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + (max_lr - min_lr) * factor

