"""Shared helpers for tests: subprocess runs, free ports, the venv's executables."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def venv_bin(name: str) -> str:
    """Path of an executable installed beside the running interpreter (e.g. `deepspeed`)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(cmd: list[str], timeout: float, cwd: Path | str = REPO_ROOT,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` with stdout+stderr captured together as text; never raises on exit status."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env["PATH"] = f"{Path(sys.executable).parent}:{full_env.get('PATH', '')}"
    if env:
        full_env.update(env)
    return subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
