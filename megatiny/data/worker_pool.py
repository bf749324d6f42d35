"""Worker processes driven from the calling thread alone, with a shutdown that cannot deadlock.

    with OrderedWorkerPool(ChunkEncoder, (options,), workers=4) as pool:
        for result in pool.map_ordered(chunks):      # results in input order
            ...

Each worker is a fresh interpreter (running `run_worker` below, so nothing of the
parent's threads, locks or imports is inherited, as with `fork`) that builds `factory(*args)` once
and then applies it to every task it reads. Tasks and results travel as length-prefixed pickles
over the worker's stdin/stdout pipes; the worker's own stdout (prints of a tokenizer library) goes
to stderr. Why the parent cannot hang, unlike `multiprocessing.Pool` torn down with tasks in flight:
  * the parent starts no thread: its pipe ends are non-blocking and all of its waiting is one
    `selectors` wait with a timeout, so a worker that stops reading or writing cannot block it;
  * a worker that dies shows as end-of-file on its pipe and is reported with its exit code and the
    task it held; a worker silent for `stall_timeout_s` with a task (or not started within
    `start_timeout_s`) is reported as stalled;
  * shutdown closes the pipes, SIGKILLs every worker still alive (a signal it cannot ignore) and
    reaps each with a deadline: there is no queue to drain and no thread to join.
Workers ignore SIGINT (the parent decides and kills them) and exit on end-of-file of their stdin,
so they also go when the parent is killed.
"""
from __future__ import annotations

import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_HEADER = struct.Struct("<Q")      # frame: payload length, then the pickled payload
_READ_BYTES = 1 << 20
REAP_TIMEOUT_S = 5.0
PIPE_BYTES = 1 << 20


class WorkerError(RuntimeError):
    """A worker raised, died or stalled; the message names the task and what happened."""


def _frame(obj) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


@dataclass
class _Worker:
    process: subprocess.Popen
    to_worker: int                      # our non-blocking write end of its stdin
    from_worker: int                    # our non-blocking read end of its stdout
    outgoing: deque = field(default_factory=deque)      # memoryviews still to write
    incoming: bytearray = field(default_factory=bytearray)
    tasks: deque = field(default_factory=deque)         # (sequence number, task) sent, in order
    last_heard: float = field(default_factory=time.monotonic)
    ready: bool = False                 # it has built its function (startup is timed separately)

    def exit_description(self) -> str:
        try:
            code = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "closed its output but is still running"
        return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


