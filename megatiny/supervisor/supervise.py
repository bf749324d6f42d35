"""The supervisor loop: launch, watch, kill, relaunch, give up.

A launch ends in one of these ways (checked every `poll_s`):
  finished     the launcher exits 0: the supervisor exits 0
  stopped      SIGTERM/SIGINT reached the supervisor: handed to the launcher (the ranks save and
               exit), waited for up to `stop_timeout_s`, no restart; exits with the job's status
  exited       the launcher exits non-zero (a rank crashed, the launcher noticed)
  rank died    a local rank's process is gone while the launcher still runs, without an error
  rank failed  a rank (on any host) reported that its training raised
  hang         no rank's heartbeat moved for `hang_timeout_s` (`startup_timeout_s` before the
               first step): stacks dumped (SIGUSR1), then the job killed
  refused      the ranks report a run that relaunching cannot resume (checkpoint.resume is not
               `auto`, or no checkpoint.save_dir): killed, given up at once
The fault names the rank it is on (`watch.blame`): the supervisor first waits up to `settle_s`
for the ranks to report how they ended, so that ranks that failed of a peer's death (a closed
connection, reported in their heartbeats) are told from the rank that died without a word, even
on another host (asked over ssh whether its process lives).
After a fault the whole job is killed (its process group; ranks elsewhere over ssh) and, unless
`RestartPolicy` says to give up, the same command is launched again; `checkpoint.resume: auto`
makes it continue from the newest complete checkpoint that verifies. Before relaunching a
command that lists its hosts (`deepspeed --hostfile`, `mpirun --hostfile` or `-H`) every host is
asked over ssh whether it answers; when one does not, the supervisor gives up naming it, or with
`allow_shrink` relaunches on the hosts that answer (a new hostfile beside the events file, or
host list, and mpirun's -np to match; the run keeps its global batch, so each
rank accumulates more micro-batches, and resumes its checkpoint resharded to the smaller world).
While it runs on fewer hosts, the dropped ones are asked every `regrow_interval_s` whether they
answer again; when they do, the job is asked to save and stop (`heartbeat.request_stop`) and is
relaunched with them (a `regrow`, then a `grow` event).
"""
from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from megatiny.heartbeat import HEARTBEAT_DIR_ENV, Beat, clear_beats, read_beats, request_stop
from megatiny.supervisor import hosts as job_hosts
from megatiny.supervisor.events import EVENTS_FILE, EventLog
from megatiny.supervisor.job import Job, remote_states
from megatiny.supervisor.policy import RestartPolicy
from megatiny.supervisor.watch import (
    ALIVE,
    GONE,
    Blame,
    Progress,
    blame,
    culprit,
    dead_ranks,
    describe,
    is_local,
    unreported,
)

# The checkpoint root's pointer to its newest complete tag (megatiny.checkpoint.layout.LATEST_FILE),
# read here without importing the checkpoint package (and torch) into the supervisor.
LATEST_FILE = "latest"
TAG_STEP = re.compile(r"^step_(\d{8,})$")


