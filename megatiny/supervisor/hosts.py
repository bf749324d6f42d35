"""The hosts of a `deepspeed --hostfile` launch: finding the hostfile in the command, reading and
writing it, asking each host whether it answers over ssh, and deciding whether a job can go on
without the hosts that do not (`megatiny supervise --allow-shrink`)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
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
