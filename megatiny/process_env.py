"""Process-environment helpers shared by the launcher code, the tools and the tests.

    free_port()                  a TCP port on 127.0.0.1 that is free right now
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
import socket
import sys
import threading
from pathlib import Path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (another process may still take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
