"""Training runs with model parallelism (`parallel:` section): real multi-rank launches of
tools/train.py (tests/rank_launcher.py: the environment `deepspeed --num_gpus N` gives) on CPU
(gloo), tiny-test model in fp32, against the one-rank run of the same config.

  one    plain `python`, 1 rank, ZeRO-3: 4 steps, saves 2 and 4 (the reference)
  tp2    2 ranks, parallel.tensor=2 (data-parallel size 1): the same 4 steps, saves 2 and 4
  cp2    2 ranks, parallel.context=2 (Ulysses): the same 4 steps, saves 2 and 4
  pp2    2 ranks, parallel.pipeline=2 (ZeRO-1, nan_policy stop): the same 4 steps, saves 2 and 4
  tp2-resumed, cp2-resumed  resume step 2 on the same layout and train to 4 (bitwise)
  tp2 -> data 2, pp2 -> one rank (ZeRO-3)  resume step 2 on another layout (resharded) to step 4
  tp2-sp 2 ranks, tensor 2 with sequence parallelism, the same 4 steps, saves 4
  4 ranks (slow even among these): tp2 x dp2 (saves 2 and 4) and its step 2 resumed on data 4;
         tp2 x pp2; cp2 x dp2; tp2 x cp2 + sp (a 4-kv-group model, against its own one-rank run)
Every run validates after steps 2 and 4 (2 micro-batches per data-parallel rank).
The same samples reach every run in the same order (tensor and context ranks of one replica read
the same rows), so the losses agree to fp32 rounding of the reordered sums. Every layout's last
checkpoint exports to a Hugging Face model with the one-rank export's logits.

  one-init, tp2-init, pp2-init  2 steps from `one`'s step-4 weights (checkpoint.init_from,
         fresh optimizer) on 1 rank, tensor 2 and pipeline 2: the same losses
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from megatiny.checkpoint import export_hf
from megatiny.checkpoint.io import write_latest
from megatiny.checkpoint.metadata import read_metadata
from megatiny.cli import convert as convert_checkpoint
from tests.helpers import REPO_ROOT, launch_ranks, rank_env, run_command, timeout_s, venv_bin
from tests.training.conftest import write_run_config

pytestmark = pytest.mark.slow

TRAIN = str(REPO_ROOT / "tools" / "train.py")
ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT), **rank_env()}
STEPS = 4
RUN_TIMEOUT_S = timeout_s(steps=STEPS, seconds_per_step=4, extra_s=30)
# `logging.eval_iters` counts micro-batches per data-parallel rank: runs with 2 data-parallel ranks
# validate the one-rank run's 4 samples with 1 (EVAL_DP2), 4 ranks cannot (EVAL_OFF).
EVAL_DP2, EVAL_OFF = "logging.eval_iters=1", "logging.eval_interval=0"
SECTIONS = dict(schedule={"train_steps": STEPS, "warmup_steps": 2},
                checkpoint={"save_interval": 2},
                logging={"log_interval": 1, "eval_interval": 2, "eval_iters": 2},
                runtime={"precision": "fp32", "attention_backend": "math"})


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


def _train(root: Path, tiny_data, *overrides: str, ranks: int, save_dir: Path | None = None, **sections):
    save_dir = save_dir or root / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    config = write_run_config(root / "run.yaml", tiny_data, save_dir, **{**SECTIONS, **sections})
    if ranks == 1:
        cmd = [venv_bin("python"), TRAIN]
    else:
        cmd = [*launch_ranks(ranks), TRAIN]
    result = run_command([*cmd, "--config", str(config), *overrides], timeout=RUN_TIMEOUT_S, env=ENV)
    assert result.returncode == 0, result.stdout[-5000:]
    return result, save_dir


@pytest.fixture(scope="module")
def one(tiny_data, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("one"), tiny_data, ranks=1)


@pytest.fixture(scope="module")
def tp2(tiny_data, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("tp2"), tiny_data, "parallel.tensor=2", ranks=2)


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


def test_tensor_parallel_run_matches_one_rank(one, tp2):
    result, save_dir = tp2
    assert "2 ranks | ZeRO-3" in result.stdout
    assert "x 1 data-parallel ranks | tensor 2 x context 1 x pipeline 1 x data 1" in result.stdout
    _assert_close(save_dir, one[1])
    world = read_metadata(save_dir / "step_00000004")["train_state"].world
    assert (world.world_size, world.tensor_parallel_size, world.context_parallel_size) == (2, 2, 1)
    names = {p.name for p in (save_dir / "step_00000004").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_0_mp_rank_01_optim_states.pt"} <= names


def _copy_step_2(source_dir: Path, tmp_path: Path) -> Path:
    """A new checkpoint root under `tmp_path` holding a copy of `source_dir`'s step 2 as `latest`."""
    save_dir = tmp_path / "ckpt"
    save_dir.mkdir(parents=True)
    shutil.copytree(source_dir / "step_00000002", save_dir / "step_00000002")
    write_latest(save_dir, "step_00000002")
    return save_dir


