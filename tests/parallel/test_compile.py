"""`runtime.compile: true` (each transformer block torch.compiled) trains exactly as eager.

Real DeepSpeed engines (`build_engine`), fp32, the tiny 2-layer model, SDPA attention (what `auto`
runs on CPU), activation checkpointing on every block unless the case says ac0; 4 steps eager then
4 compiled in the same process
(tests/parallel/compile_worker.py): losses, DeepSpeed's gradient norms and a validation loss
within 1e-5. Dynamo's counters are asserted: no graph break, one graph for the training step (the
pipeline: two, see below) however many blocks, nothing compiled after the first step (a ZeRO-3
hook or any other guard forcing a recompile per step fails), and one more graph for validation (no
grad, eval mode). Resume: a compiled run resumed from its checkpoint equals the eager resume, and
the restarted compile hits Inductor's on-disk cache.

What each case proves, by `runtime.compile_backend`:
- inductor (Inductor's generated C++ kernels, the default backend), where the risk is in the
  generated code: one rank, micro-batches of 2 accumulated twice ("one-accum2", activation
  checkpointing on and off), the resume, and DP2 under ZeRO-3 ("one:3": ZeRO-3's parameter
  gathering around compiled blocks that are ZeRO-3 leaves). All four train on [2, 16]
  micro-batches, so they share one set of compiled graphs: the one-rank launch compiles them
  (a cold compile, ~35 CPU-seconds here) and the two-rank launch, after it, finds them in
  Inductor's on-disk cache (dynamo still traces every case and every rank). In the whole suite
  the training graph is usually there already: the GPU script's smoke run
  (tests/model/test_benchmarks.py, handed out earlier by tests/conftest.py's order, same cache)
  compiles the same block graph, leaving the validation graph (if both run at once, each compiles).
- aot_eager (Dynamo and AOTAutograd trace the same forward and backward graphs, run with eager
  kernels; no code generated), where the risk is in the tracing: TP2 + SP under ZeRO-3, CP2 and
  PP2. Their collectives and hooks (tensor-parallel regions, sequence-parallel scatter/gather,
  Ulysses all-to-all, the pipeline's reentrant checkpoint) are what could break a graph or
  force a recompile, and that is the same under either backend; Inductor's kernels for their
  sharded shapes would be the one-rank kernels at other sizes, each a cold C++ compile of
  10-15 s per case. Their losses and norms against eager check AOTAutograd's traced graphs
  (functionalized forward, partitioned backward) compute the same values.

Two launches: one rank, then two ranks (DP2 under ZeRO-3, TP2 + SP under ZeRO-3, CP2, PP2; ZeRO-2
is left to the eager exactness tests). Inductor's cache is the suite's own
(`tests.helpers.inductor_cache_dir`), so a rerun of the suite skips the C++ compiles too.
"""
import json

import pytest

from tests.helpers import REPO_ROOT, inductor_cache_dir, launch_ranks, run_command, timeout_s

WORKER = "tests/parallel/compile_worker.py"
TOLERANCE = 1e-5
# LAYOUT:STAGE[:ac0][:BACKEND] (compile_worker.parse_case; BACKEND: runtime.compile_backend,
# default inductor). The inductor cases share their [2, 16] micro-batches' graphs (see above).
ONE_RANK_CASES = ["one-accum2:1", "one-accum2:1:ac0"]
TWO_RANK_CASES = ["one:3", "tp2-sp:3:aot_eager", "cp2:1:aot_eager", "pp2:1:aot_eager"]
# Graphs of a training step, by layout: DeepSpeed's pipeline engine checkpoints with a reentrant
# checkpoint, whose first forward runs without grad (a second graph).
TRAINING_GRAPHS = {"pp2": 2}


def _launch(tmp_path, ranks: int, args: list[str]) -> list[dict]:
    result = run_command(
        [*launch_ranks(ranks), WORKER, "--out-dir", str(tmp_path), *args],
        timeout=timeout_s(steps=8 * 8, seconds_per_step=2, extra_s=300),  # + cold C++ compiles
        env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
             "TORCHINDUCTOR_CACHE_DIR": inductor_cache_dir()})
    assert result.returncode == 0, result.stdout[-6000:]
    return [json.loads((tmp_path / f"compile-rank{r}.json").read_text()) for r in range(ranks)]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> dict:
    return _launch(tmp_path_factory.mktemp("compile1"), 1, ["--cases", *ONE_RANK_CASES, "--resume"])[0]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return _launch(tmp_path_factory.mktemp("compile2"), 2, ["--cases", *TWO_RANK_CASES])


def max_rel_diff(ours: list[float], reference: list[float]) -> float:
    assert len(ours) == len(reference) > 0
    return max(abs(a - b) / abs(b) for a, b in zip(ours, reference))


def _check_case(case: str, result: dict) -> None:
    eager, compiled = result["eager"], result["compiled"]
    for key in ("losses", "grad_norms"):
        assert max_rel_diff(compiled[key], eager[key]) < TOLERANCE, (case, key, compiled, eager)
    assert max_rel_diff([compiled["valid_loss"]], [eager["valid_loss"]]) < TOLERANCE, (case, compiled, eager)
    first, last = result["counts_first_step"], result["counts"]
    assert first["graph_breaks"] == last["graph_breaks"] == 0, (case, last["break_reasons"])
    assert first["graphs"] == TRAINING_GRAPHS.get(case.split(":")[0], 1), (case, first)
    assert last["graphs"] == first["graphs"] + 1, (case, "recompiled after the first step", first, last)
    assert last["frames"] == last["graphs"], (case, last)


@pytest.mark.slow
@pytest.mark.parametrize("case", ONE_RANK_CASES)
def test_compiled_blocks_equal_eager_on_one_rank(one_rank, case):
    _check_case(case, one_rank[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", TWO_RANK_CASES)
def test_compiled_blocks_equal_eager_on_two_ranks(two_ranks, case):
    for results in two_ranks:
        _check_case(case, results[case])


@pytest.mark.slow
def test_resumed_compiled_run_equals_eager_resume_and_reuses_the_compile_cache(one_rank):
    eager, compiled = one_rank["resume-compile-False"], one_rank["resume-compile-True"]
    for key in ("losses", "grad_norms"):
        assert max_rel_diff(compiled[key], eager[key]) < TOLERANCE, (key, compiled, eager)
    assert compiled["counts"]["graph_breaks"] == 0 and compiled["counts"]["graphs"] == 1, compiled
    assert compiled["fx_cache_hits"] > 0, compiled
