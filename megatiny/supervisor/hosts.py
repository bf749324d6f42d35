"""The hosts of a launch (`deepspeed --hostfile`, `mpirun --hostfile` or `mpirun -H`): finding
them in the command, reading and rewriting them, asking each host whether it answers over ssh,
deciding whether a job can go on without the hosts that do not (`megatiny supervise
--allow-shrink`), and noticing when they answer again."""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from megatiny.heartbeat import Beat
from megatiny.supervisor.ssh import run_on_hosts

DEEPSPEED_HOSTFILE = ("--hostfile", "-H")
# DeepSpeed's runner picks hosts by these too; a shrunk hostfile and a selection that names a
# dropped host (or a number of nodes) would contradict each other.
DEEPSPEED_SELECTION = ("--include", "-i", "--exclude", "-e", "--num_nodes")
MPIRUN_NAMES = ("mpirun", "mpiexec", "orterun")
MPIRUN_HOSTFILE = ("--hostfile", "-hostfile", "--machinefile", "-machinefile")
MPIRUN_HOST_LIST = ("-H", "--host", "-host")
MPIRUN_RANKS = ("-np", "--np", "-n", "--n", "-c")
MPIRUN_SELECTION = ("--rankfile", "-rf", "-npernode", "--npernode")  # ranks pinned to hosts
HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")
HOST_LIST_ENTRY = re.compile(r"^([^:,\s]+)(?::(\d+))?$")


@dataclass(frozen=True)
class HostLaunch:
    """A launch command that lists its hosts, and where: `deepspeed --hostfile H`, `mpirun
    --hostfile H` or `mpirun -H a:2,b:2` (with mpirun's `-np N`, its number of ranks)."""

    command: tuple[str, ...]
    index: int
    """position in `command` of the hostfile's path or of the host list"""
    option_form: bool = False
    """written `--hostfile=PATH` (`index` points at that token)"""
    gpus_per_host: int | None = None
    """deepspeed's --num_gpus: at most this many slots of each host are used"""
    selection: str | None = None
    """a launcher option that also picks hosts or pins ranks to them (--include, --rankfile, ...)"""
    inline: bool = False
    """mpirun -H: the hosts are written in the command, not in a file"""
    ranks_index: int | None = None
    """mpirun -np N: position of N (kept equal to the world size of the hosts launched on)"""
    ranks_option_form: bool = False
    ranks: int | None = None
    """the user's -np: a launch never starts more ranks than this"""

    def _get(self, index: int, option_form: bool) -> str:
        token = self.command[index]
        return token.split("=", 1)[1] if option_form else token

    def _set(self, command: list[str], index: int, option_form: bool, value: str) -> None:
        command[index] = f"{command[index].split('=', 1)[0]}={value}" if option_form else value

    @property
    def path(self) -> Path | None:
        """The hostfile (None for a host list in the command)."""
        return None if self.inline else Path(self._get(self.index, self.option_form))

    def describe(self) -> str:
        return f"the host list {self._get(self.index, self.option_form)}" if self.inline else \
            f"the hostfile {self.path}"

    def hosts(self) -> dict[str, int]:
        """host -> slots, as the command lists them now. ValueError when they cannot be read."""
        if self.inline:
            return parse_host_list(self._get(self.index, self.option_form))
        return read_hostfile(self.path)

    def with_hosts(self, hosts: dict[str, int], hostfile: Path) -> tuple[list[str], Path | None]:
        """The same command launching on `hosts`: a host list in its place, or a hostfile written to
        `hostfile` (returned); mpirun's -np set to their world size."""
        command = list(self.command)
        written = None if self.inline else write_hostfile(hostfile, hosts)
        value = format_host_list(hosts) if self.inline else str(written)
        self._set(command, self.index, self.option_form, value)
        if self.ranks_index is not None:
            self._set(command, self.ranks_index, self.ranks_option_form, str(self.world_size(hosts)))
        return command, written

    def world_size(self, hosts: dict[str, int]) -> int:
        """Ranks the launch starts on `hosts` (host -> slots)."""
        cap = self.gpus_per_host
        slots = sum(min(n, cap) if cap else n for n in hosts.values())
        return min(slots, self.ranks) if self.ranks else slots


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


