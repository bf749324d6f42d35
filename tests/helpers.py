"""Shared helpers for tests: subprocess runs, free ports, the venv's executables."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from megatiny.process_env import free_port, path_with_interpreter_bin

REPO_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["REPO_ROOT", "free_port", "run_command", "venv_bin"]  # free_port: megatiny.process_env


def venv_bin(name: str) -> str:
    """Path of an executable installed beside the running interpreter (e.g. `deepspeed`)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_command(cmd: list[str], timeout: float, cwd: Path | str = REPO_ROOT,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` with stdout+stderr captured together as text; never raises on exit status."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env["PATH"] = path_with_interpreter_bin(full_env.get("PATH"))
    if env:
        full_env.update(env)
    return subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
