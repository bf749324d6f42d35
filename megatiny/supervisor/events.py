"""The supervisor's event log: each event printed as one line and appended as a JSON line to
SAVE_DIR/supervisor_events.jsonl (kept in memory until the save dir is known)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

EVENTS_FILE = "supervisor_events.jsonl"


class EventLog:
    """`emit(event, message, **fields)`: prints `[supervise] message` and records
    {"time", "event", "message", **fields}."""

    def __init__(self, path: str | os.PathLike | None = None, stream: TextIO | None = None):
        self.path = Path(path) if path is not None else None
        self.stream = stream
        self.pending: list[dict[str, Any]] = []

    def set_path(self, path: str | os.PathLike) -> None:
        """Where the events go from now on; those recorded so far are written there first."""
        if self.path is not None:
            return
        self.path = Path(path)
        pending, self.pending = self.pending, []
        for record in pending:
            self._append(record)

    def emit(self, event: str, message: str, **fields: Any) -> dict[str, Any]:
        record = {"time": round(time.time(), 3), "event": event, "message": message, **fields}
        print(f"[supervise] {message}", file=self.stream or sys.stdout, flush=True)
        if self.path is None:
            self.pending.append(record)
        else:
            self._append(record)
        return record

    def _append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
