"""Multi-process runs of tests/parallel/parallel_worker.py, shared by the tests of this package.

Each fixture is one launch (gloo on CPU) per test run, shared by the suite's xdist workers; the
results are the per-rank JSON files."""
import json
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, built_once, launch_ranks, run_command, timeout_s

WORKER = "tests/parallel/parallel_worker.py"


def launch(tmp_path_factory, name: str, ranks: int, args: list[str]) -> list[dict]:
    """One launch of `ranks` processes per test run (`built_once`: shared by the suite's workers);
    each trains up to ~16 tiny 8-step engines (seconds each). Returns every rank's results."""
    def run(out: Path) -> None:
        result = run_command([*launch_ranks(ranks), WORKER, "--out-dir", str(out), *args],
                             timeout=timeout_s(steps=16 * 8, seconds_per_step=2),
                             env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stdout[-6000:]

    out = built_once(tmp_path_factory, name, run)
    check = args[args.index("--check") + 1]
    return [json.loads((out / f"{check}-rank{r}.json").read_text()) for r in range(ranks)]


@pytest.fixture(scope="session")
def model_checks(tmp_path_factory) -> list[dict]:
    """TP2, TP2+SP and CP2 models against the one-rank model, in one 2-rank launch (TP2+SP and
    CP2 also on a packed batch with the document options on)."""
    return launch(tmp_path_factory, "model_checks", 2,
                  ["--check", "model", "--layouts", "tp2", "tp2-sp", "cp2",
                   "--also-documents", "tp2-sp", "cp2"])


@pytest.fixture(scope="session")
def reference_engines(tmp_path_factory) -> dict:
    """The one-rank DeepSpeed runs (ZeRO-1 and ZeRO-3) every layout must reproduce."""
    return launch(tmp_path_factory, "reference", 1, ["--check", "engines", "--layouts", "one",
                                                            "--also-documents", "one", "one-accum2"])[0]


@pytest.fixture(scope="session")
def two_rank_engines(tmp_path_factory) -> list[dict]:
    return launch(tmp_path_factory, "engines2", 2,
                  ["--check", "engines", "--layouts", "tp2", "tp2-sp", "cp2", "pp2",
                   "--also-bf16", "tp2-sp", "cp2", "pp2", "--also-deepspeed-sp",
                   "--also-documents", "tp2-sp", "cp2", "pp2"])


@pytest.fixture(scope="session")
def four_rank_engines(tmp_path_factory) -> list[dict]:
    """TP2 x DP2, CP2 x DP2 and PP2 x TP2 engines (the layouts' data size follows from 4 ranks),
    the groups, and model-level checks of TP2 x CP2 with and without SP."""
    return launch(tmp_path_factory, "engines4", 4,
                  ["--check", "engines", "--layouts", "tp2", "cp2", "pp2-tp2", "--also-groups",
                   "--also-model", "tp2-cp2", "tp2-sp-cp2", "--also-documents", "pp2-tp2"])
