"""The processes of one launch: started in a session of their own, so the launcher and every
rank it starts on this host can be signalled and killed together."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from megatiny.heartbeat import Beat
from megatiny.supervisor.ssh import run_on_hosts
from megatiny.supervisor.watch import ALIVE, GONE, is_local, process_state

KILL_WAIT_S = 30.0   # after SIGKILL, the launcher is reaped within this (else it is reported)
SSH_TIMEOUT_S = 10.0  # to connect, killing the ranks of another host over ssh (+ 5 s to finish)


class Job:
    """One launch of `command` with `env` (a new session: its process group is the job)."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.command = command
        self.remote_killed: dict[str, list[int]] = {}
        """host -> pids `kill` found alive there and killed over ssh"""
        self.process = subprocess.Popen(command, env=env, start_new_session=True)
        self.pgid = self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def signal_launcher(self, signum: int) -> None:
        """Hand a stop signal to the launcher (deepspeed's and ours pass it to every rank)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def dump_stacks(self, beats: dict[int, Beat], wait_s: float) -> list[int]:
        """Every local rank prints its Python stacks to its log (SIGUSR1, `megatiny.heartbeat`),
        without the job making progress meanwhile: the running ranks dump, then are frozen
        (SIGSTOP); then the stopped ones get SIGUSR1 and SIGCONT (a stopped process handles no
        signal), and can go no further than their next collective with the frozen ones. Waits
        `wait_s` after each round. Returns the ranks signalled."""
        local = [b for b in sorted(beats.values(), key=lambda b: b.rank)
                 if is_local(b) and process_state(b.pid) not in (None, "Z", "X")]
        stopped = [b for b in local if process_state(b.pid) in ("T", "t")]
        running = [b for b in local if b not in stopped]
        signalled = _send(running, signal.SIGUSR1)
        if signalled:
            time.sleep(wait_s)
        if stopped:
            _send(running, signal.SIGSTOP)
            woken = _send(stopped, signal.SIGUSR1)
            _send(stopped, signal.SIGCONT)
            signalled += woken
            time.sleep(wait_s)
        return sorted(signalled)

    def kill(self, beats: dict[int, Beat], skip_hosts: set[str] = frozenset()) -> list[str]:
        """SIGKILL the whole process group, any local rank that left it, and the ranks on other
        hosts (over ssh, bounded; not on `skip_hosts`, which just did not answer); reap the
        launcher. Returns what could not be done."""
        problems = []
        for kill, target in ((os.killpg, self.pgid), (os.kill, self.process.pid)):
            try:
                kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for beat in beats.values():
            if is_local(beat) and process_state(beat.pid) not in (None, "Z"):
                try:
                    os.kill(beat.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        remote_problems, self.remote_killed = kill_remote(beats, skip_hosts)
        problems += remote_problems
        if self.wait(KILL_WAIT_S) is None:
            problems.append(f"the launcher (pid {self.process.pid}) did not exit {KILL_WAIT_S:.0f} s "
                            "after SIGKILL")
        return problems


def _send(beats: list[Beat], signum: int) -> list[int]:
    """Send `signum` to the ranks' processes; the ranks that were signalled."""
    sent = []
    for beat in beats:
        try:
            os.kill(beat.pid, signum)
            sent.append(beat.rank)
        except ProcessLookupError:
            pass
    return sent


def _remote_pids(beats: list[Beat]) -> dict[str, list[int]]:
    """host -> the pids of its ranks, for the ranks of other hosts among `beats`."""
    by_host: dict[str, list[int]] = {}
    for beat in beats:
        if not is_local(beat):
            by_host.setdefault(beat.host, []).append(beat.pid)
    return {host: sorted(pids) for host, pids in sorted(by_host.items())}


def kill_remote(beats: dict[int, Beat], skip_hosts: set[str] = frozenset()
                ) -> tuple[list[str], dict[str, list[int]]]:
    """`ssh HOST kill -9 PIDS` for the ranks of other hosts (their heartbeats name host and pid),
    every host at once, except `skip_hosts`. Returns what could not be done, and host -> the pids
    that were still alive and were killed."""
    by_host = _remote_pids(list(beats.values()))
    problems = [f"pids {pids} on {host} not killed: the host did not answer just before"
                for host, pids in by_host.items() if host in skip_hosts]
    by_host = {host: pids for host, pids in by_host.items() if host not in skip_hosts}
    # each prints the pids it killed and exits 0 whenever the shell ran (255: ssh failed)
    scripts = {host: f"for p in {' '.join(map(str, pids))}; do kill -9 $p 2>/dev/null && echo $p; done; true"
               for host, pids in by_host.items()}
    killed = {}
    for host, answer in run_on_hosts(scripts, SSH_TIMEOUT_S).items():
        if answer.problem is not None:
            problems.append(f"could not kill pids {by_host[host]} on {host} over ssh ({answer.problem})")
        else:
            killed[host] = [int(p) for p in answer.stdout.split() if p.isdigit()]
    return problems, killed


def remote_states(beats: list[Beat], timeout_s: float) -> dict[int, str]:
    """rank -> ALIVE, GONE (no such process, or a zombie) or why its host did not answer, for
    the ranks of other hosts among `beats`, asked over ssh (every host at once, `timeout_s` to
    connect)."""
    by_host = _remote_pids(beats)
    # each prints the pids that are alive and not zombies
    scripts = {host: f"for p in {' '.join(map(str, pids))}; do "
                     "s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1); "
                     '[ -n "$s" ] && [ "$s" != Z ] && echo $p; done; true'
               for host, pids in by_host.items()}
    answers = run_on_hosts(scripts, timeout_s)
    states = {}
    for beat in beats:
        if is_local(beat):
            continue
        answer = answers[beat.host]
        alive = {int(p) for p in answer.stdout.split() if p.isdigit()}
        states[beat.rank] = (f"its host does not answer ({answer.problem})" if answer.problem is not None
                             else ALIVE if beat.pid in alive else GONE)
    return states
