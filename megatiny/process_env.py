"""Process-environment helpers shared by the launcher code, the tools and the tests.

    free_port()                  a TCP port free on this host now, outside the ephemeral range
    path_with_interpreter_bin()  PATH with this interpreter's bin directory first
    put_interpreter_bin_first()  the same, applied to os.environ (inherited by child processes)
    launch_world_size()          the number of ranks a launcher announced (None: plain python)
    exit_fast(status)            end the process now, without the interpreter's slow teardown

Why the interpreter's bin directory goes first: DeepSpeed JIT-compiles small ops (on CPU
CPUAdam, for optimizer offload) into one shared cache, and rebuilds it (minutes)
whenever a process sees a different `ninja` than the one that built it. Ranks started over ssh,
by mpirun or from a shell without the venv activated often find a system `ninja` first.
"""
from __future__ import annotations

import atexit
import os
import random
import socket
import sys
import threading
from pathlib import Path

# Where free_port() picks from when set: "LOW-HIGH" (both included), e.g. a range a firewall opens.
PORTS_ENV = "MEGATINY_PORTS"
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PICKED_PORT = 20000  # below it are many well-known services' ports


def free_port() -> int:
    """A TCP port that is free on this host now (another process may still take it later),
    picked at random from $MEGATINY_PORTS, else from below the kernel's ephemeral range.

    Why not the kernel's pick (bind to port 0): that gives an ephemeral port, and any outgoing
    connection on the host (gloo opens dozens per process group) or another program's bind to
    port 0 can take it before the rendezvous binds it, which then fails with EADDRINUSE."""
    low, high = port_range()
    picks = random.Random()  # seeded from os.urandom: processes starting together pick apart
    for _ in range(200):
        port = picks.randint(low, high)
        if _can_listen_on(port):
            return port
    raise RuntimeError(f"no free TCP port in {low}-{high} after 200 tries: set {PORTS_ENV}=LOW-HIGH "
                       f"to a range with free ports")


def port_range(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """The ports free_port() picks from, (low, high) both included: $MEGATINY_PORTS, else those
    from LOWEST_PICKED_PORT to just below the kernel's ephemeral range (Linux default 32768-60999),
    else (when that leaves fewer than 1000) those above it."""
    environ = os.environ if environ is None else environ
    if environ.get(PORTS_ENV):
        return _parse_port_range(environ[PORTS_ENV])
    try:
        ephemeral_low, ephemeral_high = map(int, EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):  # not Linux: assume IANA's ephemeral range, 49152-65535
        ephemeral_low, ephemeral_high = 49152, 65535
    if ephemeral_low - LOWEST_PICKED_PORT >= 1000:
        return LOWEST_PICKED_PORT, ephemeral_low - 1
    if 65535 - ephemeral_high >= 1000:
        return ephemeral_high + 1, 65535
    return 1024, 65535  # the ephemeral range covers nearly all ports: only the bind check is left


def _parse_port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        low_port, high_port = int(low), int(high)
    except ValueError:
        low_port = high_port = -1
    if not sep or not 1024 <= low_port <= high_port <= 65535:
        raise ValueError(f"{PORTS_ENV}={text!r}: expected LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, "
                         f"e.g. 20000-29999")
    return low_port, high_port


def _can_listen_on(port: int) -> bool:
    """Whether a listening socket could bind `port` on every address now (the rendezvous store's
    bind; without SO_REUSEADDR a port with connections still in TIME_WAIT counts as taken)."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def interpreter_bin_dir() -> str:
    """The directory of the running interpreter: a venv's bin/, where pip put `ninja` and `deepspeed`."""
    return str(Path(sys.executable).parent)


def path_with_interpreter_bin(path: str | None) -> str:
    """`path` (a PATH value) with `interpreter_bin_dir()` first; unchanged if it already is."""
    entries = path.split(os.pathsep) if path else []
    first = interpreter_bin_dir()
    if entries[:1] == [first]:
        return os.pathsep.join(entries)
    return os.pathsep.join([first, *entries])


def put_interpreter_bin_first(if_it_has: str | None = None) -> None:
    """Put `interpreter_bin_dir()` first on this process's PATH (and so on its children's).

    With `if_it_has` (an executable's name) only when that executable is in the directory: a
    training process under a system Python keeps its PATH order unless pip installed `ninja` there.
    """
    if if_it_has is not None and not (Path(interpreter_bin_dir()) / if_it_has).exists():
        return
    os.environ["PATH"] = path_with_interpreter_bin(os.environ.get("PATH"))


# What the deepspeed launcher and torchrun set for every rank (plain `python` sets none of them).
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Where MPI launchers put the number of ranks: Open MPI, MPICH / Intel MPI, MVAPICH.
MPI_WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def launch_world_size(environ: dict[str, str] | None = None) -> int | None:
    """The world size a launcher set in the environment, before any process group exists: WORLD_SIZE
    under a rendezvous launcher (all of `RENDEZVOUS_VARIABLES` set), else an MPI launcher's; None
    when there is none (plain `python`, which makes a world of one)."""
    environ = os.environ if environ is None else environ
    names = ("WORLD_SIZE",) if all(k in environ for k in RENDEZVOUS_VARIABLES) else MPI_WORLD_SIZE_VARIABLES
    for name in names:
        value = environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not a number of ranks") from None
    return None


def exit_fast(status: int | None) -> None:
    """End this process with exit status `status` (None = 0) as `sys.exit` would, minus the interpreter's
    teardown of its modules: after torch, DeepSpeed and torch._dynamo/_inductor are loaded, that
    teardown takes 1-1.5 s of every process (measured on the 2-core CI machine), paid by each rank of
    every launch and by each tool the pipeline runs. What a normal exit does that matters is kept,
    in its order: idle thread pools are stopped and non-daemon threads joined, atexit handlers
    run, MPI finalized if mpi4py initialized it, stdout/stderr flushed."""
    if status is not None and not isinstance(status, int):
        raise TypeError(f"exit_fast: an exit status is an int or None, not {type(status).__name__}")
    # What the interpreter itself does first at exit: threading's exit hooks (they stop idle
    # thread-pool workers, e.g. Inductor's compile pool), then it joins the non-daemon threads.
    threading._shutdown()
    atexit._run_exitfuncs()
    mpi = sys.modules.get("mpi4py.MPI")  # loaded under mpirun (DeepSpeed's rank discovery)
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()  # mpi4py calls it at teardown; mpirun fails a rank that exits without it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say
            pass
    os._exit(status or 0)
