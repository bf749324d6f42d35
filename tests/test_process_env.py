"""megatiny.process_env: free ports, the interpreter's bin directory first on PATH, fast exit."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from megatiny import process_env
from megatiny.process_env import (
    PORTS_ENV,
    free_port,
    path_with_interpreter_bin,
    port_range,
    put_interpreter_bin_first,
)
from tests.helpers import timeout_s


def test_free_port_can_be_bound_and_is_outside_the_ephemeral_range(monkeypatch):
    monkeypatch.delenv(PORTS_ENV, raising=False)
    ephemeral_low, ephemeral_high = map(int, process_env.EPHEMERAL_RANGE_FILE.read_text().split())
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # random picks: processes starting together do not collide
    for port in ports:
        assert 1024 <= port < 65536 and not ephemeral_low <= port <= ephemeral_high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_free_port_skips_a_port_in_use_and_stays_in_megatiny_ports(monkeypatch):
    taken = free_port()  # outside the ephemeral range, so no connection takes its neighbour either
    spare = taken + 1 if taken < port_range()[1] else taken - 1
    with socket.socket() as listening:
        listening.bind(("", taken))
        listening.listen()
        monkeypatch.setenv(PORTS_ENV, f"{min(taken, spare)}-{max(taken, spare)}")
        assert {free_port() for _ in range(10)} == {spare}
        monkeypatch.setenv(PORTS_ENV, f"{taken}-{taken}")
        with pytest.raises(RuntimeError, match=f"no free TCP port in {taken}-{taken}.*{PORTS_ENV}"):
            free_port()


@pytest.mark.parametrize("text", ["20000", "a-b", "30000-20000", "80-90", "60000-70000"])
def test_a_bad_megatiny_ports_is_named(text):
    with pytest.raises(ValueError, match=f"{PORTS_ENV}='{text}': expected LOW-HIGH"):
        port_range({PORTS_ENV: text})


def test_the_range_avoids_an_unusual_ephemeral_range(monkeypatch, tmp_path):
    ranges = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(process_env, "EPHEMERAL_RANGE_FILE", ranges)
    for ephemeral, expected in [("32768\t60999", (20000, 32767)), ("15000 50000", (50001, 65535)),
                                ("1024 65000", (1024, 65535))]:
        ranges.write_text(ephemeral)
        assert port_range({}) == expected
    assert port_range({PORTS_ENV: "21000-21999"}) == (21000, 21999)


def test_interpreter_bin_goes_first_once():
    bin_dir = str(Path(sys.executable).parent)
    assert path_with_interpreter_bin("/usr/bin:/bin") == f"{bin_dir}{os.pathsep}/usr/bin:/bin"
    assert path_with_interpreter_bin(f"{bin_dir}:/usr/bin") == f"{bin_dir}:/usr/bin"
    assert path_with_interpreter_bin(None) == path_with_interpreter_bin("") == bin_dir


def test_put_first_only_if_the_directory_has_the_executable(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    put_interpreter_bin_first(if_it_has="no-such-program-here")
    assert os.environ["PATH"] == "/usr/bin"
    put_interpreter_bin_first(if_it_has=Path(sys.executable).name)
    assert os.environ["PATH"] == f"{Path(sys.executable).parent}{os.pathsep}/usr/bin"


EXITING_PROGRAM = """
import atexit, concurrent.futures, sys, threading, time
from megatiny.process_env import exit_fast
pool = concurrent.futures.ThreadPoolExecutor(1)  # an idle worker, stopped only by threading's exit hooks
pool.submit(int).result()
def late_writer():
    time.sleep(0.3)
    print("thread done", end="|")
atexit.register(lambda: print("atexit ran", end="|"))
threading.Thread(target=late_writer).start()
print("buffered, no newline", end="|")
sys.stderr.write("to stderr")
exit_fast(3)
print("never")
"""


def test_exit_fast_keeps_what_a_normal_exit_does(tmp_path):
    """Status, a non-daemon thread joined (and an idle thread pool's worker stopped, not waited
    for forever), atexit run, both streams flushed into pipes (block-buffered there, so an exit
    that skips the flush loses the text)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, "-c", EXITING_PROGRAM], capture_output=True, text=True,
                            timeout=timeout_s(), env={**env, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.returncode == 3
    assert result.stdout == "buffered, no newline|thread done|atexit ran|"
    assert result.stderr.endswith("to stderr")


MPI_PROGRAM = """
from mpi4py import MPI
from megatiny.process_env import exit_fast
import os
os.write(1, f"rank {MPI.COMM_WORLD.Get_rank()}\\n".encode())  # one write: the ranks' lines never interleave
exit_fast(0)
"""


def test_exit_fast_finalizes_mpi_under_mpirun(tmp_path):
    """mpirun counts a rank that exits without MPI_Finalize as failed (mpi4py calls it only in the
    interpreter's teardown, which exit_fast skips)."""
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed")
    program = tmp_path / "mpi_exit.py"
    program.write_text(MPI_PROGRAM)
    mpirun = ["mpirun", "-np", "2", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
              "-x", "PYTHONPATH"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([*mpirun, sys.executable, str(program)], capture_output=True, text=True,
                            timeout=timeout_s(), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(result.stdout.split("\n")[:2]) == ["rank 0", "rank 1"]
