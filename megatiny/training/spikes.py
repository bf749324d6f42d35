"""Loss-spike detection for `spike.policy: skip`: a z-score of the step's loss (decided before the
update) and of the gradient norm (known only after it) over a window of recent normal steps.

A step is a spike when at least `min_history` steps are in the window and its loss is more than
`loss_z` standard deviations above their mean. The decision uses the loss summed over all ranks,
so every rank reaches the same one from the same numbers; the loop then takes that step with
learning rate 0 (parameters unchanged), like a step whose every micro-batch was non-finite.
DeepSpeed computes the gradient norm inside its optimizer step, so a gradient-norm spike
(`grad_norm_z`) cannot stop its own update: it is recorded, and kept out of the window so that it
does not widen what counts as normal. Skipped steps never enter the window either.

With `spike.policy: rewind` the loop instead goes back to an earlier checkpoint and replays with
the spiking batches skipped; the ranges it skips (`rewound`) are kept across the reload and travel
in every later checkpoint, so a resumed run skips them too.

The window and the records travel in the checkpoint (`TrainState.spike`), so a resumed run makes
the same decisions as an uninterrupted one.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SpikeVerdict:
    spike: bool
    z: float | None  # None: too little history (or no spread) to judge


def z_score(value: float, history: list[float]) -> float | None:
    """(value - mean) / standard deviation of `history`; None without spread."""
    n = len(history)
    if n < 2:
        return None
    mean = sum(history) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in history) / n)
    return None if std == 0.0 else (value - mean) / std


class SpikeDetector:
    """The window of recent losses and gradient norms, and what was skipped or flagged."""

    def __init__(self, window: int, loss_z: float, grad_norm_z: float, min_history: int):
        self.window, self.min_history = window, min_history
        self.loss_z, self.grad_norm_z = loss_z, grad_norm_z
        self.losses: deque[float] = deque(maxlen=window)
        self.grad_norms: deque[float] = deque(maxlen=window)
        self.skipped: list[dict[str, Any]] = []
        self.flagged: list[dict[str, Any]] = []
        self.rewound: list[dict[str, Any]] = []

    def judge_loss(self, loss: float) -> SpikeVerdict:
        """Before the update: is this step's loss a spike?"""
        if len(self.losses) < self.min_history or not math.isfinite(loss):
            return SpikeVerdict(False, None)
        z = z_score(loss, list(self.losses))
        return SpikeVerdict(z is not None and z > self.loss_z, z)

    def skip(self, step: int, samples: tuple[int, int], loss: float, z: float) -> dict[str, Any]:
        """Record a skipped step (1-based) and the global sample positions [start, end) it read."""
        record = {"step": step, "samples": list(samples), "loss": loss, "z": z}
        self.skipped.append(record)
        return record

    def rewound_range(self, step: int) -> dict[str, Any] | None:
        """The rewind record whose skipped steps (1-based, inclusive) contain `step`, if any."""
        return next((r for r in self.rewound if r["steps"][0] <= step <= r["steps"][1]), None)

    def record(self, step: int, loss: float, grad_norm: float | None) -> float | None:
        """After a normal update: add it to the window, unless its gradient norm is a spike
        (then flagged and left out). Returns the gradient norm's z-score (None: not judged)."""
        z = None
        if grad_norm is not None and len(self.grad_norms) >= self.min_history:
            z = z_score(grad_norm, list(self.grad_norms))
            if z is not None and z > self.grad_norm_z:
                self.flagged.append({"step": step, "grad_norm": grad_norm, "z": z})
                return z
        if math.isfinite(loss):
            self.losses.append(loss)
        if grad_norm is not None and math.isfinite(grad_norm):
            self.grad_norms.append(grad_norm)
        return z

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms),
                "skipped": list(self.skipped), "flagged": list(self.flagged), "rewound": list(self.rewound)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.losses = deque(state.get("losses", []), maxlen=self.window)
        self.grad_norms = deque(state.get("grad_norms", []), maxlen=self.window)
        self.skipped = list(state.get("skipped", []))
        self.flagged = list(state.get("flagged", []))
        self.rewound = list(state.get("rewound", []))
