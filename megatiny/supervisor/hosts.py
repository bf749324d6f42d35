"""The hosts of a `deepspeed --hostfile` launch: finding the hostfile in the command, reading and
writing it, asking each host whether it answers over ssh, deciding whether a job can go on
without the hosts that do not (`megatiny supervise --allow-shrink`), and noticing when they answer
again."""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from megatiny.heartbeat import Beat
from megatiny.supervisor.ssh import run_on_hosts

HOSTFILE_OPTIONS = ("--hostfile", "-H")
# DeepSpeed's runner picks hosts by these too; a shrunk hostfile and a selection that names a
# dropped host (or a number of nodes) would contradict each other.
SELECTION_OPTIONS = ("--include", "-i", "--exclude", "-e", "--num_nodes")
HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


@dataclass(frozen=True)
class HostfileLaunch:
    """A `deepspeed ... --hostfile PATH ...` command: where PATH is in it."""

    command: tuple[str, ...]
    index: int
    """position of the hostfile's path in `command`"""
    option_form: bool = False
    """the path is written `--hostfile=PATH` (index points at that token)"""
    gpus_per_host: int | None = None
    """deepspeed's --num_gpus: at most this many slots of each host are used"""
    selection: str | None = None
    """the launcher option that also picks hosts (--include, --exclude, --num_nodes), if any"""

    @property
    def path(self) -> Path:
        token = self.command[self.index]
        return Path(token.split("=", 1)[1] if self.option_form else token)

    def with_hostfile(self, path: str | os.PathLike) -> list[str]:
        """The same command launching on the hostfile `path`."""
        command = list(self.command)
        token = command[self.index]
        command[self.index] = f"{token.split('=', 1)[0]}={path}" if self.option_form else str(path)
        return command

    def world_size(self, hosts: dict[str, int]) -> int:
        """Ranks the launch starts on `hosts` (host -> slots)."""
        cap = self.gpus_per_host
        return sum(min(slots, cap) if cap else slots for slots in hosts.values())


def _launcher_args(command: list[str]) -> list[str]:
    """The launcher's own arguments: those before the training script (the first `*.py`)."""
    for i, token in enumerate(command[1:], start=1):
        if token.endswith(".py"):
            return command[1:i]
    return command[1:]


def _option(args: list[str], names: tuple[str, ...]) -> tuple[int, bool] | None:
    """(position of the value, written NAME=VALUE) of the first of `names` in `args`."""
    for i, token in enumerate(args):
        name = token.split("=", 1)[0]
        if name in names:
            return (i, True) if "=" in token else (i + 1, False)
    return None


def _value(args: list[str], found: tuple[int, bool]) -> str | None:
    position, option_form = found
    if option_form:
        return args[position].split("=", 1)[1]
    return args[position] if position < len(args) else None


def find_hostfile(command: list[str]) -> HostfileLaunch | None:
    """The hostfile launch in `command` (`deepspeed --hostfile PATH ...`), or None when the
    command is no deepspeed launch with a hostfile. ValueError when --hostfile has no path."""
    if not command or Path(command[0]).name != "deepspeed":
        return None
    args = _launcher_args(command)
    found = _option(args, HOSTFILE_OPTIONS)
    if found is None:
        return None
    if _value(args, found) is None:
        raise ValueError("the launch command's --hostfile has no path after it")
    selection = next((t.split("=", 1)[0] for t in args if t.split("=", 1)[0] in SELECTION_OPTIONS), None)
    gpus = _option(args, ("--num_gpus",))
    value = _value(args, gpus) if gpus else None
    cap = int(value) if value is not None and value.isdigit() and int(value) > 0 else None
    return HostfileLaunch(tuple(command), found[0] + 1, found[1], cap, selection)


def hostfile_launch(command: list[str], allow_shrink: bool) -> HostfileLaunch | None:
    """The command's hostfile launch; ValueError when `allow_shrink` cannot work with the command."""
    launch = find_hostfile(command)
    if not allow_shrink:
        return launch
    if launch is None:
        shown = " ".join(command[:4]) + (" ..." if len(command) > 4 else "")
        raise ValueError("--allow-shrink needs a `deepspeed --hostfile HOSTFILE ...` launch command (it "
                         f"drops the hosts of the hostfile that stop answering); this one has no --hostfile: "
                         f"{shown}")
    if launch.selection is not None:
        raise ValueError(f"--allow-shrink rewrites the hostfile, and the launch command also picks hosts "
                         f"with {launch.selection}: list the hosts in the hostfile only")
    read_hostfile(launch.path)  # a hostfile that cannot be read is refused now, not at the first fault
    return launch


