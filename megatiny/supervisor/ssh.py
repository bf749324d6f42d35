"""One short shell command on each of several hosts over ssh, all hosts at once, bounded in time
(BatchMode: never a password prompt)."""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    """What a host's command printed, or why the host gave no answer (`problem`)."""

    stdout: str = ""
    problem: str | None = None


def run_on_hosts(scripts: dict[str, str], timeout_s: float) -> dict[str, Answer]:
    """host -> its answer to `ssh HOST SCRIPT`: ssh may take `timeout_s` to connect and
    `timeout_s` + 5 s in all. A script should exit 0 whenever it ran, so that a non-zero status
    means ssh failed (255: no connection, refused, no key)."""
    connect = max(1, int(timeout_s))
    answers, probes = {}, {}
    for host, script in scripts.items():
        try:
            probes[host] = subprocess.Popen(
                ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect}", host, script],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError as e:
            answers[host] = Answer(problem=f"could not run ssh: {e}")
    deadline = time.monotonic() + timeout_s + 5
    for host, probe in probes.items():
        try:
            out, err = probe.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.communicate(timeout=10)
            answers[host] = Answer(problem=f"ssh did not return within {timeout_s + 5:.0f} s")
            continue
        if probe.returncode != 0:
            last = (err.strip().splitlines() or ["no message"])[-1]
            answers[host] = Answer(out, f"ssh exited with status {probe.returncode}: {last}")
        else:
            answers[host] = Answer(out)
    return answers
