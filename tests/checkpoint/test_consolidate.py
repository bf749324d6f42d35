"""Consolidating real DeepSpeed ZeRO-1/2/3 checkpoints (saved by tests/checkpoint/ds_train_tiny.py)."""
import json
import shutil

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from megatiny.checkpoint import load_model, open_weights
from megatiny.checkpoint.consolidate import ZeroCheckpoint
from megatiny.checkpoint.layout import resolve_tag_dir
from megatiny.checkpoint.manager import convert_to_universal
from tests.checkpoint.conftest import STEPS, write_dangling_latest
from tests.checkpoint.ds_train_tiny import GLOBAL_BATCH

pytestmark = pytest.mark.slow


def master_weights(path, tag=None) -> dict[str, torch.Tensor]:
    source = open_weights(path, tag=tag, weights="master")
    return {name: source.tensor(name) for name in source.names()}


@pytest.mark.parametrize("run", ["z3w1", "z3w2", "z1w2", "z3fw2", "z1fw2", "z3w3", "z2tw3"])
@pytest.mark.parametrize("step", [0, STEPS])
def test_matches_deepspeeds_own_zero_to_fp32(ds_runs, run, step):
    tag = f"step_{step:08d}"
    reference = get_fp32_state_dict_from_zero_checkpoint(str(ds_runs[run]), tag=tag)
    checkpoint = ZeroCheckpoint(ds_runs[run] / tag)
    assert checkpoint.world_size == int(run[-1]) and checkpoint.stage == int(run[1])
    bf16_files = list((ds_runs[run] / tag).glob("bf16_*_optim_states.pt"))
    assert bool(bf16_files) == ("f" not in run[:3]), run  # really both layouts
    # decay / no-decay parameter groups like training; ZeRO-3 splits them into sub-groups
    assert len(checkpoint.group_shapes) == 2 if checkpoint.stage < 3 else len(checkpoint.group_shapes) > 2
    assert checkpoint.names() == list(reference)
    for name, tensor in reference.items():
        assert torch.equal(checkpoint.tensor(name), tensor), name


def test_adam_moments_match_deepspeeds_universal_checkpoint(ds_runs, tmp_path):
    """`tensor(name, "exp_avg" / "exp_avg_sq")` (what resuming on another layout loads) equals the
    full moments DeepSpeed's own universal converter writes (zero/NAME/exp_avg.pt), here for ZeRO-3
    with several sub-groups. (DeepSpeed's converter refuses our ZeRO-1/2 checkpoints: it needs
    Megatron-DeepSpeed's `universal_checkpoint_info`; their moments are proven by resumed runs in
    tests/training/test_parallel_runs.py.)"""
    tag = f"step_{STEPS:08d}"
    root = shutil.copytree(ds_runs["z3fw2"], tmp_path / "z3fw2")
    universal = convert_to_universal(root, tag)
    checkpoint = ZeroCheckpoint(root / tag)
    assert checkpoint.optimizer_step() == STEPS
    for name in checkpoint.shapes:
        for key in ("exp_avg", "exp_avg_sq"):
            saved = torch.load(universal / "zero" / name / f"{key}.pt", weights_only=False)
            expected = saved["param"] if isinstance(saved, dict) else saved
            ours = checkpoint.tensor(name, key)
            assert ours.abs().sum() > 0, (name, key)
            assert torch.equal(ours, expected.view_as(ours)), (name, key)


def test_tied_embeddings_are_stored_once_and_resolved(ds_runs):
    checkpoint = ZeroCheckpoint(resolve_tag_dir(ds_runs["z2tw3"]))
    assert checkpoint.shared == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in checkpoint.shapes
    model, _ = load_model(ds_runs["z2tw3"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, checkpoint.tensor("model.embed_tokens.weight"))


def test_one_two_and_three_ranks_give_identical_weights(ds_runs):
    """Same seed: the saved initial weights are bit-identical whether ZeRO-3 partitioned them over
    one, two or three ranks (three pads every parameter). After training they differ slightly:
    the gradient reduction order changes the bf16 rounding, and Adam's first steps amplify sign
    flips of near-zero gradients."""
    one = master_weights(ds_runs["z3w1"], tag="step_00000000")
    for run in ("z3w2", "z3w3"):
        other = master_weights(ds_runs[run], tag="step_00000000")
        assert one.keys() == other.keys()
        for name in one:
            assert torch.equal(one[name], other[name]), (run, name)
    trained = master_weights(ds_runs["z3w1"])
    assert all(not torch.equal(trained[n], one[n]) for n in one)  # the step-0 tag is really different


@pytest.mark.parametrize("run, dtype", [("z1w2", torch.bfloat16), ("z2tw3", torch.bfloat16),
                                        ("z1fw2", torch.float32)])
def test_zero12_module_weights_are_the_rounded_master_weights(ds_runs, run, dtype):
    master = open_weights(ds_runs[run], weights="master")
    module = open_weights(ds_runs[run], weights="module")
    assert master.names() == module.names()
    for name in master.names():
        assert module.tensor(name).dtype == dtype
        assert torch.equal(module.tensor(name), master.tensor(name).to(dtype)), name


def test_zero3_module_weights_are_refused(ds_two_ranks):
    with pytest.raises(FileNotFoundError, match="ZeRO-3 saves its 16-bit weights partitioned"):
        open_weights(ds_two_ranks / "z3", weights="module")


def test_metadata_travels_with_the_model(ds_two_ranks):
    model, metadata = load_model(ds_two_ranks / "z3")
    assert metadata["step"] == STEPS and metadata["consumed_samples"] == GLOBAL_BATCH * STEPS
    assert metadata["model"] == model.config and model.config.num_query_groups == 2
    assert not model.training


# -- broken checkpoints: clear errors, naming what is wrong ----------------------------------------

@pytest.fixture
def z3_copy(ds_two_ranks, tmp_path):
    return shutil.copytree(ds_two_ranks / "z3", tmp_path / "z3")


def test_missing_shard(z3_copy):
    (z3_copy / f"step_{STEPS:08d}" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(FileNotFoundError, match="saved by 2 data-parallel ranks but 1 optimizer shard"):
        load_model(z3_copy)
    (z3_copy / f"step_{STEPS:08d}" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").rename(
        z3_copy / f"step_{STEPS:08d}" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with pytest.raises(FileNotFoundError, match=r"rank\(s\) \[0\] missing"):
        load_model(z3_copy)


def test_truncated_shard(z3_copy):
    shard = z3_copy / f"step_{STEPS:08d}" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError, match="bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt: cannot read"):
        load_model(z3_copy)


def test_config_that_does_not_match_the_weights(z3_copy):
    meta_path = z3_copy / f"step_{STEPS:08d}" / "megatiny.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["num_query_groups"] = 8  # as if k/v had one head per query head
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.k_proj.weight: found \(16, 64\), "
                                         r"expected \(64, 64\)"):
        load_model(z3_copy)
    meta["model"]["num_query_groups"] = 2
    meta["model"]["num_layers"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"missing parameter\(s\): model.layers.2"):
        load_model(z3_copy)


def test_latest_naming_a_missing_tag(z3_copy):
    write_dangling_latest(z3_copy, "step_00000099")
    with pytest.raises(FileNotFoundError, match="names 'step_00000099' but .*step_00000099 does not exist"):
        load_model(z3_copy)
    model, metadata = load_model(z3_copy, tag="step_00000000")
    assert metadata["step"] == 0
    with pytest.raises(FileNotFoundError, match=r"available tags: \['step_00000000', 'step_00000003'\]"):
        load_model(z3_copy, tag="step_00000042")
