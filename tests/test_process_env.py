"""megatiny.process_env: free ports, the interpreter's bin directory first on PATH, fast exit."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from megatiny.process_env import free_port, path_with_interpreter_bin, put_interpreter_bin_first
from tests.helpers import timeout_s


def test_free_port_can_be_bound():
    port = free_port()
    assert 1024 <= port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


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
