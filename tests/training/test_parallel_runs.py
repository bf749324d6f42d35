"""Training runs with model parallelism (`parallel:` section): real multi-rank launches on CPU
(gloo), tiny-test model in fp32, against the one-rank run of the same config.

Every run is `megatiny train --config RUN.yaml OVERRIDES` (what tools/train.py runs), and the runs
of one world size share a launch: tests/training/train_sequence.py trains them one after the other
in the same ranks (plain `python` for one rank, tests/rank_launcher.py for more: the environment
`deepspeed --num_gpus N` gives), each with its own process group, rendezvous port, output (one
log per rank) and exit status. Four launches, in this order:

  one rank (plain python), ZeRO-3:
    one       4 steps, saves 2 and 4 (the reference)
    one-init  2 steps from `one`'s step-4 weights (checkpoint.init_from, fresh optimizer)
    one-kv4   a 4-kv-group model's 4 steps (the tp2 x cp2 reference)
  two ranks:
    pp2-zero3    parallel.pipeline=2 under ZeRO-3: refused before anything starts
    tp2          parallel.tensor=2 (data-parallel size 1): the same 4 steps, saves 2 and 4
    tp2-resumed  tp2's step 2 (copied as `latest`) resumed on the same layout to step 4 (bitwise)
    tp2-data2    tp2's step 2 resumed on 2 data-parallel ranks (resharded) to step 4
    cp2, cp2-resumed  parallel.context=2 (Ulysses), the same 4 steps; its step 2 resumed (bitwise)
    pp2          parallel.pipeline=2 (ZeRO-1, nan_policy stop): the same 4 steps, saves 2 and 4
    tp2-sp       tensor 2 with sequence parallelism, the same 4 steps, saves 4
    dp2-zero1    plain data parallelism, ZeRO-1, the same 4 steps, saves 2
    tp2-init, pp2-init  `one-init`'s 2 steps on tensor 2 and on pipeline 2
  one rank again (the two-rank checkpoints resumed, resharded):
    pp2-one   pp2's step 2 on one rank under ZeRO-3 (layers, stages and ZeRO stage change)
    dp2-one   dp2-zero1's step 2 on one rank (ZeRO-1)
  four ranks (slow even among these):
    tp2dp2       tp2 x dp2, saves 2 and 4
    tp2dp2-data4 its step 2 resumed on data 4
    tp2pp2, cp2dp2; tp2cp2-sp (tp2 x cp2 + sp, the 4-kv-group model, against one-kv4)
Every run validates after steps 2 and 4 (2 micro-batches per data-parallel rank).
The same samples reach every run in the same order (tensor and context ranks of one replica read
the same rows), so the losses agree to fp32 rounding of the reordered sums. Every layout's last
checkpoint exports to a Hugging Face model with the one-rank export's logits.
A run that fails fails the tests that read it (with its output); a launch that fails (a crash,
a hang) fails every test of its runs.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers

from megatiny.checkpoint import export_hf
from megatiny.checkpoint.metadata import read_metadata
from megatiny.cli import convert as convert_checkpoint
from tests.helpers import REPO_ROOT, launch_ranks, output_tail, rank_env, run_command, timeout_s, venv_bin
from tests.training.conftest import write_run_config
from tests.training.train_sequence import PlannedRun, last_log, run_result, write_plan

pytestmark = pytest.mark.slow

TRAIN_SEQUENCE = str(REPO_ROOT / "tests" / "training" / "train_sequence.py")
ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT), **rank_env()}
STEPS = 4
# One run's budget inside a launch (the launch itself is paid once, in `_launch`'s budget).
RUN_S = timeout_s(launches=0, steps=STEPS, seconds_per_step=4, extra_s=30)
# `logging.eval_iters` counts micro-batches per data-parallel rank: runs with 2 data-parallel ranks
# validate the one-rank run's 4 samples with 1 (EVAL_DP2), 4 ranks cannot (EVAL_OFF).
EVAL_DP2, EVAL_OFF = "logging.eval_iters=1", "logging.eval_interval=0"
ZERO1 = "distributed.deepspeed_config=ds_configs/zero1.json"
PIPELINE2 = ("parallel.pipeline=2", "nan_policy=stop", ZERO1)  # DeepSpeed's pipeline engine
NO_SAVES = "checkpoint.save_interval=0"
KV4 = "model.num_query_groups=4"
STEP_2 = "step_00000002"
INIT_STEPS = 2  # runs from `one`'s final weights: fresh optimizer, no checkpoints written
SECTIONS = dict(schedule={"train_steps": STEPS, "warmup_steps": 2},
                checkpoint={"save_interval": 2},
                logging={"log_interval": 1, "eval_interval": 2, "eval_iters": 2},
                runtime={"precision": "fp32", "attention_backend": "math"})


@dataclass(frozen=True)
class Run:
    """One run of a launch: `megatiny train` of a tiny-test config with `overrides`, after its
    `resumes` run's step-2 checkpoint is copied into its save directory (as `latest`), if any."""

    name: str
    overrides: tuple[str, ...] = ()
    resumes: str | None = None


