"""The supervisor's pure parts, in-process: give-up rules, the event log, reading heartbeats,
naming the rank a hang or a failure is on (with real stopped and dead processes), the stack-dump
signal."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from megatiny.heartbeat import Beat, Heartbeat, clear_beats, read_beats
from megatiny.supervisor.events import EventLog, read_events
from megatiny.supervisor.policy import RestartPolicy
from megatiny.supervisor.supervise import Options, exit_status, latest_step
from megatiny.supervisor.watch import (
    Progress,
    blame,
    culprit,
    dead_ranks,
    describe,
    process_state,
    unreported,
)

HOST = socket.gethostname()


def _beat(rank: int, step: int, pid: int = 1, phase: str = "step", world: int = 2, host: str = HOST,
          error: str | None = None, at: float | None = None) -> Beat:
    return Beat(rank, world, host, pid, step, phase, time.time() if at is None else at, "/ckpt", "auto",
                error=error)


CLOSED = "RuntimeError: Connection closed by peer [10.77.0.2]:41234"


def test_gives_up_after_n_restarts_without_a_new_checkpoint():
    policy = RestartPolicy(max_restarts=2)
    assert policy.after_failure(True, new_checkpoint=False) is None     # restart 1
    assert policy.after_failure(True, new_checkpoint=True) is None      # progress: the count restarts
    assert policy.after_failure(True, new_checkpoint=False) is None     # restart 1
    assert policy.after_failure(True, new_checkpoint=False) is None     # restart 2
    reason = policy.after_failure(True, new_checkpoint=False)
    assert reason is not None and "2 restart(s) in a row produced no new checkpoint" in reason
    assert RestartPolicy(max_restarts=0).after_failure(True, False) is not None
    with pytest.raises(ValueError, match="--max-restarts"):
        RestartPolicy(max_restarts=-1)


def test_two_launches_failing_before_their_first_step_give_up_at_once():
    policy = RestartPolicy(max_restarts=10)
    assert policy.after_failure(False, False) is None
    assert policy.after_failure(True, False) is None      # got going: not a config error
    assert policy.after_failure(False, False) is None
    assert "before its first step twice" in policy.after_failure(False, False)


def test_events_wait_for_the_save_dir_then_go_to_its_file(tmp_path, capsys):
    log = EventLog()
    log.emit("launch", "launch 1", launch=1)
    assert "[supervise] launch 1" in capsys.readouterr().out
    log.set_path(tmp_path / "events.jsonl")
    log.emit("fault", "rank 1 died", rank=1, step=7)
    events = read_events(tmp_path / "events.jsonl")
    assert [e["event"] for e in events] == ["launch", "fault"]
    assert events[1]["rank"] == 1 and events[1]["step"] == 7 and events[0]["time"] <= events[1]["time"]


def test_heartbeats_round_trip_and_clear(tmp_path):
    for rank in range(2):
        beat = Heartbeat(tmp_path, rank, 2, save_dir="/ckpt", resume="auto")
        beat.beat(0, "setup")
        beat.beat(3 + rank)
    beats = read_beats(tmp_path)
    assert sorted(beats) == [0, 1] and beats[1].step == 4 and beats[1].pid == os.getpid()
    assert beats[0].started and not _beat(0, 0, phase="setup").started
    clear_beats(tmp_path)
    assert read_beats(tmp_path) == {}


def test_progress_is_any_change_of_step_or_phase():
    progress = Progress(since=0.0)
    progress.update({0: _beat(0, 3)}, now=1.0)
    progress.update({0: _beat(0, 3)}, now=5.0)     # the same beat again (newer time): no progress
    assert progress.stalled_for(6.0) == 5.0
    progress.update({0: _beat(0, 4)}, now=7.0)
    assert progress.stalled_for(7.5) == 0.5


@pytest.fixture
def sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait(timeout=10)


def test_a_stopped_rank_is_named_before_ranks_that_wait_for_it(sleeper):
    os.kill(sleeper.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while process_state(sleeper.pid) not in ("T", "t") and time.monotonic() < deadline:
        time.sleep(0.05)
    beats = {0: _beat(0, 7, pid=os.getpid()), 1: _beat(1, 7, pid=sleeper.pid)}
    beat, why = culprit(beats)
    assert beat.rank == 1 and "stopped" in why
    assert describe(beat) == f"rank 1 on host {HOST} (pid {sleeper.pid}) stopped at step 7"
    # without a stopped process: the rank furthest behind
    assert culprit({0: _beat(0, 9), 1: _beat(1, 8)})[0].rank == 1
    assert culprit({0: _beat(0, 9)}) == (None, "rank(s) [1] never reported a heartbeat")


def test_dead_ranks_are_found_by_their_pid(sleeper):
    beats = {0: _beat(0, 3, pid=os.getpid()), 1: _beat(1, 3, pid=sleeper.pid),
             2: _beat(2, 3, pid=sleeper.pid, host="elsewhere")}
    assert dead_ranks(beats) == []
    sleeper.kill()
    sleeper.wait(timeout=10)
    assert [b.rank for b in dead_ranks(beats)] == [1]   # another host's pids are not looked up here
    finished = {1: _beat(1, 3, pid=sleeper.pid, phase="done")}
    assert dead_ranks(finished) == []


def test_sigusr1_dumps_the_stacks_and_the_process_lives_on(tmp_path):
    code = ("import os, sys, time\n"
            "os.environ['MEGATINY_HEARTBEAT_DIR'] = sys.argv[1]\n"
            "from megatiny.heartbeat import Heartbeat\n"
            "Heartbeat.from_env(0, 1).beat(1)\n"
            "def waiting_in_a_collective():\n"
            "    time.sleep(3)\n"
            "waiting_in_a_collective()\n"
            "print('still alive', flush=True)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not read_beats(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(read_beats(tmp_path)[0].pid, signal.SIGUSR1)
    out, _ = process.communicate(timeout=30)
    assert "waiting_in_a_collective" in out and "still alive" in out


def test_the_time_limit_depends_on_the_phase():
    options = Options(hang_timeout_s=60, startup_timeout_s=600, save_timeout_s=300)
    assert options.limit_s({}) == 600 and options.limit_s({0: _beat(0, 0, phase="setup")}) == 600
    assert options.limit_s({0: _beat(0, 5), 1: _beat(1, 5)}) == 60
    assert options.limit_s({0: _beat(0, 8, phase="save"), 1: _beat(1, 9)}) == 300
    with pytest.raises(ValueError, match="save_timeout_s"):
        Options(save_timeout_s=0)


def test_latest_step_and_exit_status(tmp_path):
    assert latest_step(tmp_path) is None and latest_step(None) is None
    (tmp_path / "latest").write_text("step_00000012")
    assert latest_step(tmp_path) == 12
    assert exit_status(-9) == 137 and exit_status(3) == 3


def test_a_heartbeat_that_cannot_be_written_never_stops_training(tmp_path, capsys):
    heartbeat = Heartbeat(tmp_path / "beats", 0, 1)
    (tmp_path / "beats").rmdir()
    (tmp_path / "beats").write_text("not a directory")
    heartbeat.beat(1)
    heartbeat.beat(2)
    assert capsys.readouterr().out.count("cannot write the heartbeat") == 1


def test_a_failing_rank_reports_its_error_at_its_last_step(tmp_path):
    heartbeat = Heartbeat(tmp_path, 1, 2)
    heartbeat.beat(6)
    assert not read_beats(tmp_path)[1].settled
    try:
        raise RuntimeError("Connection closed by peer\n  (a second line that is left out)")
    except RuntimeError as e:
        heartbeat.fail(e)
    beat = read_beats(tmp_path)[1]
    assert (beat.step, beat.phase, beat.error) == (6, "step", "RuntimeError: Connection closed by peer")
    assert beat.settled and beat.started


def test_a_rank_of_another_host_that_reported_nothing_is_named_before_those_that_failed_of_it():
    """4 ranks, 2 per host: rank 3 (host B) was killed; its peers failed on the closed
    connections, host A's rank 1 first seen gone (with an error); rank 0 has not reported yet."""
    beats = {0: _beat(0, 6, os.getpid(), world=4), 1: _beat(1, 6, 99999999, world=4, error=CLOSED),
             2: _beat(2, 6, 7, world=4, host="host-b", error=CLOSED),
             3: _beat(3, 6, 8, world=4, host="host-b")}
    assert unreported(beats, gone=[1]) == [0, 3]
    failed_of_it = "; rank(s) [1, 2] failed (first: rank 1: RuntimeError: Connection closed by peer"
    # asked over ssh: its process is gone
    found = blame(beats, gone=[1], remote={3: "gone"})
    assert found.beat.rank == 3 and found.suspects == (3,) and found.died, found
    assert found.what.startswith("rank 3 on host host-b (pid 8) died at step 6 without reporting an error "
                                 "(checked over ssh)" + failed_of_it)
    # its host does not answer, or it was not asked
    found = blame(beats, gone=[1], remote={3: "its host does not answer (ssh exited with status 255)"})
    assert found.beat.rank == 3 and found.died and found.what.startswith(
        "rank 3 on host host-b (pid 8) went silent at step 6 (on another host: its host does not answer")
    assert "(on another host: not asked; it reported no error)" in blame(beats, gone=[1]).what
    # alive: on its way to failing like the others; the first error is named
    found = blame(beats, gone=[1], remote={3: "alive"})
    assert found.beat.rank == 1 and not found.died and found.what.endswith("rank(s) [0, 3] still running")


