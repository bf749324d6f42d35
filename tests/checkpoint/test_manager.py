"""CheckpointManager on real DeepSpeed checkpoints (written through it by ds_train_tiny.py, 2 ranks)."""
import shutil

import pytest

from megatiny.checkpoint.layout import is_complete_tag, read_latest, universal_dir
from megatiny.checkpoint.manager import CheckpointManager
from megatiny.checkpoint.metadata import WorldLayout, read_metadata
from megatiny.checkpoint.reshard import ResumeMode, resume_mode
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


def test_resume_mode_for_each_change_of_layout():
    """Same split and ranks: DeepSpeed's own load; data parallelism on another number of ranks:
    universal; another tensor / pipeline split or ZeRO stage: megatiny's resharding."""
    tp2 = WorldLayout(world_size=4, zero_stage=3, tensor_parallel_size=2)
    dp2 = WorldLayout(world_size=2, zero_stage=3)
    cases = [
        (tp2, ParallelLayout(tensor=2, data=2), 3, ResumeMode.SAME),
        (tp2, ParallelLayout(tensor=2, data=2), None, ResumeMode.SAME),  # stage not known: not checked
        (dp2, ParallelLayout(data=4), 3, ResumeMode.UNIVERSAL),
        (dp2, ParallelLayout(context=2, data=1), 3, ResumeMode.SAME),  # to DeepSpeed: data ranks
        (WorldLayout(world_size=2, context_parallel_size=2), ParallelLayout(data=1), 3, ResumeMode.UNIVERSAL),
        (None, ParallelLayout(data=2), 3, ResumeMode.SAME),  # written before layouts were recorded
        (None, ParallelLayout(tensor=2), 3, ResumeMode.RESHARD),
        (tp2, ParallelLayout(data=4), 3, ResumeMode.RESHARD),
        (tp2, ParallelLayout(tensor=2, data=1), 3, ResumeMode.RESHARD),
        (dp2, ParallelLayout(tensor=2), 3, ResumeMode.RESHARD),
        (WorldLayout(world_size=2, zero_stage=1, pipeline_parallel_size=2), ParallelLayout(data=1), 3,
         ResumeMode.RESHARD),
        (dp2, ParallelLayout(data=2), 1, ResumeMode.RESHARD),  # ZeRO-3 -> ZeRO-1
        (WorldLayout(world_size=2, zero_stage=1), ParallelLayout(data=1), 1, ResumeMode.RESHARD),
    ]
    for saved, run, stage, expected in cases:
        assert resume_mode(saved, run, stage) is expected, (saved, run, stage)