def _resume_from_step_2(reference_dir: Path, tiny_data, tmp_path: Path, *overrides: str) -> None:
    """Resume a copy of `reference_dir`'s step-2 checkpoint with `overrides` (its layout) to step 4:
    the same losses and gradient norms, bitwise."""
    save_dir = _copy_step_2(reference_dir, tmp_path)
    result, _ = _train(tmp_path, tiny_data, *overrides, ranks=2, save_dir=save_dir)
    assert "resumed from" in result.stdout
    resumed, expected = _losses(save_dir), _losses(reference_dir)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == expected[step], step  # bitwise: same layout, same reductions
    assert _valid_losses(save_dir) == {4: _valid_losses(reference_dir)[4]}


def test_tensor_parallel_resume_is_bitwise(tp2, tiny_data, tmp_path):
    _resume_from_step_2(tp2[1], tiny_data, tmp_path, "parallel.tensor=2")


def _assert_exports_like_one_rank(save_dir: Path, one_dir: Path, tmp_path: Path) -> None:
    """`megatiny convert to-hf` of `save_dir` (any layout: tensor / pipeline / ZeRO shards merged,
    GQA-correctly) gives a Hugging Face model whose logits match the one-rank run's export."""
    out = tmp_path / "layout-hf"
    code = convert_checkpoint.main(["to-hf", str(save_dir), str(out), "--dtype", "fp32", "--no-tokenizer"])
    assert code == 0
    out_one = tmp_path / "one-hf"
    if not out_one.exists():
        export_hf(one_dir, out_one, dtype="fp32", include_tokenizer=False)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(out_one, dtype=torch.float32)
    x = torch.randint(3, 320, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, expected = theirs(x).logits, reference(x).logits
    assert float((logits - expected).abs().max() / expected.abs().max()) < 1e-5


def test_tensor_parallel_checkpoint_exports_like_one_rank(one, tp2, tmp_path):
    _assert_exports_like_one_rank(tp2[1], one[1], tmp_path)


def _resume_on_other_layout(source_dir: Path, tiny_data, tmp_path: Path, *overrides: str, ranks: int,
                            reference_dir: Path, saved: str) -> None:
    """Resume a copy of `source_dir`'s step-2 checkpoint with `overrides` (another layout) on `ranks`
    ranks: resharded, steps 3-4 match the uninterrupted one-rank run within 1e-5."""
    save_dir = _copy_step_2(source_dir, tmp_path)
    result, _ = _train(tmp_path, tiny_data, *overrides, ranks=ranks, save_dir=save_dir)
    assert f"written by {saved}" in result.stdout
    assert "resharding its weights and optimizer state" in result.stdout
    _assert_close(save_dir, reference_dir, first=3, validated=EVAL_OFF not in overrides)


def test_tensor_parallel_checkpoint_resumes_on_data_parallel_ranks(one, tp2, tiny_data, tmp_path):
    _resume_on_other_layout(tp2[1], tiny_data, tmp_path, EVAL_DP2, ranks=2, reference_dir=one[1],
                            saved="tensor 2 x context 1 x pipeline 1 x data 1 (2 ranks), ZeRO-3")


@pytest.fixture(scope="module")
def cp2(tiny_data, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("cp2"), tiny_data, "parallel.context=2", ranks=2)


def test_context_parallel_run_matches_one_rank(one, cp2):
    result, save_dir = cp2
    assert "tensor 1 x context 2 x pipeline 1 x data 1" in result.stdout
    _assert_close(save_dir, one[1])
    world = read_metadata(save_dir / "step_00000004")["train_state"].world
    assert (world.world_size, world.tensor_parallel_size, world.context_parallel_size) == (2, 1, 2)


def test_context_parallel_resume_is_bitwise(cp2, tiny_data, tmp_path):
    _resume_from_step_2(cp2[1], tiny_data, tmp_path, "parallel.context=2")


def test_pipeline_with_zero3_is_refused_naming_both(tiny_data, tmp_path):
    config = write_run_config(tmp_path / "run.yaml", tiny_data, tmp_path / "ckpt", **SECTIONS)
    result = run_command([*launch_ranks(2), TRAIN, "--config", str(config), "parallel.pipeline=2"],
                         timeout=RUN_TIMEOUT_S, env=ENV)
    assert result.returncode != 0
    assert "parallel.pipeline = 2 needs ZeRO stage 0 or 1" in result.stdout
    assert "zero_optimization.stage" in result.stdout and "Traceback" not in result.stdout


@pytest.fixture(scope="module")
def pp2(tiny_data, tmp_path_factory):
    """parallel.pipeline=2 through DeepSpeed's pipeline engine (ZeRO-1, 1F1B over the 4 micro-batches
    of a step), starting from the one-rank model's initial weights."""
    return _train(tmp_path_factory.mktemp("pp2"), tiny_data, "parallel.pipeline=2", "nan_policy=stop",
                  "distributed.deepspeed_config=ds_configs/zero1.json", ranks=2)


def test_pipeline_run_matches_one_rank(one, pp2):
    result, save_dir = pp2
    assert "tensor 1 x context 1 x pipeline 2 x data 1" in result.stdout
    _assert_close(save_dir, one[1])
    world = read_metadata(save_dir / "step_00000004")["train_state"].world
    assert (world.pipeline_parallel_size, world.zero_stage) == (2, 1)


def test_pipeline_checkpoint_exports_like_one_rank(one, pp2, tmp_path):
    _assert_exports_like_one_rank(pp2[1], one[1], tmp_path)


def test_pipeline_checkpoint_resumes_on_one_rank_under_zero3(one, pp2, tiny_data, tmp_path):
    """Pipeline 2 (ZeRO-1) -> no pipeline, one rank, ZeRO-3: layers, stages and ZeRO stage change."""
    _resume_on_other_layout(pp2[1], tiny_data, tmp_path, ranks=1, reference_dir=one[1],
                            saved="tensor 1 x context 1 x pipeline 2 x data 1 (2 ranks), ZeRO-1")


def test_sequence_parallel_run_matches_one_rank(one, tiny_data, tmp_path):
    result, save_dir = _train(tmp_path, tiny_data, "parallel.tensor=2", "parallel.sequence_parallel=true",
                              "checkpoint.save_interval=0", ranks=2)
    assert "tensor 2 x context 1 x pipeline 1 x data 1, sequence parallel" in result.stdout
    _assert_close(save_dir, one[1])
    _assert_exports_like_one_rank(save_dir, one[1], tmp_path)


INIT_STEPS = 2  # runs from `one`'s final weights: fresh optimizer, no checkpoints written


def _train_from_one(one, tiny_data, root: Path, *overrides: str, ranks: int) -> tuple:
    return _train(root, tiny_data, *overrides, f"checkpoint.init_from={one[1]}",
                  f"schedule.train_steps={INIT_STEPS}", "checkpoint.save_interval=0",
                  "checkpoint.save_at_end=false", ranks=ranks)


@pytest.fixture(scope="module")
def one_init(one, tiny_data, tmp_path_factory):
    return _train_from_one(one, tiny_data, tmp_path_factory.mktemp("one-init"), ranks=1)


def test_init_from_with_tensor_parallel_matches_one_rank(one, one_init, tiny_data, tmp_path):
    """Every rank reads the one-rank checkpoint and keeps its tensor shard (under ZeRO-3, copied
    into its partitions); the first steps and validations equal the one-rank run's from it."""
    result, save_dir = _train_from_one(one, tiny_data, tmp_path, "parallel.tensor=2", ranks=2)
    assert "initialised the weights from" in result.stdout
    assert "tensor 2 x context 1 x pipeline 1 x data 1" in result.stdout
    _assert_close(save_dir, one_init[1], last=INIT_STEPS)
    assert _losses(save_dir)[1][0] < _losses(one[1])[1][0] - 0.3  # trained weights, not fresh ones


def test_init_from_with_pipeline_matches_one_rank(one, one_init, tiny_data, tmp_path):
    """Each pipeline stage takes its layers of the one-rank checkpoint (`load_full_state_dict`)."""
    result, save_dir = _train_from_one(one, tiny_data, tmp_path, "parallel.pipeline=2", "nan_policy=stop",
                                       "distributed.deepspeed_config=ds_configs/zero1.json", ranks=2)
    assert "initialised the weights from" in result.stdout
    assert "tensor 1 x context 1 x pipeline 2 x data 1" in result.stdout
    _assert_close(save_dir, one_init[1], last=INIT_STEPS)




def test_zero1_checkpoint_resumes_on_fewer_data_ranks(one, tiny_data, tmp_path):
    """Plain data parallelism, ZeRO-1, 2 ranks -> 1: resharded (DeepSpeed's universal converter
    refuses ZeRO-1/2 checkpoints without Megatron-DeepSpeed's universal_checkpoint_info)."""
    zero1 = "distributed.deepspeed_config=ds_configs/zero1.json"
    _, save_dir = _train(tmp_path / "dp2", tiny_data, zero1, EVAL_DP2, "checkpoint.save_at_end=false",
                         ranks=2)
    _assert_close(save_dir, one[1])
    _resume_on_other_layout(save_dir, tiny_data, tmp_path / "dp1", zero1, ranks=1, reference_dir=one[1],
                            saved="tensor 1 x context 1 x pipeline 1 x data 2 (2 ranks), ZeRO-1")


# ------------------------------------------------------------------------------- four ranks
@pytest.fixture(scope="module")
def tp2_dp2(tiny_data, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("tp2dp2"), tiny_data, "parallel.tensor=2", EVAL_DP2, ranks=4)


def test_tensor_by_data_parallel_run_matches_one_rank(one, tp2_dp2, tmp_path):
    result, save_dir = tp2_dp2
    assert "2 micro x 2 accumulation x 2 data-parallel ranks | tensor 2 x context 1 x pipeline 1 x data 2" \
        in result.stdout
    _assert_close(save_dir, one[1])
    _assert_exports_like_one_rank(save_dir, one[1], tmp_path)


def test_tensor_by_data_checkpoint_resumes_on_four_data_ranks(one, tp2_dp2, tiny_data, tmp_path):
    """The issue's example: tensor 2 x data 2 -> tensor 1 x data 4 (ZeRO-3 partitions 2 -> 4 ways)."""
    _resume_on_other_layout(tp2_dp2[1], tiny_data, tmp_path, EVAL_OFF, ranks=4, reference_dir=one[1],
                            saved="tensor 2 x context 1 x pipeline 1 x data 2 (4 ranks), ZeRO-3")


def test_tensor_by_pipeline_run_matches_one_rank(one, tiny_data, tmp_path):
    result, save_dir = _train(tmp_path, tiny_data, "parallel.tensor=2", "parallel.pipeline=2",
                              "nan_policy=stop", "distributed.deepspeed_config=ds_configs/zero1.json",
                              "checkpoint.save_interval=0", ranks=4)
    assert "tensor 2 x context 1 x pipeline 2 x data 1" in result.stdout
    _assert_close(save_dir, one[1])
    _assert_exports_like_one_rank(save_dir, one[1], tmp_path)


def test_context_by_data_parallel_run_matches_one_rank(one, tiny_data, tmp_path):
    result, save_dir = _train(tmp_path, tiny_data, "parallel.context=2", "checkpoint.save_interval=0",
                              EVAL_DP2, ranks=4)
    assert "tensor 1 x context 2 x pipeline 1 x data 2" in result.stdout
    _assert_close(save_dir, one[1])
    _assert_exports_like_one_rank(save_dir, one[1], tmp_path)


def test_tensor_by_context_parallel_run_matches_one_rank(tiny_data, tmp_path):
    """TP2 x CP2 with sequence parallelism (4 ranks): the context ranks need whole kv groups per
    tensor rank, so this model has 4 (tiny-test has 2) and its own one-rank reference."""
    groups = "model.num_query_groups=4"
    _, reference_dir = _train(tmp_path / "one", tiny_data, groups, "checkpoint.save_interval=0", ranks=1)
    result, save_dir = _train(tmp_path / "tp2cp2", tiny_data, groups, "parallel.tensor=2",
                              "parallel.context=2", "parallel.sequence_parallel=true",
                              "checkpoint.save_interval=0", ranks=4)
    assert "tensor 2 x context 2 x pipeline 1 x data 1, sequence parallel" in result.stdout
    _assert_close(save_dir, reference_dir)
    _assert_exports_like_one_rank(save_dir, reference_dir, tmp_path)