def test_a_rank_gone_without_an_error_is_named_before_all_others(sleeper):
    beats = {0: _beat(0, 7, os.getpid(), error=CLOSED), 1: _beat(1, 7, sleeper.pid),
             2: _beat(2, 7, 8, world=3, host="host-b")}
    sleeper.kill()
    sleeper.wait(timeout=10)
    gone = [b.rank for b in dead_ranks(beats)]
    found = blame(beats, gone)
    assert gone == [1] and found.beat.rank == 1 and found.died
    assert found.what.startswith(f"rank 1 on host {HOST} (pid {sleeper.pid}) died at step 7 without "
                                 "reporting an error; rank(s) [0] failed")
    # several gone: the first seen gone
    assert blame({0: _beat(0, 7, 5), 1: _beat(1, 7, 6)}, gone=[1, 0]).suspects == (1, 0)


def test_a_stopped_rank_is_named_when_its_peers_failed_waiting_for_it(sleeper):
    os.kill(sleeper.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while process_state(sleeper.pid) not in ("T", "t") and time.monotonic() < deadline:
        time.sleep(0.05)
    timed_out = "RuntimeError: [gloo] Timed out waiting 10000ms for recv operation to complete"
    beats = {0: _beat(0, 7, os.getpid()), 1: _beat(1, 7, sleeper.pid),
             2: _beat(2, 7, 1, world=3, error=timed_out)}
    found = blame(beats, gone=[])
    assert found.beat.rank == 1 and found.suspects == (1,) and "was stopped at step 7" in found.what
    assert not found.died
    # running, not stopped: the error is named (rank 1 is on its way to failing of it)
    os.kill(sleeper.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while process_state(sleeper.pid) in ("T", "t") and time.monotonic() < deadline:
        time.sleep(0.05)
    found = blame(beats, gone=[])
    assert found.beat.rank == 2 and found.what.endswith("; rank(s) [0, 1] still running"), found


def test_when_every_rank_failed_the_first_error_is_named():
    beats = {0: _beat(0, 2, 5, error=CLOSED, at=100.5),
             1: _beat(1, 2, 6, error="OSError: disk full", at=100.0)}
    found = blame(beats, gone=[0, 1])
    assert found.beat.rank == 1 and not found.died and found.suspects == (1, 0)
    assert found.what.startswith(f"rank 1 on host {HOST} (pid 6) failed at step 2: OSError: disk full; "
                                 "then rank(s) [0]")
    assert blame({}, gone=[]).beat is None
    assert blame({0: _beat(0, 2, 5, world=3, error=CLOSED)}, gone=[0]).what.startswith(
        "rank(s) [1, 2] never reported a heartbeat")