def read_hostfile(path: str | os.PathLike) -> dict[str, int]:
    """host -> slots of a DeepSpeed hostfile (`HOST slots=N` lines; `#` comments and blank lines
    skipped). ValueError naming the file and the line when it cannot be read as one."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read the hostfile {path}: {e}") from e
    hosts: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = HOSTFILE_LINE.match(line)
        if match is None or match.group(1) in hosts:
            what = "a second entry for that host" if match else "not `HOST slots=N`"
            raise ValueError(f"hostfile {path}, line {number}: {line!r} is {what}")
        hosts[match.group(1)] = int(match.group(2))
    if not hosts:
        raise ValueError(f"hostfile {path} lists no host")
    return hosts


def write_hostfile(path: str | os.PathLike, hosts: dict[str, int]) -> Path:
    """Write `hosts` as a DeepSpeed hostfile (temp name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{host} slots={slots}\n" for host, slots in hosts.items()))
    os.replace(tmp, path)
    return path


def silent_hosts(hosts: list[str], timeout_s: float) -> dict[str, str]:
    """host -> why it does not answer, for the hosts where `ssh HOST true` (BatchMode, ConnectTimeout)
    fails or does not return within `timeout_s` + 5 s. All hosts are asked at once."""
    answers = run_on_hosts({host: "true" for host in hosts}, timeout_s)
    return {host: answer.problem for host, answer in answers.items() if answer.problem is not None}


def shrink_problem(world_size: int, beat: Beat | None) -> str | None:
    """Why the run cannot go on with `world_size` ranks, judged by the sizes a rank's heartbeat
    reported (model-parallel size, batch sizes); None when it can, or when nothing was reported."""
    if world_size < 1:
        return "no host is left"
    if beat is None or beat.model_parallel is None:
        return None
    if world_size % beat.model_parallel:
        return (f"{world_size} rank(s) are left, not a multiple of the run's tensor x pipeline x context "
                f"size {beat.model_parallel}")
    data = world_size // beat.model_parallel
    micro, total = beat.micro_batch_size, beat.global_batch_size
    if micro and total and total % (micro * data):
        return (f"batch.global_batch_size {total} is not a multiple of batch.micro_batch_size x "
                f"data-parallel size ({micro} x {data}) on the {world_size} rank(s) left")
    return None


@dataclass(frozen=True)
class Resize:
    """A change of the hosts a job launches on: `event` "shrink" (hosts dropped) or "grow" (hosts
    taken back), a sentence, and the fields of the supervisor's event."""

    event: str
    message: str
    fields: dict


class JobHosts:
    """The hosts of a supervised `deepspeed --hostfile` job. Before each relaunch every host of
    the user's hostfile is asked over ssh (`check`): without `allow_shrink` a silent one is a
    reason to give up; with it, the job is relaunched on the hosts that answer (a new hostfile in
    the command), which drops silent hosts and takes back dropped ones that answer again."""

    def __init__(self, launch: HostfileLaunch, allow_shrink: bool, timeout_s: float):
        self.launch, self.allow_shrink, self.timeout_s = launch, allow_shrink, timeout_s
        self.user_hostfile = launch.path

    @property
    def command(self) -> list[str]:
        return list(self.launch.command)

    def check(self, new_hostfile: Path, sizes: Beat | None) -> tuple[str | None, Resize | None]:
        """Ask the hosts: (the reason to give up, or None) and the change made to the command, if
        any (its hostfile then written to `new_hostfile`). `sizes`: a heartbeat of the run, to
        check that the ranks still fit it (`shrink_problem`)."""
        try:
            hosts = read_hostfile(self.user_hostfile if self.allow_shrink else self.launch.path)
            current = read_hostfile(self.launch.path)
        except ValueError as e:  # (deepspeed itself launches locally when the file is missing)
            return (str(e) if self.allow_shrink else None), None
        started = time.monotonic()
        silent = silent_hosts(list(hosts), self.timeout_s)
        if silent and not self.allow_shrink:
            why = "; ".join(f"{host}: {reason}" for host, reason in silent.items())
            return (f"host(s) {', '.join(silent)} of the hostfile {self.launch.path} do not answer ({why}); "
                    "relaunching needs every host (--allow-shrink goes on without them)"), None
        left = {host: slots for host, slots in hosts.items() if host not in silent}
        return self._resize(current, left, silent, new_hostfile, sizes, time.monotonic() - started)

    def missing(self) -> list[str]:
        """Hosts of the user's hostfile that the job does not launch on now (dropped by a shrink)."""
        try:
            hosts, current = read_hostfile(self.user_hostfile), read_hostfile(self.launch.path)
        except ValueError:
            return []
        return [host for host in hosts if host not in current]

    def grow_problem(self, back: list[str], sizes: Beat | None) -> str | None:
        """Why the run cannot use the hosts `back` as well as its own (None when it can)."""
        try:
            hosts, current = read_hostfile(self.user_hostfile), read_hostfile(self.launch.path)
        except ValueError as e:
            return str(e)
        grown = {host: slots for host, slots in hosts.items() if host in current or host in back}
        return shrink_problem(self.launch.world_size(grown), sizes)

    def _resize(self, current: dict[str, int], left: dict[str, int], silent: dict[str, str],
                new_hostfile: Path, sizes: Beat | None, check_s: float) -> tuple[str | None, Resize | None]:
        dropped = [host for host in current if host not in left]
        added = [host for host in left if host not in current]
        why = "; ".join(f"{host}: {silent[host]}" for host in dropped)
        before, after = self.launch.world_size(current), self.launch.world_size(left)
        problem = shrink_problem(after, sizes)
        if problem is not None and dropped:
            return (f"host(s) {', '.join(dropped)} do not answer ({why}), and the run cannot go on without "
                    f"them: {problem}"), None
        if problem is not None or not (dropped or added):  # a host back that the run cannot use: as before
            return None, None
        path = write_hostfile(new_hostfile, left)
        self.launch = replace(self.launch, command=tuple(self.launch.with_hostfile(path)))
        change = (f"host(s) {', '.join(dropped)} do not answer ({why})" if dropped else "") + \
                 ("; " if dropped and added else "") + \
                 (f"host(s) {', '.join(added)} answer again" if added else "")
        batch = "more accumulation per rank" if after < before else "less accumulation per rank"
        message = (f"{change}: relaunching on {', '.join(left)}, {before} -> {after} ranks, same global "
                   f"batch ({batch}); hostfile {path}")
        fields = {"dropped": dropped, "added": added, "reasons": {host: silent[host] for host in dropped},
                  "hosts": list(left), "world_size_before": before, "world_size": after,
                  "hostfile": str(path), "check_s": round(check_s, 3)}
        return None, Resize("shrink" if dropped else "grow", message, fields)


class ReturningHosts:
    """Asks hosts whether they answer again (`ssh HOST true`) every `interval_s`, in a thread of
    its own, so that the supervisor's watch loop never waits on ssh."""

    def __init__(self, hosts: list[str], interval_s: float, timeout_s: float):
        self.hosts, self.interval_s, self.timeout_s = hosts, interval_s, timeout_s
        self.next_check = time.monotonic() + interval_s
        self.thread: threading.Thread | None = None
        self.silent: dict[str, str] = {}

    def answered(self) -> list[str]:
        """The hosts that answered the check that just finished, else []; starts a check when one
        is due."""
        if self.thread is not None:
            if self.thread.is_alive():
                return []
            self.thread = None
            self.next_check = time.monotonic() + self.interval_s
            return [host for host in self.hosts if host not in self.silent]
        if time.monotonic() >= self.next_check:
            self.thread = threading.Thread(target=self._check, name="megatiny-returning-hosts", daemon=True)
            self.thread.start()
        return []

    def _check(self) -> None:
        self.silent = silent_hosts(self.hosts, self.timeout_s)
