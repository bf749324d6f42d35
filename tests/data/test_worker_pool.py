"""megatiny.data.worker_pool and the multi-worker preprocess: every failure or interrupt ends the
run within seconds with the error, no worker left behind and no output written."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatiny.data.tokenizer import train_sentencepiece
from megatiny.data.worker_pool import OrderedWorkerPool, WorkerError
from tests.data.corpus import make_texts
from tests.helpers import REPO_ROOT, output_tail, run_command, timeout_s


class Slow:
    """A worker's function: task (value, seconds) -> value squared after sleeping; special values
    fail: -1 raises, -2 ends the worker's process, -3 hangs (as scale, it hangs the start)."""

    def __init__(self, scale: int):
        self.scale = scale
        if scale == -3:
            time.sleep(3600)

    def __call__(self, task):
        value, seconds = task
        if value == -1:
            raise ValueError("task -1 is refused")
        if value == -2:
            os._exit(3)
        time.sleep(3600 if value == -3 else seconds)
        return value * value * self.scale


def _gone(pids) -> bool:
    """True when none of `pids` is a process (zombies included: they were reaped)."""
    return not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_results_come_in_input_order_whatever_finishes_first():
    tasks = [(i, 0.05 if i % 3 == 0 else 0.0) for i in range(40)]
    with OrderedWorkerPool(Slow, (2,), workers=3, max_in_flight=5) as pool:
        pids = [w.process.pid for w in pool._workers]
        assert list(pool.map_ordered(tasks)) == [2 * i * i for i in range(40)]
    assert _gone(pids)


@pytest.mark.parametrize("bad, message", [
    ((-1, 0), r"(?s)worker failed on \(-1, 0\):\n.*ValueError: task -1 is refused"),
    ((-2, 0), r"worker pid \d+ exited with code 3 while working on \(-2, 0\)"),
    ((-3, 0), r"worker pid \d+ sent nothing for 1 s while working on \(-3, 0\)"),
], ids=["raises", "dies", "stalls"])
def test_a_failing_dying_or_stalled_worker_ends_the_map_and_every_worker(bad, message):
    tasks = [(i, 0.01) for i in range(6)] + [bad] + [(i, 0.01) for i in range(50)]
    started = time.monotonic()
    with pytest.raises(WorkerError, match=message):
        with OrderedWorkerPool(Slow, (1,), workers=2, stall_timeout_s=1.0) as pool:
            pids = [w.process.pid for w in pool._workers]
            for _ in pool.map_ordered(tasks):
                pass
    assert time.monotonic() - started < 15
    assert _gone(pids)


def test_a_factory_that_fails_or_hangs_is_reported():
    with pytest.raises(WorkerError, match=r"(?s)worker failed on \(1, 0\):.*TypeError"):
        with OrderedWorkerPool(Slow, ("too", "many"), workers=1) as pool:
            list(pool.map_ordered([(1, 0)]))
    with pytest.raises(WorkerError, match=r"worker pid \d+ did not start for 2 s while working on \(1, 0\)"):
        with OrderedWorkerPool(Slow, (-3,), workers=1, start_timeout_s=2.0) as pool:
            pids = [w.process.pid for w in pool._workers]
            list(pool.map_ordered([(1, 0)]))
    assert _gone(pids)


STRESS = """
import json, sys, time
from pathlib import Path
import torch
from megatiny.data.preprocess import BadLineError, EmptyOutputError, preprocess

torch.ones(64, 64) @ torch.ones(64, 64)      # torch's threads are alive, as in a training process
d, model, repeats = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
started = time.monotonic()
for i in range(repeats):
    try:
        preprocess([str(d / "bad.jsonl")], d / "out", model, strict=True, workers=2, progress=True)
    except BadLineError as e:
        assert "bad.jsonl:5: invalid JSON" in str(e), e
    else:
        sys.exit("no BadLineError")
    assert not list(d.glob("out*")) and not list(d.glob(".out*")), list(d.iterdir())
for i in range(5):
    try:
        preprocess([str(d / "bad.jsonl")], d / "out", model, workers=2, progress=True, max_bad_fraction=0)
    except EmptyOutputError as e:
        assert "--max-bad-fraction" in str(e), e
    else:
        sys.exit("no EmptyOutputError")
    assert not list(d.glob("out*")) and not list(d.glob(".out*")), list(d.iterdir())
print(f"stress done: {repeats} strict runs in {time.monotonic() - started:.1f} s")
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tokenizer, a small file whose line 5 is bad, and a big good file (seconds of work)."""
    d = tmp_path_factory.mktemp("pool")
    model = train_sentencepiece(make_texts(1500, seed=0), d / "spm", 500)
    lines = [json.dumps({"text": t}) for t in make_texts(1500, seed=1)]
    lines[4] = '{"text": "unterminated'
    (d / "bad.jsonl").write_text("\n".join(lines) + "\n")
    block = "\n".join(json.dumps({"text": t}) for t in make_texts(4000, seed=2)) + "\n"
    (d / "big.jsonl").write_text(block * 4)           # ~5 MB, fed through a pipe that stays open
    return d, str(model)


