"""Per-rank heartbeats for `megatiny supervise`, and the stack dump a supervisor asks for.

When `$MEGATINY_HEARTBEAT_DIR` is set (the supervisor sets it for the job it launches), each rank
writes DIR/rank{R}.json at set-up, at the start of every step, before every save and at the end:

    {"rank": R, "world_size": W, "host": "node1", "pid": 1234, "step": S, "phase": "setup" |
     "step" | "save" | "done", "time": UNIX_SECONDS, "save_dir": "...", "resume": "auto",
     "model_parallel": TPxPPxCP, "micro_batch_size": M, "global_batch_size": G, "train_steps": N,
     "error": null}

(the sizes let a supervisor that drops a host check that the ranks left still fit the run).
A rank whose training raises writes its last step and phase once more with `error` set (the
exception's type and first line): a supervisor can then tell ranks that failed (often of a peer's
death: a closed connection) from one that died without a word (SIGKILL, a crash in C, the OOM
killer), which is where the fault is.

`step` is the 1-based step the rank is working on (`setup`: the step it starts from). Each write
goes to a temporary name and is renamed over the old file, so a reader sees a whole record; no
fsync (a heartbeat is worthless after a crash of the host). One small write per step.

A supervisor asks the job to save a checkpoint and stop (as SIGTERM would, but on every host
at once) by creating DIR/stop (`request_stop`); each rank looks for it at the start of every step.

`install_stack_dump` makes SIGUSR1 print every thread's Python stack to stderr (the rank's log):
the supervisor sends it to a hung job's ranks before killing them.
"""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HEARTBEAT_DIR_ENV = "MEGATINY_HEARTBEAT_DIR"
ERROR_CHARS = 300  # of a failed rank's error in its heartbeat
STOP_FILE = "stop"


@dataclass(frozen=True)
class Beat:
    """One rank's last heartbeat."""

    rank: int
    world_size: int
    host: str
    pid: int
    step: int
    phase: str
    time: float
    save_dir: str | None = None
    resume: str | None = None
    model_parallel: int | None = None
    """tensor x pipeline x context: the world size must stay a multiple of it"""
    micro_batch_size: int | None = None
    global_batch_size: int | None = None
    train_steps: int | None = None
    """the run's last step: a rank "done" at it finished the run (not a stop on request)"""
    error: str | None = None
    """set when the rank's training raised: its type and first line, e.g. "OSError: disk full"."""

    @property
    def started(self) -> bool:
        """The rank got past set-up to its first step."""
        return self.phase != "setup"

    @property
    def settled(self) -> bool:
        """The rank said how it ended: finished, or failed with an error."""
        return self.phase == "done" or self.error is not None


class Heartbeat:
    """The writer of one rank's heartbeat file."""

    def __init__(self, directory: str | os.PathLike, rank: int, world_size: int, *,
                 save_dir: str | None = None, resume: str | None = None, **sizes: int | None):
        """`sizes`: model_parallel, micro_batch_size, global_batch_size, train_steps (see `Beat`)."""
        self.path = Path(directory) / f"rank{rank}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size, self.save_dir, self.resume = rank, world_size, save_dir, resume
        self.sizes = sizes
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.warned = False
        self.step, self.phase = 0, "setup"

    @classmethod
    def from_env(cls, rank: int, world_size: int, **details) -> Heartbeat | None:
        """A heartbeat in $MEGATINY_HEARTBEAT_DIR (with the stack dump on SIGUSR1), or None when
        the run is not supervised."""
        directory = os.environ.get(HEARTBEAT_DIR_ENV)
        if not directory:
            return None
        install_stack_dump()
        return cls(directory, rank, world_size, **details)

    def beat(self, step: int, phase: str = "step") -> None:
        """Write the heartbeat; a failed write (full disk, lost mount) is reported once and never
        stops training (the supervisor then sees no progress and acts on that)."""
        self.step, self.phase = step, phase
        self._write(Beat(self.rank, self.world_size, self.host, self.pid, step, phase, time.time(),
                         self.save_dir, self.resume, **self.sizes))

    def fail(self, error: BaseException) -> None:
        """The last step and phase again, with `error` (its type and first line, at most
        `ERROR_CHARS`): training raised and the process is about to end."""
        lines = str(error).strip().splitlines()
        text = type(error).__name__ + (f": {lines[0]}" if lines else "")
        self._write(Beat(self.rank, self.world_size, self.host, self.pid, self.step, self.phase, time.time(),
                         self.save_dir, self.resume, **self.sizes, error=text[:ERROR_CHARS]))

    def stop_requested(self) -> bool:
        """Whether the supervisor asked the job to save and stop (DIR/stop exists)."""
        return (self.path.parent / STOP_FILE).exists()

    def _write(self, beat: Beat) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(beat)))
            os.replace(tmp, self.path)
        except OSError as e:
            if not self.warned:
                print(f"[megatiny] rank {self.rank}: cannot write the heartbeat {self.path}: {e}", flush=True)
                self.warned = True


def read_beats(directory: str | os.PathLike) -> dict[int, Beat]:
    """rank -> its last heartbeat in `directory` (files being replaced or unreadable are skipped)."""
    out = {}
    directory = Path(directory)
    if not directory.is_dir():
        return out
    for path in directory.glob("rank*.json"):
        try:
            beat = Beat(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        out[beat.rank] = beat
    return out


def clear_beats(directory: str | os.PathLike) -> None:
    """Remove the heartbeats (and the stop request) of an earlier launch."""
    for path in Path(directory).glob("rank*.json"):
        path.unlink(missing_ok=True)
    (Path(directory) / STOP_FILE).unlink(missing_ok=True)


def request_stop(directory: str | os.PathLike) -> None:
    """Ask the job whose ranks beat in `directory` to save a checkpoint at the end of the step and stop."""
    (Path(directory) / STOP_FILE).touch()


def install_stack_dump(signum: int = signal.SIGUSR1) -> bool:
    """`signum` prints every thread's Python stack to stderr (the process keeps running). Where
    sys.stderr is no file (captured, in a notebook) the process's own stderr is used; False when
    neither can be."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            faulthandler.register(signum, file=stream, all_threads=True, chain=False)
            return True
        except (AttributeError, ValueError, OSError):  # no fileno (io.UnsupportedOperation), or None
            continue
    return False