class OrderedWorkerPool:
    """`workers` processes computing `factory(*args)(task)` for each task; see the module doc.

    `describe(task)` names a task in error messages (e.g. its file:line). At most `max_in_flight`
    tasks (default 2 x workers) are sent out or waiting to be yielded, so memory stays bounded."""

    def __init__(self, factory: Callable, args: tuple, *, workers: int, describe: Callable = repr,
                 max_in_flight: int | None = None, stall_timeout_s: float = 600.0,
                 start_timeout_s: float = 300.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.describe = describe
        self.max_in_flight = max_in_flight or 2 * workers
        self.stall_timeout_s = stall_timeout_s
        self.start_timeout_s = start_timeout_s
        self._selector = selectors.DefaultSelector()
        self._workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self._workers.append(self._start_worker(factory, args))
        except BaseException:
            self.close()
            raise

    def _start_worker(self, factory: Callable, args: tuple) -> _Worker:
        process = subprocess.Popen([sys.executable, "-c", _WORKER_PROGRAM], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, bufsize=0)
        worker = _Worker(process, process.stdin.fileno(), process.stdout.fileno())
        for fd in (worker.to_worker, worker.from_worker):
            os.set_blocking(fd, False)
            _enlarge_pipe(fd)
        worker.outgoing.append(memoryview(_frame((factory, args))))
        return worker

    def __enter__(self) -> OrderedWorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def map_ordered(self, tasks: Iterable) -> Iterator:
        """Results of every task, in the order of `tasks`; raises WorkerError on a worker's failure."""
        pending = iter(tasks)
        exhausted = False
        sent = yielded = 0
        ready: dict[int, object] = {}
        while True:
            while not exhausted and sent - yielded < self.max_in_flight:
                task = next(pending, _END)
                if task is _END:
                    exhausted = True
                    break
                worker = min(self._workers, key=lambda w: len(w.tasks))
                if not worker.tasks and worker.ready:
                    worker.last_heard = time.monotonic()
                worker.tasks.append((sent, task))
                worker.outgoing.append(memoryview(_frame(task)))
                sent += 1
            if yielded in ready:
                yield ready.pop(yielded)
                yielded += 1
            elif exhausted and yielded == sent:
                return
            else:
                self._exchange(ready, timeout_s=1.0)

    def _exchange(self, ready: dict, timeout_s: float) -> None:
        """Write what is queued, read what has arrived (into `ready`), for at most `timeout_s`."""
        for worker in self._workers:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if worker.outgoing else 0)
            self._selector.register(worker.from_worker, selectors.EVENT_READ, worker)
            if events & selectors.EVENT_WRITE:
                self._selector.register(worker.to_worker, selectors.EVENT_WRITE, worker)
        try:
            for key, mask in self._selector.select(timeout_s):
                if mask & selectors.EVENT_WRITE:
                    self._write(key.data)
                else:
                    self._read(key.data, ready)
        finally:
            for key in list(self._selector.get_map().values()):
                self._selector.unregister(key.fileobj)
        now = time.monotonic()
        for worker in self._workers:
            limit = self.stall_timeout_s if worker.ready else self.start_timeout_s
            if worker.tasks and now - worker.last_heard > limit:
                task = self.describe(worker.tasks[0][1])
                what = "sent nothing" if worker.ready else "did not start"
                raise WorkerError(f"worker pid {worker.process.pid} {what} for {limit:.0f} s "
                                  f"while working on {task}")

    def _write(self, worker: _Worker) -> None:
        while worker.outgoing:
            view = worker.outgoing[0]
            try:
                written = os.write(worker.to_worker, view)
            except BlockingIOError:
                return
            except BrokenPipeError:
                self._raise_dead(worker)
            if written == len(view):
                worker.outgoing.popleft()
            else:
                worker.outgoing[0] = view[written:]

    def _read(self, worker: _Worker, ready: dict) -> None:
        ended = False
        while not ended:
            try:
                data = os.read(worker.from_worker, _READ_BYTES)
            except BlockingIOError:
                break
            ended = not data
            worker.incoming += data
            worker.last_heard = time.monotonic()
        self._take_frames(worker, ready)      # a worker's last words (its error) come before its end
        if ended:
            self._raise_dead(worker)

    def _take_frames(self, worker: _Worker, ready: dict) -> None:
        buffer = worker.incoming
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            if len(buffer) < _HEADER.size + size:
                break
            status, value = pickle.loads(bytes(buffer[_HEADER.size:_HEADER.size + size]))
            del buffer[:_HEADER.size + size]
            if status == "ready":
                worker.ready = True
                continue
            if status != "ok":
                task = worker.tasks[0][1] if worker.tasks else None
                raise WorkerError(f"worker failed on {self.describe(task)}:\n{value}")
            sequence, _ = worker.tasks.popleft()
            ready[sequence] = value

    def _raise_dead(self, worker: _Worker):
        doing = self.describe(worker.tasks[0][1]) if worker.tasks else "no task"
        raise WorkerError(f"worker pid {worker.process.pid} {worker.exit_description()} while working on "
                          f"{doing} (its messages, if any, are above)")

    def close(self) -> None:
        """Stop every worker: close the pipes, SIGKILL what is still running, reap with a deadline."""
        for worker in self._workers:
            for stream in (worker.process.stdin, worker.process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        for worker in self._workers:
            if worker.process.poll() is None:
                worker.process.kill()
        deadline = time.monotonic() + REAP_TIMEOUT_S
        for worker in self._workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"warning: worker pid {worker.process.pid} did not end within {REAP_TIMEOUT_S:.0f} s "
                      f"of SIGKILL; leaving it", file=sys.stderr)
        self._workers.clear()
        self._selector.close()


_END = object()


def _enlarge_pipe(fd: int) -> None:
    """Room for a whole chunk in the pipe (Linux: up to 1 MiB unprivileged), so that a worker busy
    with one chunk does not leave the next one half-sent: fewer wake-ups on both sides."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass


def _read_exactly(stream, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


# This very megatiny (not whatever `megatiny` the working directory holds) runs in the worker.
_WORKER_PROGRAM = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
                   f"from megatiny.data.worker_pool import run_worker; sys.exit(run_worker())")


def run_worker() -> int:
    """A worker: build the function from the first frame, then answer one frame per task frame."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                   # a library's prints must not corrupt the result stream
    tasks = sys.stdin.buffer

    def receive():
        header = _read_exactly(tasks, _HEADER.size)
        if header is None:
            return _END
        payload = _read_exactly(tasks, _HEADER.unpack(header)[0])
        return _END if payload is None else pickle.loads(payload)

    def send(status: str, value) -> None:
        results.write(_frame((status, value)))
        results.flush()

    setup = receive()
    if setup is _END:
        return 0
    try:
        factory, args = setup
        function = factory(*args)
    except Exception:
        send("error", traceback.format_exc())
        return 1
    send("ready", None)
    try:
        while (task := receive()) is not _END:
            try:
                result = ("ok", function(task))
            except Exception:
                result = ("error", traceback.format_exc())
            send(*result)
    except BrokenPipeError:         # the parent went away: nobody to answer
        return 0
    return 0
