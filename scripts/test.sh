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
# Two pytest-xdist workers, a test module per work unit (module fixtures stay shared), handed out
# in collection order (tests/conftest.py puts multi-process modules first): about half the CPU of
# a serial run is idle (launches starting, ranks waiting on each other, hang and timeout tests
# waiting), which the second worker fills. MEGATINY_TEST_WORKERS=0 runs it serially.
workers="${MEGATINY_TEST_WORKERS:-2}"
echo "[test] pytest ($workers workers)"
exec "$venv/bin/python" -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
