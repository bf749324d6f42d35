"""Reading a job's heartbeats (`megatiny.heartbeat`): progress, dead ranks, who a hang is on."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from megatiny.heartbeat import Beat


def process_state(pid: int) -> str | None:
    """The state letter of a local process (R, S, D, T, Z, ...), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_local(beat: Beat) -> bool:
    return beat.host == socket.gethostname()


def dead_ranks(beats: dict[int, Beat]) -> list[Beat]:
    """Local ranks whose process is gone (or a zombie) without having finished."""
    return [b for b in beats.values()
            if b.phase != "done" and is_local(b) and process_state(b.pid) in (None, "Z", "X")]


@dataclass
class Progress:
    """When the job last moved, by the supervisor's own clock (so hosts' clocks do not matter):
    any change of any rank's (step, phase) counts."""

    since: float
    signature: tuple = ()

    def update(self, beats: dict[int, Beat], now: float) -> None:
        signature = tuple(sorted((r, b.pid, b.step, b.phase) for r, b in beats.items()))
        if signature != self.signature:
            self.signature, self.since = signature, now

    def stalled_for(self, now: float) -> float:
        return now - self.since


def culprit(beats: dict[int, Beat]) -> tuple[Beat | None, str]:
    """The rank a hang is most likely on, and why: a local rank that is stopped (state T) or in
    uninterruptible sleep (D), else the rank furthest behind (lowest step, then lowest rank).
    (None, why) when no rank has reported, or ranks of the recorded world never did."""
    if not beats:
        return None, "no rank ever reported a heartbeat"
    world = max(b.world_size for b in beats.values())
    silent = sorted(set(range(world)) - set(beats))
    if silent:
        return None, f"rank(s) {silent} never reported a heartbeat"
    for beat in sorted(beats.values(), key=lambda b: b.rank):
        state = process_state(beat.pid) if is_local(beat) else None
        if state in ("T", "t", "D"):
            return beat, f"its process is {'stopped' if state in ('T', 't') else 'in uninterruptible sleep'}"
    behind = min(beats.values(), key=lambda b: (b.step, b.rank))
    return behind, "furthest behind"


def describe(beat: Beat, what: str = "stopped") -> str:
    """e.g. "rank 1 on host node2 (pid 4242) stopped at step 7 while saving"."""
    where = " while saving" if beat.phase == "save" else " during set-up" if beat.phase == "setup" else ""
    return f"rank {beat.rank} on host {beat.host} (pid {beat.pid}) {what} at step {beat.step}{where}"
