"""Suite-wide pytest configuration."""
import faulthandler
import os
import sys
from pathlib import Path

import pytest

from megatiny.process_env import PORTS_ENV, port_range, put_interpreter_bin_first

# Single-threaded math keeps CPU results deterministic and avoids oversubscribing 2-core CI.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every subprocess finds the venv's tools first (deepspeed, ninja): DeepSpeed's JIT op cache is
# rebuilt, for minutes, whenever a process sees a different `ninja` than the one that built it.
put_interpreter_bin_first()


def _this_workers_ports() -> str:
    """This pytest-xdist worker's slice of free_port()'s range, as $MEGATINY_PORTS: the workers'
    launches (and their ranks, which inherit it) never pick the same rendezvous port."""
    low, high = port_range()
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker is None or workers is None:
        return f"{low}-{high}"
    index, size = int(worker.removeprefix("gw")), (high - low + 1) // int(workers)
    if size < 1:
        raise pytest.UsageError(f"{PORTS_ENV}={low}-{high} has fewer ports than the {workers} test workers")
    return f"{low + index * size}-{low + (index + 1) * size - 1}"


os.environ[PORTS_ENV] = _this_workers_ports()

# DeepSpeed JIT-compiles small C++ ops (on CPU: CPUAdam, for optimizer offload; its shared-memory
# allreduce is skipped by megatiny.parallel.process_group.skip_inference_shm_allreduce). The suite keeps
# them in a directory of its own and builds them once, before any test starts ranks, so no rank
# waits on the build lock of another process.
_REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_REPO_ROOT / ".pytest_cache" / "torch_extensions"))

_BUILD_OPS = """
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("CPUAdamBuilder")
if builder is not None and builder.is_compatible():
    builder.load(verbose=False)
"""


@pytest.fixture(scope="session", autouse=True)
def deepspeed_ops_built(request):
    """Build DeepSpeed's JIT ops once per suite run when any multi-process (slow) test is selected."""
    if not any(item.get_closest_marker("slow") for item in request.session.items):
        return
    from tests.helpers import run_command, timeout_s
    result = run_command([sys.executable, "-c", _BUILD_OPS], timeout=timeout_s(extra_s=300))
    assert result.returncode == 0, f"building DeepSpeed's ops failed:\n{result.stdout[-4000:]}"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Every test gets a deadline (pytest-timeout, signal method: on expiry the stacks of all threads
    are printed and that test fails), sized like the launches' budgets in tests/helpers.py, unless
    --timeout or PYTEST_TIMEOUT sets one. Runs before pytest-timeout reads its settings."""
    from tests.helpers import per_test_timeout_s

    if config.getoption("timeout", None) is None and not os.environ.get("PYTEST_TIMEOUT"):
        config.option.timeout = per_test_timeout_s()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A backstop for a hang the timeout's signal cannot break (a thread stuck in C code): a
    while after the test's deadline, faulthandler prints every thread's stack and ends the run,
    so CI fails in minutes instead of waiting for its own limit."""
    timeout = item.config.getoption("timeout", None) or 0
    if timeout > 0:
        faulthandler.dump_traceback_later(2 * timeout + 60, exit=True)
    try:
        yield
    finally:
        if timeout > 0:
            faulthandler.cancel_dump_traceback_later()


def pytest_collection_modifyitems(config, items):
    """Modules with multi-process (`slow`) tests run first, each module's tests together and in
    their order. scripts/test.sh runs the suite on 2 pytest-xdist workers, one module per work unit
    handed out in this order: the long launches start early and the many quick in-process tests
    fill the end, so neither worker idles while the other finishes a long launch chain."""
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    order = {}
    for item in items:
        order.setdefault(item.nodeid.split("::")[0], len(order))
    items.sort(key=lambda item: (item.nodeid.split("::")[0] not in slow_modules,
                                 order[item.nodeid.split("::")[0]]))


@pytest.fixture
def restore_environment():
    """The environment as it was before the test: for tests that make an in-process group of one
    (train(), init_distributed), which sets RANK, WORLD_SIZE, MASTER_PORT, ... in os.environ."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