def _positive(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else None


def find_host_launch(command: list[str]) -> HostLaunch | None:
    """Where `command` lists its hosts (`deepspeed --hostfile H`, `mpirun --hostfile H`, `mpirun
    -H LIST`), or None when it is no such launch. ValueError when that option has no value."""
    if not command:
        return None
    launcher, args = Path(command[0]).name, _launcher_args(command)
    if launcher == "deepspeed":
        found, inline, selection_options = _option(args, DEEPSPEED_HOSTFILE), False, DEEPSPEED_SELECTION
    elif launcher in MPIRUN_NAMES:
        found, inline, selection_options = _option(args, MPIRUN_HOSTFILE), False, MPIRUN_SELECTION
        if found is None:
            found, inline = _option(args, MPIRUN_HOST_LIST), True
    else:
        return None
    if found is None:
        return None
    if _value(args, found) is None:
        raise ValueError(f"the launch command's {args[found[0] - 1]} has no value after it")
    selection = next((t.split("=", 1)[0] for t in args if t.split("=", 1)[0] in selection_options), None)
    gpus = _option(args, ("--num_gpus",)) if launcher == "deepspeed" else None
    ranks = _option(args, MPIRUN_RANKS) if launcher in MPIRUN_NAMES else None
    return HostLaunch(tuple(command), found[0] + 1, found[1], _positive(_value(args, gpus)) if gpus else None,
                      selection, inline, ranks[0] + 1 if ranks else None, bool(ranks and ranks[1]),
                      _positive(_value(args, ranks)) if ranks else None)


def host_launch(command: list[str], allow_shrink: bool) -> HostLaunch | None:
    """The command's host list; ValueError when `allow_shrink` cannot work with the command."""
    launch = find_host_launch(command)
    if not allow_shrink:
        return launch
    if launch is None:
        shown = " ".join(command[:4]) + (" ..." if len(command) > 4 else "")
        raise ValueError("--allow-shrink needs a launch command that lists its hosts (`deepspeed --hostfile "
                         "H ...`, `mpirun --hostfile H ...` or `mpirun -H a:N,b:N ...`: it drops those that "
                         f"stop answering); this one lists none: {shown}")
    if launch.selection is not None:
        raise ValueError(f"--allow-shrink rewrites the hosts, and the launch command also picks hosts or "
                         f"places ranks with {launch.selection}: list the hosts only")
    launch.hosts()  # hosts that cannot be read are refused now, not at the first fault
    return launch


def parse_host_list(value: str) -> dict[str, int]:
    """host -> slots of an mpirun host list (`a:2,b:2`; `a,a,b` counts a twice)."""
    hosts: dict[str, int] = {}
    for entry in value.split(","):
        match = HOST_LIST_ENTRY.match(entry.strip())
        if match is None:
            raise ValueError(f"host list {value!r}: {entry!r} is not HOST or HOST:SLOTS")
        hosts[match.group(1)] = hosts.get(match.group(1), 0) + int(match.group(2) or 1)
    return hosts


def format_host_list(hosts: dict[str, int]) -> str:
    return ",".join(f"{host}:{slots}" for host, slots in hosts.items())


def read_hostfile(path: str | os.PathLike) -> dict[str, int]:
    """host -> slots of a DeepSpeed (or Open MPI) hostfile (`HOST slots=N` lines; `#` comments and blank lines
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
    """Write `hosts` as a hostfile (`HOST slots=N` lines, as DeepSpeed and Open MPI read them; temp
    name, then renamed)."""
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
    """The hosts of a supervised job whose command lists them (`HostLaunch`). Before each relaunch
    every host the user listed is asked over ssh (`check`): without `allow_shrink` a silent one is
    a reason to give up; with it, the job is relaunched on the hosts that answer (a new hostfile
    or host list in the command), which drops silent hosts and takes back dropped ones that
    answer again."""

    def __init__(self, launch: HostLaunch, allow_shrink: bool, timeout_s: float):
        self.launch, self.allow_shrink, self.timeout_s = launch, allow_shrink, timeout_s
        self.user_launch = launch
        """the command as the user wrote it: its hostfile is read again at each check"""

    @property
    def command(self) -> list[str]:
        return list(self.launch.command)

    def check(self, new_hostfile: Path, sizes: Beat | None) -> tuple[str | None, Resize | None]:
        """Ask the hosts: (the reason to give up, or None) and the change made to the command, if
        any (a hostfile then written to `new_hostfile`). `sizes`: a heartbeat of the run, to
        check that the ranks still fit it (`shrink_problem`)."""
        try:  # (without allow_shrink the command is never rewritten: the two are the same)
            hosts, current = self._user_and_current()
        except ValueError as e:  # (deepspeed itself launches locally when the file is missing)
            return (str(e) if self.allow_shrink else None), None
        started = time.monotonic()
        silent = silent_hosts(list(hosts), self.timeout_s)
        if silent and not self.allow_shrink:
            why = "; ".join(f"{host}: {reason}" for host, reason in silent.items())
            return (f"host(s) {', '.join(silent)} of {self.launch.describe()} do not answer ({why}); "
                    "relaunching needs every host (--allow-shrink goes on without them)"), None
        left = {host: slots for host, slots in hosts.items() if host not in silent}
        return self._resize(current, left, silent, new_hostfile, sizes, time.monotonic() - started)

    def _user_and_current(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.user_launch.hosts(), self.launch.hosts()

    def missing(self) -> list[str]:
        """Hosts the user listed that the job does not launch on now (dropped by a shrink)."""
        try:
            hosts, current = self._user_and_current()
        except ValueError:
            return []
        return [host for host in hosts if host not in current]

    def grow_problem(self, back: list[str], sizes: Beat | None) -> str | None:
        """Why the run cannot use the hosts `back` as well as its own (None when it can)."""
        try:
            hosts, current = self._user_and_current()
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
        command, path = self.launch.with_hosts(left, new_hostfile)
        self.launch = replace(self.launch, command=tuple(command))
        change = (f"host(s) {', '.join(dropped)} do not answer ({why})" if dropped else "") + \
                 ("; " if dropped and added else "") + \
                 (f"host(s) {', '.join(added)} answer again" if added else "")
        batch = "more accumulation per rank" if after < before else "less accumulation per rank"
        message = (f"{change}: relaunching on {', '.join(left)}, {before} -> {after} ranks, same global "
                   f"batch ({batch}); {self.launch.describe()}")
        fields = {"dropped": dropped, "added": added, "reasons": {host: silent[host] for host in dropped},
                  "hosts": list(left), "world_size_before": before, "world_size": after,
                  "hostfile": str(path) if path is not None else None, "check_s": round(check_s, 3)}
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
