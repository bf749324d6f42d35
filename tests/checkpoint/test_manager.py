"""CheckpointManager on real DeepSpeed checkpoints (written through it by ds_train_tiny.py, 2 ranks)."""
import shutil

import pytest

from megatiny.checkpoint.layout import is_complete_tag, read_latest, universal_dir
from megatiny.checkpoint.manager import CheckpointManager, check_resume_layout
from megatiny.checkpoint.metadata import WorldLayout, read_metadata
from megatiny.parallel.state import ParallelLayout
from tests.checkpoint.conftest import STEPS
from tests.checkpoint.ds_train_tiny import GLOBAL_BATCH, tiny_config

pytestmark = pytest.mark.slow
TAG = f"step_{STEPS:08d}"


def test_saves_are_complete_and_described(ds_two_ranks):
    root = ds_two_ranks / "z3f"
    assert read_latest(root) == TAG
    assert is_complete_tag(root / TAG) and is_complete_tag(root / "step_00000000")
    assert sorted(p.name for p in (root / TAG).glob("rng_state_rank*.pt")) == \
        ["rng_state_rank0.pt", "rng_state_rank1.pt"]
    state = read_metadata(root / TAG)["train_state"]
    assert (state.step, state.consumed_samples) == (STEPS, STEPS * GLOBAL_BATCH)
    assert state.world == WorldLayout(world_size=2, zero_stage=3, precision="fp32")


def test_resume_on_other_ranks_converts_to_universal_once(ds_two_ranks, tmp_path):
    root = shutil.copytree(ds_two_ranks / "z3f", tmp_path / "z3f")
    same = CheckpointManager(root, rank=0, world_size=2).find_resume("auto", tiny_config(tie=False))
    assert (same.tag, same.universal, same.load_root) == (TAG, False, root)
    assert not universal_dir(root, TAG).exists()
    lines = []
    fewer = CheckpointManager(None, rank=0, world_size=1, log=lines.append)
    point = fewer.find_resume(str(root / TAG), tiny_config(tie=False))
    assert point.universal and point.load_root == root / "universal" and point.state.step == STEPS
    assert (universal_dir(root, TAG) / "megatiny.json").is_file()
    assert "made with 2 ranks, this run has 1" in lines[0]
    with pytest.raises(ValueError, match="model config differs"):
        fewer.find_resume(str(root), tiny_config(tie=True))


def test_resume_layout_must_match_when_the_model_is_split():
    tp2 = WorldLayout(world_size=4, tensor_parallel_size=2)
    check_resume_layout(tp2, ParallelLayout(tensor=2, data=2), "ckpt")  # same layout
    check_resume_layout(WorldLayout(world_size=2), ParallelLayout(data=4), "ckpt")  # DP: universal
    check_resume_layout(None, ParallelLayout(data=2), "ckpt")  # written before layouts were recorded
    for run in (ParallelLayout(data=4), ParallelLayout(tensor=2, data=1), ParallelLayout(context=2, data=2)):
        with pytest.raises(ValueError, match="tensor 2 x context 1 x pipeline 1 x data 2 \\(4 ranks\\), "
                                             "this run is tensor"):
            check_resume_layout(tp2, run, "ckpt")
    with pytest.raises(ValueError, match="written by tensor 1 x context 1 x pipeline 1 x data 2"):
        check_resume_layout(WorldLayout(world_size=2), ParallelLayout(tensor=2), "ckpt")
