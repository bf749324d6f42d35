"""When a supervisor stops restarting: pure rules over the outcomes of the launches so far."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RestartPolicy:
    """Give up after `max_restarts` restarts in a row that produced no new checkpoint, and at once
    when two launches in a row failed before their first step (a configuration or environment
    error: restarting cannot fix it)."""

    max_restarts: int = 3
    without_checkpoint: int = 0
    """failed launches in a row that saved no new checkpoint"""
    before_first_step: int = 0
    """failed launches in a row that never reached their first step"""

    def __post_init__(self) -> None:
        value = self.max_restarts
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"--max-restarts must be an integer >= 0, got {self.max_restarts!r}")

    def after_failure(self, reached_first_step: bool, new_checkpoint: bool) -> str | None:
        """Record a failed launch; the reason to give up, or None to restart."""
        self.before_first_step = 0 if reached_first_step else self.before_first_step + 1
        self.without_checkpoint = 0 if new_checkpoint else self.without_checkpoint + 1
        if self.before_first_step >= 2:
            return ("the launch failed before its first step twice in a row: a configuration or "
                    "environment error, not a fault (see the job's output above)")
        if self.without_checkpoint > self.max_restarts:
            return (f"{self.max_restarts} restart(s) in a row produced no new checkpoint "
                    f"(--max-restarts {self.max_restarts})")
        return None
