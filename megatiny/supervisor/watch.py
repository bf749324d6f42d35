"""Reading a job's heartbeats (`megatiny.heartbeat`): progress, dead ranks, who a hang or a failure
is on."""
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


# what `job.remote_states` says of a rank on another host (else: why its host did not answer)
ALIVE, GONE = "alive", "gone"


def is_local(beat: Beat) -> bool:
    return beat.host == socket.gethostname()


def stuck_state(beat: Beat) -> str | None:
    """"stopped" (state T) or "in uninterruptible sleep" (D) for a local rank's process, else None."""
    state = process_state(beat.pid) if is_local(beat) else None
    return "stopped" if state in ("T", "t") else "in uninterruptible sleep" if state == "D" else None


def dead_ranks(beats: dict[int, Beat]) -> list[Beat]:
    """Local ranks whose process is gone (or a zombie) without having finished, by rank."""
    return [b for _, b in sorted(beats.items())
            if b.phase != "done" and is_local(b) and process_state(b.pid) in (None, "Z", "X")]


def unreported(beats: dict[int, Beat], gone: list[int]) -> list[int]:
    """Ranks whose end is not known yet: not finished, no error reported, and not a local rank
    whose process is gone (`gone`)."""
    return [r for r, b in sorted(beats.items()) if not b.settled and r not in gone]


@dataclass(frozen=True)
class Blame:
    """Who a failure is most likely on (`beat`, None when no rank can be named), what happened to
    it (`what`, a sentence), and the other ranks that fit as well (`suspects`, the named one first)."""

    beat: Beat | None
    what: str
    suspects: tuple[int, ...] = ()
    died: bool = False
    """the rank at fault is gone, or went silent on another host, without reporting an error"""


def blame(beats: dict[int, Beat], gone: list[int], remote: dict[int, str] | None = None) -> Blame:
    """The rank a failure is on, once ranks died or failed. `gone`: local ranks whose process is
    gone, in the order the supervisor saw them go; `remote`: what is known of ranks on other hosts
    (`job.remote_states`: "alive", "gone", or why their host did not answer). Ranks that fail
    because a peer died say so with an error (a closed connection), so the rank at fault is, best
    first:
      1. a rank whose process is gone without an error (SIGKILL, a crash in C, the OOM killer):
         local ones in the order seen, then other hosts' ones;
      2. (no rank named) ranks of the world that never reported a heartbeat;
      3. a rank of another host that reported no error and could not be asked (its host does not
         answer, or it was not asked);
      4. a local rank stopped (T) or in uninterruptible sleep (D) that reported no error (its
         peers gave up waiting for it);
      5. the first rank to report an error (by the hosts' clocks): the others failed of it, and
         ranks still running without an error are on their way to failing."""
    remote = remote or {}
    failed = sorted((b for b in beats.values() if b.error is not None), key=lambda b: (b.time, b.rank))
    after = _errors(failed)
    waiting = [beats[r] for r in unreported(beats, gone)]
    died = ([beats[r] for r in gone if not beats[r].settled]
            + [b for b in waiting if remote.get(b.rank) == GONE])
    if died:
        how = " (checked over ssh)" if not is_local(died[0]) else ""
        return Blame(died[0], describe(died[0], "died") + f" without reporting an error{how}" + after,
                     tuple(b.rank for b in died), died=True)
    missing = _never_reported(beats)
    if missing is not None:
        return Blame(None, missing[1] + after, tuple(missing[0]))
    silent = [b for b in waiting if not is_local(b) and remote.get(b.rank) != ALIVE]
    if silent:
        why = remote.get(silent[0].rank, "not asked")
        return Blame(silent[0], describe(silent[0], "went silent") + f" (on another host: {why}; it reported "
                     "no error)" + after, tuple(b.rank for b in silent), died=True)
    states = {b.rank: stuck_state(b) for b in waiting}
    stuck = [b for b in waiting if states[b.rank] is not None]
    if stuck:
        return Blame(stuck[0], describe(stuck[0], f"was {states[stuck[0].rank]}") + " and reported no error"
                     + after, tuple(b.rank for b in stuck))
    if not failed:
        return Blame(None, "no rank reported an error or died")
    first = failed[0]
    running = f"; rank(s) {[b.rank for b in waiting]} still running" if waiting else ""
    return Blame(first, describe(first, "failed") + f": {first.error}" + _errors(failed[1:], "then ")
                 + running, tuple(b.rank for b in failed))


def _errors(failed: list[Beat], lead: str = "") -> str:
    """"; ranks [1, 2] failed (first: rank 1: RuntimeError: Connection closed by peer)", or ""."""
    if not failed:
        return ""
    error = failed[0].error if len(failed[0].error) <= 160 else failed[0].error[:157] + "..."
    return f"; {lead}rank(s) {sorted(b.rank for b in failed)} failed (first: rank {failed[0].rank}: {error})"


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
    missing = _never_reported(beats)
    if missing is not None:
        return None, missing[1]
    for beat in sorted(beats.values(), key=lambda b: b.rank):
        state = stuck_state(beat)
        if state is not None:
            return beat, f"its process is {state}"
    behind = min(beats.values(), key=lambda b: (b.step, b.rank))
    return behind, "furthest behind"


def _never_reported(beats: dict[int, Beat]) -> tuple[list[int], str] | None:
    """The ranks of the recorded world without a heartbeat, and a sentence; None when all have one."""
    if not beats:
        return [], "no rank ever reported a heartbeat"
    world = max(b.world_size for b in beats.values())
    silent = sorted(set(range(world)) - set(beats))
    return (silent, f"rank(s) {silent} never reported a heartbeat") if silent else None


def describe(beat: Beat, what: str = "stopped") -> str:
    """e.g. "rank 1 on host node2 (pid 4242) stopped at step 7 while saving"."""
    where = " while saving" if beat.phase == "save" else " during set-up" if beat.phase == "setup" else ""
    return f"rank {beat.rank} on host {beat.host} (pid {beat.pid}) {what} at step {beat.step}{where}"