def _save_dir(root: Path, name: str) -> Path:
    return root / name / "ckpt"


def _launch(root: Path, tiny_data, ranks: int, runs: list[Run],
            others: dict[str, Path] | None = None) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """One launch of `ranks` ranks training `runs` in order (tests/training/train_sequence.py);
    run NAME's config and checkpoints are under ROOT/NAME. `resumes` names an earlier run of
    this launch or one of `others` (name -> its save directory). Returns name -> (its result:
    exit status and every rank's output, rank 0's first; its save directory)."""
    save_dirs = dict(others or {})
    plan = []
    for run in runs:
        save_dirs[run.name] = _save_dir(root, run.name)
        (root / run.name).mkdir(parents=True)
        config = write_run_config(root / run.name / "run.yaml", tiny_data, save_dirs[run.name], **SECTIONS)
        copy = (str(save_dirs[run.resumes] / STEP_2), str(save_dirs[run.name])) if run.resumes else None
        plan.append(PlannedRun(run.name, ("--config", str(config), *run.overrides), copy_step=copy))
    plan_file = write_plan(root / "plan.json", root / "logs", plan, wait_s=RUN_S)
    start = [venv_bin("python")] if ranks == 1 else launch_ranks(ranks)
    # 4 ranks on 2 cores take about twice as long per step
    budget = timeout_s(extra_s=len(runs) * RUN_S * max(1, ranks // 2))
    launch = run_command([*start, TRAIN_SEQUENCE, "--plan", str(plan_file)], timeout=budget, env=ENV)
    assert launch.returncode == 0, f"the launch of {[run.name for run in runs]} failed:\n" + \
        output_tail(launch.stdout + last_log(root / "logs"), 100)
    return {run.name: (run_result(root / "logs", run.name, ranks), save_dirs[run.name]) for run in runs}


def _ok(launched: dict, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `name` of a launch, which must have succeeded: (its result, its save directory)."""
    result, save_dir = launched[name]
    tail = output_tail(result.stdout, 100)
    assert result.returncode == 0, f"run {name} exited {result.returncode}:\n{tail}"
    return result, save_dir


def _from_one(root: Path) -> tuple[str, ...]:
    """Overrides of a run from `one`'s final weights (`one` of the one-rank launch under `root`)."""
    return (f"checkpoint.init_from={_save_dir(root, 'one')}", f"schedule.train_steps={INIT_STEPS}",
            NO_SAVES, "checkpoint.save_at_end=false")


@pytest.fixture(scope="module")
def one_rank(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("one-rank")
    return _launch(root, tiny_data, 1, [Run("one"), Run("one-init", _from_one(root)),
                                        Run("one-kv4", (KV4, NO_SAVES))])


@pytest.fixture(scope="module")
def two_ranks(one_rank, tiny_data, tmp_path_factory):
    one_root = _ok(one_rank, "one")[1].parents[1]
    return _launch(tmp_path_factory.mktemp("two-ranks"), tiny_data, 2, [
        Run("pp2-zero3", ("parallel.pipeline=2",)),
        Run("tp2", ("parallel.tensor=2",)),
        Run("tp2-resumed", ("parallel.tensor=2",), resumes="tp2"),
        Run("tp2-data2", (EVAL_DP2,), resumes="tp2"),
        Run("cp2", ("parallel.context=2",)),
        Run("cp2-resumed", ("parallel.context=2",), resumes="cp2"),
        Run("pp2", PIPELINE2),
        Run("tp2-sp", ("parallel.tensor=2", "parallel.sequence_parallel=true", NO_SAVES)),
        Run("dp2-zero1", (ZERO1, EVAL_DP2, "checkpoint.save_at_end=false")),
        Run("tp2-init", ("parallel.tensor=2", *_from_one(one_root))),
        Run("pp2-init", (*PIPELINE2, *_from_one(one_root))),
    ])


@pytest.fixture(scope="module")
def one_rank_resumes(two_ranks, tiny_data, tmp_path_factory):
    """Two-rank checkpoints resumed on one rank."""
    return _launch(tmp_path_factory.mktemp("one-rank-resumes"), tiny_data, 1,
                   [Run("pp2-one", resumes="pp2"), Run("dp2-one", (ZERO1,), resumes="dp2-zero1")],
                   others={name: _ok(two_ranks, name)[1] for name in ("pp2", "dp2-zero1")})


@pytest.fixture(scope="module")
def four_ranks(tiny_data, tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("four-ranks"), tiny_data, 4, [
        Run("tp2dp2", ("parallel.tensor=2", EVAL_DP2)),
        Run("tp2dp2-data4", (EVAL_OFF,), resumes="tp2dp2"),
        Run("tp2pp2", ("parallel.tensor=2", *PIPELINE2, NO_SAVES)),
        Run("cp2dp2", ("parallel.context=2", NO_SAVES, EVAL_DP2)),
        Run("tp2cp2-sp", (KV4, "parallel.tensor=2", "parallel.context=2", "parallel.sequence_parallel=true",
                          NO_SAVES)),
    ])


@pytest.fixture(scope="module")
def one_hf(one_rank, tmp_path_factory) -> Path:
    """The one-rank run's last checkpoint as a Hugging Face model (fp32)."""
    out = tmp_path_factory.mktemp("one-hf") / "hf"
    export_hf(_ok(one_rank, "one")[1], out, dtype="fp32", include_tokenizer=False)
    return out


def _losses(save_dir: Path) -> dict[int, tuple[float, float]]:
    """step -> (loss, grad_norm) from metrics.jsonl (the last record of a step wins)."""
    out = {}
    for line in (save_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = (record["loss"], record["grad_norm"])
    return out


def _valid_losses(save_dir: Path) -> dict[int, float]:
    """step -> validation loss from metrics.jsonl."""
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["valid_loss"] for r in records if "valid_loss" in r}


def _assert_close(save_dir: Path, reference_dir: Path, first: int = 1, last: int = STEPS,
                  rel: float = 1e-5, validated: bool = True) -> None:
    """Training losses and gradient norms of steps `first`..`last`, and the validation losses
    (after every second step, unless not `validated`), of the run in `save_dir` within `rel` of
    `reference_dir`'s."""
    ours, reference = _losses(save_dir), _losses(reference_dir)
    assert sorted(ours) == list(range(first, last + 1)), sorted(ours)
    for step in range(first, last + 1):
        (loss, norm), (ref_loss, ref_norm) = ours[step], reference[step]
        assert loss == pytest.approx(ref_loss, rel=rel), (step, loss, ref_loss)
        assert norm == pytest.approx(ref_norm, rel=rel), (step, norm, ref_norm)
    if not validated:
        return
    valid, ref_valid = _valid_losses(save_dir), _valid_losses(reference_dir)
    assert sorted(valid) == [step for step in range(first, last + 1) if step % 2 == 0], sorted(valid)
    for step, loss in valid.items():
        assert loss == pytest.approx(ref_valid[step], rel=rel), (step, loss, ref_valid[step])


def _assert_exports_like(save_dir: Path, reference_hf: Path, tmp_path: Path) -> None:
    """`megatiny convert to-hf` of `save_dir` (any layout: tensor / pipeline / ZeRO shards merged,
    GQA-correctly) gives a Hugging Face model whose logits match `reference_hf`'s (the one-rank
    run's export)."""
    out = tmp_path / "layout-hf"
    code = convert_checkpoint.main(["to-hf", str(save_dir), str(out), "--dtype", "fp32", "--no-tokenizer"])
    assert code == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(reference_hf, dtype=torch.float32)
    x = torch.randint(3, 320, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, expected = theirs(x).logits, reference(x).logits
    assert float((logits - expected).abs().max() / expected.abs().max()) < 1e-5


def test_tensor_parallel_run_matches_one_rank(one_rank, two_ranks):
    result, save_dir = _ok(two_ranks, "tp2")
    assert "2 ranks | ZeRO-3" in result.stdout
    assert "x 1 data-parallel ranks | tensor 2 x context 1 x pipeline 1 x data 1" in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one")[1])
    world = read_metadata(save_dir / "step_00000004")["train_state"].world
    assert (world.world_size, world.tensor_parallel_size, world.context_parallel_size) == (2, 2, 1)
    names = {p.name for p in (save_dir / "step_00000004").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_0_mp_rank_01_optim_states.pt"} <= names


def _assert_resumed_bitwise(launched: dict, name: str, reference: str) -> None:
    """Run `name` resumed a copy of run `reference`'s step-2 checkpoint on the same layout and
    trained to step 4: the same losses and gradient norms, bitwise."""
    result, save_dir = _ok(launched, name)
    reference_dir = _ok(launched, reference)[1]
    assert "resumed from" in result.stdout
    resumed, expected = _losses(save_dir), _losses(reference_dir)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == expected[step], step  # bitwise: same layout, same reductions
    assert _valid_losses(save_dir) == {4: _valid_losses(reference_dir)[4]}


def test_tensor_parallel_resume_is_bitwise(two_ranks):
    _assert_resumed_bitwise(two_ranks, "tp2-resumed", "tp2")


def test_tensor_parallel_checkpoint_exports_like_one_rank(two_ranks, one_hf, tmp_path):
    _assert_exports_like(_ok(two_ranks, "tp2")[1], one_hf, tmp_path)


def _assert_resharded(launched: dict, name: str, reference_dir: Path, saved: str,
                      validated: bool = True) -> None:
    """Run `name` resumed a copy of another layout's step-2 checkpoint (`saved`: that layout as
    the log names it): resharded, steps 3-4 match the uninterrupted one-rank run within 1e-5."""
    result, save_dir = _ok(launched, name)
    assert f"written by {saved}" in result.stdout
    assert "resharding its weights and optimizer state" in result.stdout
    _assert_close(save_dir, reference_dir, first=3, validated=validated)


def test_tensor_parallel_checkpoint_resumes_on_data_parallel_ranks(one_rank, two_ranks):
    _assert_resharded(two_ranks, "tp2-data2", _ok(one_rank, "one")[1],
                      saved="tensor 2 x context 1 x pipeline 1 x data 1 (2 ranks), ZeRO-3")


def test_context_parallel_run_matches_one_rank(one_rank, two_ranks):
    result, save_dir = _ok(two_ranks, "cp2")
    assert "tensor 1 x context 2 x pipeline 1 x data 1" in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one")[1])
    world = read_metadata(save_dir / "step_00000004")["train_state"].world
    assert (world.world_size, world.tensor_parallel_size, world.context_parallel_size) == (2, 1, 2)


def test_context_parallel_resume_is_bitwise(two_ranks):
    _assert_resumed_bitwise(two_ranks, "cp2-resumed", "cp2")


def test_pipeline_with_zero3_is_refused_naming_both(two_ranks):
    result, save_dir = two_ranks["pp2-zero3"]
    assert result.returncode != 0
    assert "parallel.pipeline = 2 needs ZeRO stage 0 or 1" in result.stdout
    assert "zero_optimization.stage" in result.stdout and "Traceback" not in result.stdout
    assert not save_dir.exists()  # refused before anything started


def test_pipeline_run_matches_one_rank(one_rank, two_ranks):
    result, save_dir = _ok(two_ranks, "pp2")
    assert "tensor 1 x context 1 x pipeline 2 x data 1" in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one")[1])
    world = read_metadata(save_dir / "step_00000004")["train_state"].world
    assert (world.pipeline_parallel_size, world.zero_stage) == (2, 1)


def test_pipeline_checkpoint_exports_like_one_rank(two_ranks, one_hf, tmp_path):
    _assert_exports_like(_ok(two_ranks, "pp2")[1], one_hf, tmp_path)


def test_pipeline_checkpoint_resumes_on_one_rank_under_zero3(one_rank, one_rank_resumes):
    """Pipeline 2 (ZeRO-1) -> no pipeline, one rank, ZeRO-3: layers, stages and ZeRO stage change."""
    _assert_resharded(one_rank_resumes, "pp2-one", _ok(one_rank, "one")[1],
                      saved="tensor 1 x context 1 x pipeline 2 x data 1 (2 ranks), ZeRO-1")


def test_sequence_parallel_run_matches_one_rank(one_rank, two_ranks, one_hf, tmp_path):
    result, save_dir = _ok(two_ranks, "tp2-sp")
    assert "tensor 2 x context 1 x pipeline 1 x data 1, sequence parallel" in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one")[1])
    _assert_exports_like(save_dir, one_hf, tmp_path)


def test_init_from_with_tensor_parallel_matches_one_rank(one_rank, two_ranks):
    """Every rank reads the one-rank checkpoint and keeps its tensor shard (under ZeRO-3, copied
    into its partitions); the first steps and validations equal the one-rank run's from it."""
    result, save_dir = _ok(two_ranks, "tp2-init")
    assert "initialised the weights from" in result.stdout
    assert "tensor 2 x context 1 x pipeline 1 x data 1" in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one-init")[1], last=INIT_STEPS)
    assert _losses(save_dir)[1][0] < _losses(_ok(one_rank, "one")[1])[1][0] - 0.3  # trained weights


def test_init_from_with_pipeline_matches_one_rank(one_rank, two_ranks):
    """Each pipeline stage takes its layers of the one-rank checkpoint (`load_full_state_dict`)."""
    result, save_dir = _ok(two_ranks, "pp2-init")
    assert "initialised the weights from" in result.stdout
    assert "tensor 1 x context 1 x pipeline 2 x data 1" in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one-init")[1], last=INIT_STEPS)


def test_zero1_checkpoint_resumes_on_fewer_data_ranks(one_rank, two_ranks, one_rank_resumes):
    """Plain data parallelism, ZeRO-1, 2 ranks -> 1: resharded (DeepSpeed's universal converter
    refuses ZeRO-1/2 checkpoints without Megatron-DeepSpeed's universal_checkpoint_info)."""
    one_dir = _ok(one_rank, "one")[1]
    _assert_close(_ok(two_ranks, "dp2-zero1")[1], one_dir)
    _assert_resharded(one_rank_resumes, "dp2-one", one_dir,
                      saved="tensor 1 x context 1 x pipeline 1 x data 2 (2 ranks), ZeRO-1")


# ------------------------------------------------------------------------------- four ranks
def test_tensor_by_data_parallel_run_matches_one_rank(one_rank, four_ranks, one_hf, tmp_path):
    result, save_dir = _ok(four_ranks, "tp2dp2")
    assert "2 micro x 2 accumulation x 2 data-parallel ranks | tensor 2 x context 1 x pipeline 1 x data 2" \
        in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one")[1])
    _assert_exports_like(save_dir, one_hf, tmp_path)


def test_tensor_by_data_checkpoint_resumes_on_four_data_ranks(one_rank, four_ranks):
    """The issue's example: tensor 2 x data 2 -> tensor 1 x data 4 (ZeRO-3 partitions 2 -> 4 ways)."""
    _assert_resharded(four_ranks, "tp2dp2-data4", _ok(one_rank, "one")[1], validated=False,
                      saved="tensor 2 x context 1 x pipeline 1 x data 2 (4 ranks), ZeRO-3")


def test_tensor_by_pipeline_run_matches_one_rank(one_rank, four_ranks, one_hf, tmp_path):
    result, save_dir = _ok(four_ranks, "tp2pp2")
    assert "tensor 2 x context 1 x pipeline 2 x data 1" in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one")[1])
    _assert_exports_like(save_dir, one_hf, tmp_path)


def test_context_by_data_parallel_run_matches_one_rank(one_rank, four_ranks, one_hf, tmp_path):
    result, save_dir = _ok(four_ranks, "cp2dp2")
    assert "tensor 1 x context 2 x pipeline 1 x data 2" in result.stdout
    _assert_close(save_dir, _ok(one_rank, "one")[1])
    _assert_exports_like(save_dir, one_hf, tmp_path)


def test_tensor_by_context_parallel_run_matches_one_rank(one_rank, four_ranks, tmp_path):
    """TP2 x CP2 with sequence parallelism (4 ranks): the context ranks need whole kv groups per
    tensor rank, so this model has 4 (tiny-test has 2) and its own one-rank reference."""
    result, save_dir = _ok(four_ranks, "tp2cp2-sp")
    reference_dir = _ok(one_rank, "one-kv4")[1]
    assert "tensor 2 x context 2 x pipeline 1 x data 1, sequence parallel" in result.stdout
    _assert_close(save_dir, reference_dir)
    reference_hf = tmp_path / "one-kv4-hf"
    export_hf(reference_dir, reference_hf, dtype="fp32", include_tokenizer=False)
    _assert_exports_like(save_dir, reference_hf, tmp_path)
