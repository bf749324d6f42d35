"""The supervisor around small stand-in jobs (no training, a second or two each): a job that
never starts is killed after --startup-timeout with its whole process group and, failing twice,
given up; SIGTERM to the supervisor goes to the job and nothing restarts; a run that could not
resume is refused."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from megatiny.heartbeat import Beat
from megatiny.supervisor.events import read_events
from megatiny.supervisor.supervise import Options, Supervisor
from tests.helpers import REPO_ROOT, run_command

ENV = {"PYTHONPATH": str(REPO_ROOT)}


def _supervise(*args: str) -> list[str]:
    return [sys.executable, "-m", "megatiny", "supervise", *args]


def test_a_job_that_never_starts_is_killed_with_its_children_and_given_up(tmp_path):
    pids = tmp_path / "pids"
    # the launcher starts a child (a "rank") and both sleep: no heartbeat ever comes
    job = [sys.executable, "-c",
           "import subprocess, sys, time\n"
           "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
           f"open({str(pids)!r}, 'a').write(f'{{child.pid}}\\n')\n"
           "time.sleep(120)\n"]
    started = time.monotonic()
    options = ("--startup-timeout", "2", "--dump-wait", "0.5", "--save-dir", str(tmp_path))
    result = run_command(_supervise(*options, "--", *job), timeout=60, env=ENV)
    assert result.returncode == 1, result.stdout
    assert time.monotonic() - started < 30
    events = read_events(tmp_path / "supervisor_events.jsonl")
    assert [e["event"] for e in events] == ["launch", "fault", "kill", "restart", "launch", "fault", "kill",
                                            "give_up"]
    assert events[1]["kind"] == "hang" and "no rank ever reported a heartbeat" in events[1]["message"]
    assert "before its first step twice" in events[-1]["reason"]
    for pid in map(int, pids.read_text().split()):  # the children died with their launcher's group
        state = None
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            pass
        assert state in (None, "Z"), (pid, state)


def test_sigterm_goes_to_the_job_and_nothing_restarts(tmp_path):
    marker = tmp_path / "job_got_sigterm"
    job = [sys.executable, "-c",
           "import signal, sys, time\n"
           f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
           "print('job', 'up', flush=True)\n"  # not the text the launch event echoes
           "time.sleep(120)\n"]
    process = subprocess.Popen(_supervise("--save-dir", str(tmp_path), "--", *job), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "job up" not in (process.stdout.readline() or ""):
            pass
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, out
    assert marker.exists()
    events = [e["event"] for e in read_events(tmp_path / "supervisor_events.jsonl")]
    assert events == ["launch", "stop", "stopped"]


def test_a_run_that_would_not_resume_is_refused(tmp_path):
    supervisor = Supervisor(["true"], Options(save_dir=str(tmp_path)))

    def beat(**fields) -> dict[int, Beat]:
        values = {"rank": 0, "world_size": 1, "host": "h", "pid": 1, "step": 0, "phase": "setup",
                  "time": 0.0, "save_dir": str(tmp_path), "resume": "auto", **fields}
        return {0: Beat(**values)}

    assert supervisor._check_run(beat()) is None
    assert "checkpoint.resume=auto" in supervisor._check_run(beat(resume="none"))
    assert "no checkpoint.save_dir" in supervisor._check_run(beat(save_dir=None))
