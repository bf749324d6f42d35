#!/usr/bin/env bash
# The test command: set up the environment if needed, lint, then run the whole suite
# (slow multi-process and two-host tests included). Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
venv="${MEGATINY_VENV:-$repo/.venv}"
# The venv's bin/ goes first on PATH in tests/conftest.py (megatiny.process_env), for pytest and
# every process it starts.
echo "[test] ruff check"
"$venv/bin/ruff" check .
echo "[test] pytest"
exec "$venv/bin/python" -m pytest "$@"