def test_strict_multi_worker_runs_never_hang_with_threads_and_progress_alive(corpus):
    d, model = corpus
    repeats = 100
    budget = timeout_s(extra_s=repeats * 1.2)
    r = run_command([sys.executable, "-c", STRESS, str(d), model, str(repeats)], timeout=budget)
    assert r.returncode == 0, output_tail(r.stdout)
    assert f"stress done: {repeats} strict runs" in r.stdout


def test_command_exits_with_file_and_line_of_a_bad_line(corpus, tmp_path):
    d, model = corpus
    r = run_command([sys.executable, "-m", "megatiny", "preprocess", "--input", str(d / "bad.jsonl"),
                     "--output-prefix", str(tmp_path / "out"), "--tokenizer", model, "--strict",
                     "--workers", "2"], timeout=timeout_s(extra_s=30))
    assert r.returncode == 1, r.stdout
    assert "bad.jsonl:5: invalid JSON" in r.stdout
    assert not list(tmp_path.iterdir())


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _start_big_run(corpus, out: Path) -> tuple[subprocess.Popen, list[int], subprocess.Popen]:
    """`megatiny preprocess --workers 2` reading big.jsonl through a named pipe whose writer sends
    the whole file and then keeps the pipe open (up to 300 s), so the input never ends by itself and
    the run is certainly mid-file when the test stops it, however fast or loaded the machine.
    Returned once the run is writing output: (the run, its two workers, the pipe's writer)."""
    d, model = corpus
    fifo = out.parent / f"{out.name}.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", 'exec >"$1"; cat "$2"; exec sleep 300', "sh", str(fifo),
                               str(d / "big.jsonl")], start_new_session=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "megatiny", "preprocess", "--input", str(fifo),
         "--output-prefix", str(out / "big"), "--tokenizer", model, "--workers", "2", "--append-eod"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Ctrl-C as in a terminal, even when this test run inherited SIGINT ignored (nohup, some CI
        # runners): Python then installs no KeyboardInterrupt handler of its own.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout_s(extra_s=30)
    while time.monotonic() < deadline and process.poll() is None:
        written = [p for p in out.glob(".big*/data.bin") if p.stat().st_size > 0]
        if written and len(_children(process.pid)) == 2:
            return process, _children(process.pid), writer
        time.sleep(0.05)
    process.kill()
    os.killpg(writer.pid, signal.SIGKILL)
    pytest.fail(f"the run did not start writing in time:\n{process.communicate(timeout=10)[0]}")


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "kill a worker"])
def test_interrupt_or_dead_worker_mid_file_exits_in_seconds_writing_nothing(corpus, tmp_path, stop):
    out = tmp_path / "out"
    out.mkdir()
    process, workers, pipe_writer = _start_big_run(corpus, out)
    if stop == "kill a worker":
        os.kill(workers[0], signal.SIGKILL)
    else:
        process.send_signal(getattr(signal, stop))
    started = time.monotonic()
    try:
        output, _ = process.communicate(timeout=timeout_s(launches=0, extra_s=5))
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running 5 s after {stop}:\n{process.communicate(timeout=10)[0][-3000:]}")
    finally:
        os.killpg(pipe_writer.pid, signal.SIGKILL)
        pipe_writer.wait(timeout=10)
    assert time.monotonic() - started < 5 * float(os.environ.get("MEGATINY_TEST_TIMEOUT_SCALE", "1"))
    # a killed worker is named with the chunk it held, or none: between two chunks it may wait for
    # the next one (the run keeps at most 2 x workers chunks in flight, written in input order)
    expected = {"SIGINT": (130, re.escape("interrupted: nothing written")),
                "SIGTERM": (143, re.escape("terminated (SIGTERM): nothing written")),
                "kill a worker": (1, f"worker pid {workers[0]} was killed by signal 9 while working on "
                                     f"(the 512 records from {re.escape(str(out.parent))}|no task)")}[stop]
    assert process.returncode == expected[0], output[-3000:]
    assert re.search(expected[1], output), output[-3000:]
    assert not list(out.iterdir())
    assert _gone(workers)