@dataclass(frozen=True)
class Options:
    max_restarts: int = 3
    hang_timeout_s: float = 600.0
    """no heartbeat moved this long after the first step: a hang"""
    startup_timeout_s: float = 1800.0
    """no heartbeat moved this long before the first step (imports, rendezvous, resume, conversion)"""
    save_timeout_s: float = 1800.0
    """no heartbeat moved this long while a rank is saving a checkpoint"""
    stop_timeout_s: float = 600.0
    """after handing on SIGTERM/SIGINT, how long the job may take to save and exit"""
    dump_wait_s: float = 5.0
    """after SIGUSR1, how long the ranks get to print their stacks"""
    poll_s: float = 0.5
    save_dir: str | None = None
    """the run's checkpoint root (default: what rank 0's heartbeat says)"""
    heartbeat_dir: str | None = None
    """default: SAVE_DIR/.heartbeats with save_dir, else a temporary directory"""
    allow_shrink: bool = False
    """relaunch a job that lists its hosts on those that still answer (else give up)"""
    host_timeout_s: float = 10.0
    """before a relaunch, how long each host gets to answer over ssh"""
    regrow_interval_s: float = 300.0
    """with allow_shrink, after a shrink: how often the dropped hosts are asked whether they answer again"""
    settle_s: float = 3.0
    """after a rank failed or died, how long the others get to report how they ended before the
    rank at fault is named (less when that is clear sooner)"""

    def __post_init__(self) -> None:
        for name in ("hang_timeout_s", "startup_timeout_s", "save_timeout_s", "stop_timeout_s", "dump_wait_s",
                     "poll_s", "host_timeout_s", "regrow_interval_s", "settle_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        RestartPolicy(self.max_restarts)

    def limit_s(self, beats: dict[int, Beat]) -> float:
        """How long the job may go without progress now: the start-up limit before any rank's
        first step, the save limit while any rank saves, else the hang timeout."""
        if not any(b.started for b in beats.values()):
            return self.startup_timeout_s
        if any(b.phase == "save" for b in beats.values()):
            return self.save_timeout_s
        return self.hang_timeout_s


@dataclass
class Outcome:
    kind: str  # finished | regrow | stopped | exited | rank_died | rank_failed | hang | refused
    returncode: int
    reached_first_step: bool
    message: str = ""
    beat: Beat | None = None   # the rank at fault, when known
    stalled_s: float | None = None  # a hang: how long nothing had moved when it was declared
    suspects: tuple[int, ...] = ()  # ranks that fit the fault as well as `beat`'s (it first)


def latest_step(save_dir: str | os.PathLike | None) -> int | None:
    """The step of the checkpoint SAVE_DIR/latest names, or None."""
    if save_dir is None:
        return None
    try:
        match = TAG_STEP.match((Path(save_dir) / LATEST_FILE).read_text().strip())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def exit_status(returncode: int) -> int:
    """A child's return code as a shell exit status (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """Run `command` until it succeeds, is stopped, or `RestartPolicy` gives up; `run()` returns
    the exit status."""

    def __init__(self, command: list[str], options: Options, events: EventLog | None = None):
        if not command:
            raise ValueError("no launch command given (megatiny supervise [OPTIONS] -- COMMAND ...)")
        self.command, self.options = command, options
        launch = job_hosts.host_launch(command, options.allow_shrink)
        self.hosts = (job_hosts.JobHosts(launch, options.allow_shrink, options.host_timeout_s)
                      if launch is not None and launch.selection is None else None)
        self.returning: job_hosts.ReturningHosts | None = None
        """after a shrink: the dropped hosts, asked whether they answer again"""
        self.regrowing = False
        """the job was asked to stop so that it is relaunched with hosts that came back"""
        self.unreachable: set[str] = set()
        """hosts that did not answer when asked about their ranks (not waited for again to kill)"""
        self.sizes: Beat | None = None
        """a heartbeat of the last launch that reported the run's sizes (for `shrink_problem`)"""
        self.policy = RestartPolicy(options.max_restarts)
        self.save_dir = options.save_dir
        self.events = events or EventLog()
        if self.save_dir is not None:
            self.events.set_path(Path(self.save_dir) / EVENTS_FILE)
        default = (Path(self.save_dir) / ".heartbeats" if self.save_dir
                   else tempfile.mkdtemp(prefix="megatiny-heartbeats-"))
        self.heartbeat_dir = Path(options.heartbeat_dir or default)
        self.stop_signal: int | None = None

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run()
        finally:
            if self.events.path is None:  # the run never said where it saves: keep them beside the beats
                self.events.set_path(self.heartbeat_dir / EVENTS_FILE)
                print(f"[supervise] events written to {self.events.path}", flush=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        launch = 0
        while True:
            launch += 1
            before = latest_step(self.save_dir)
            outcome = self._launch_once(launch, before)
            if outcome.kind == "finished":
                self.events.emit("finished", f"launch {launch} finished (exit 0)", launch=launch,
                                 checkpoint_step=latest_step(self.save_dir))
                return 0
            if outcome.kind == "stopped":
                self.events.emit("stopped", f"stopped by signal {outcome.message}; job exited with "
                                 f"{outcome.returncode}; not restarting", launch=launch,
                                 returncode=outcome.returncode, checkpoint_step=latest_step(self.save_dir))
                return exit_status(outcome.returncode)
            after = latest_step(self.save_dir)
            new_checkpoint = after is not None and (before is None or after > before)
            if outcome.kind == "regrow":  # stopped on request, to take back hosts: not a failure
                reason = None
            elif outcome.kind == "refused":
                reason = "relaunching cannot resume this run: " + outcome.message
            else:
                reason = self.policy.after_failure(outcome.reached_first_step, new_checkpoint)
            reason = reason or self._check_hosts(launch + 1)
            if reason is not None:
                self.events.emit("give_up", f"giving up after launch {launch}: {reason}", launch=launch,
                                 reason=reason, checkpoint_step=after)
                return exit_status(outcome.returncode) or 1
            start = f"step {after}" if after is not None else "the start (no checkpoint yet)"
            self.events.emit("restart", f"relaunching (launch {launch + 1}); it resumes from {start}",
                             launch=launch + 1, resume_step=after,
                             restarts_without_checkpoint=self.policy.without_checkpoint)

    # ---------------------------------------------------------------- the hosts
    def _check_hosts(self, launch: int) -> str | None:
        """Before launch `launch` of a job that lists its hosts: ask every host over ssh
        (`hosts.JobHosts`). The reason to give up, or None (with `allow_shrink`, the command may now
        list other hosts)."""
        if self.hosts is None:
            return None
        new_hostfile = self._beside_events(f"supervisor_hostfile_launch{launch}")
        reason, change = self.hosts.check(new_hostfile, self.sizes)
        if change is not None:
            self.command = self.hosts.command
            self.events.emit(change.event, change.message, **change.fields)
        return reason

    def _check_returning(self) -> None:
        """After a shrink: when hosts that were dropped answer again (asked in the background every
        `regrow_interval_s`), ask the job to save a checkpoint and stop, to relaunch it with them."""
        back = self.returning.answered() if self.returning is not None and not self.regrowing else []
        if not back:
            return
        problem = self.hosts.grow_problem(back, self.sizes)
        if problem is not None:
            self.events.emit("grow_refused", f"host(s) {', '.join(back)} answer again, but the run cannot "
                             f"use them: {problem}; going on without them", hosts=back, reason=problem)
            self.returning = None
            return
        request_stop(self.heartbeat_dir)
        self.regrowing = True
        self.events.emit("regrow", f"host(s) {', '.join(back)} answer again: asking the job to save a "
                         "checkpoint at the end of its step and stop, to relaunch it with them", hosts=back)

    def _beside_events(self, name: str) -> Path:
        return (self.events.path.parent if self.events.path is not None else self.heartbeat_dir) / name

    # ---------------------------------------------------------------- one launch
    def _launch_once(self, launch: int, checkpoint_step: int | None) -> Outcome:
        self.heartbeat_dir.mkdir(parents=True, exist_ok=True)
        clear_beats(self.heartbeat_dir)  # (and a stop request left by the last launch)
        self.unreachable, self.regrowing = set(), False
        env = dict(os.environ, **{HEARTBEAT_DIR_ENV: str(self.heartbeat_dir)})
        missing = self.hosts.missing() if self.hosts is not None and self.options.allow_shrink else []
        self.returning = (job_hosts.ReturningHosts(missing, self.options.regrow_interval_s,
                                                   self.options.host_timeout_s) if missing else None)
        job = Job(self.command, env)
        self.events.emit("launch", f"launch {launch}: {' '.join(self.command)} (pid {job.process.pid})",
                         launch=launch, command=self.command, pid=job.process.pid,
                         checkpoint_step=checkpoint_step)
        try:
            return self._watch(job)
        except BaseException:
            job.kill(read_beats(self.heartbeat_dir))  # a supervisor that fails leaves no job behind
            raise

    def _watch(self, job: Job) -> Outcome:
        progress = Progress(since=time.monotonic())
        beats: dict[int, Beat] = {}
        announced = False
        while True:
            if self.stop_signal is not None:
                return self._stop(job, beats)
            returncode = job.poll()
            beats = read_beats(self.heartbeat_dir) or beats
            self.sizes = next((b for b in beats.values() if b.model_parallel is not None), self.sizes)
            reached = any(b.started for b in beats.values())
            if reached and not announced:
                step = min(b.step for b in beats.values())
                self.events.emit("running", f"the job is training (step {step})", step=step)
                announced = True
            if returncode is not None:
                return self._exited(job, beats, returncode, reached)
            self._check_returning()
            refusal = self._check_run(beats)
            if refusal is not None:
                return self._fault(job, beats, Outcome("refused", 1, reached, refusal))
            dead = dead_ranks(beats)
            if dead or any(b.error is not None for b in beats.values()):
                return self._rank_fault(job, beats, reached, [b.rank for b in dead])
            now = time.monotonic()
            progress.update(beats, now)
            if progress.stalled_for(now) > self.options.limit_s(beats):
                return self._hang(job, beats, reached, progress.stalled_for(now))
            time.sleep(self.options.poll_s)

    def _check_run(self, beats: dict[int, Beat]) -> str | None:
        """Learn the save dir from rank 0's heartbeat; a refusal when relaunching would not resume."""
        beat = beats.get(0)
        if beat is None:
            return None
        if beat.save_dir is None:
            return "the run has no checkpoint.save_dir, so a relaunch would start from scratch"
        if beat.resume != "auto":
            return (f"checkpoint.resume is {beat.resume!r}: a supervised run must use checkpoint.resume=auto "
                    "(the relaunched command continues from the newest checkpoint)")
        if self.save_dir is None:
            self.save_dir = beat.save_dir
            self.events.set_path(Path(self.save_dir) / EVENTS_FILE)
        return None

    def _exited(self, job: Job, beats: dict[int, Beat], returncode: int, reached: bool) -> Outcome:
        if returncode == 0:
            job.kill(beats)  # leftovers of the group, if any
            finished = bool(beats) and all(b.phase == "done" and b.train_steps is not None
                                           and b.step >= b.train_steps for b in beats.values())
            return Outcome("regrow" if self.regrowing and not finished else "finished", 0, reached)
        found = self._blame(beats, [b.rank for b in dead_ranks(beats)])
        message = f"the launcher exited with status {returncode}: {found.what}"
        return self._fault(job, beats, Outcome("exited", returncode, reached, message, found.beat,
                                               suspects=found.suspects))

    def _rank_fault(self, job: Job, beats: dict[int, Beat], reached: bool, gone: list[int]) -> Outcome:
        """A local rank is gone or some rank reported an error: name the rank at fault, kill the job."""
        found = self._blame(beats, gone)
        return self._fault(job, beats, Outcome("rank_died" if found.died else "rank_failed", 1, reached,
                                               found.what, found.beat, suspects=found.suspects))

    def _blame(self, beats: dict[int, Beat], gone: list[int]) -> Blame:
        """The rank at fault (`watch.blame`), once the ranks have said how they ended: wait, up to
        `settle_s`, until a local rank is gone without an error or every rank has reported; the
        ranks of other hosts that are left are asked over ssh whether their process is alive (once
        this host's ranks have all reported, or at the deadline)."""
        deadline = time.monotonic() + self.options.settle_s
        remote: dict[int, str] = {}
        while not any(not beats[r].settled for r in gone):
            waiting = [beats[r] for r in unreported(beats, gone)]
            elsewhere = [b for b in waiting if not is_local(b)]
            late = time.monotonic() >= deadline
            if elsewhere and not remote and (late or len(elsewhere) == len(waiting)):
                remote = remote_states(elsewhere, self.options.host_timeout_s)
                self.unreachable = {beats[r].host for r, state in remote.items()
                                    if state not in (ALIVE, GONE)}
            if late or not waiting or all(remote.get(b.rank, ALIVE) != ALIVE for b in waiting):
                break
            time.sleep(self.options.poll_s)
            beats = {**beats, **read_beats(self.heartbeat_dir)}  # (a rank's file may be unreadable a moment)
            gone = gone + [b.rank for b in dead_ranks(beats) if b.rank not in gone]
        return blame(beats, gone, remote)

    def _fault(self, job: Job, beats: dict[int, Beat], outcome: Outcome) -> Outcome:
        beat = outcome.beat
        self.events.emit("fault", outcome.message, kind=outcome.kind, returncode=outcome.returncode,
                         rank=beat.rank if beat else None, host=beat.host if beat else None,
                         step=beat.step if beat else None, error=beat.error if beat else None,
                         suspects=list(outcome.suspects), reached_first_step=outcome.reached_first_step,
                         last_beat_age_s=round(time.time() - beat.time, 3) if beat else None,
                         stalled_s=None if outcome.stalled_s is None else round(outcome.stalled_s, 3))
        self._kill(job, beats)
        return outcome

    def _kill(self, job: Job, beats: dict[int, Beat]) -> None:
        problems = job.kill(beats, skip_hosts=self.unreachable)
        remote = "".join(f", pids {pids} on {host} over ssh" for host, pids in job.remote_killed.items())
        self.events.emit("kill", f"killed the job (process group{remote})"
                         + ("; " + "; ".join(problems) if problems else ""), problems=problems,
                         remote_killed=job.remote_killed)

    def _hang(self, job: Job, beats: dict[int, Beat], reached: bool, stalled_s: float) -> Outcome:
        beat, why = culprit(beats)
        what = describe(beat) + f" ({why})" if beat is not None else why
        message = f"hang: no rank made progress for {stalled_s:.0f} s; {what}"
        dumped = job.dump_stacks(beats, self.options.dump_wait_s)
        outcome = Outcome("hang", 1, reached, message + (f"; stacks of ranks {dumped} dumped to the job's log"
                                                          if dumped else ""), beat, stalled_s)
        return self._fault(job, beats, outcome)

    def _stop(self, job: Job, beats: dict[int, Beat]) -> Outcome:
        signum = self.stop_signal
        name = signal.Signals(signum).name
        self.events.emit("stop", f"{name} received: handing it to the job (the ranks save and exit) and "
                         f"waiting up to {self.options.stop_timeout_s:.0f} s", signal=name)
        job.signal_launcher(signum)
        returncode = job.wait(self.options.stop_timeout_s)
        if returncode is None:
            limit = self.options.stop_timeout_s
            self.events.emit("fault", f"the job did not exit {limit:.0f} s after {name}", kind="stop_timeout")
            self._kill(job, beats)
            returncode = 128 + signum
        else:
            job.kill(read_beats(self.heartbeat_dir) or beats)
        return Outcome("stopped", returncode, True, name)

