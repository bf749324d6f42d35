"""megatiny.process_env: free ports and the interpreter's bin directory first on PATH."""
import os
import socket
import sys
from pathlib import Path

from megatiny.process_env import free_port, path_with_interpreter_bin, put_interpreter_bin_first


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
