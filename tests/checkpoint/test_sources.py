"""open_weights on model-parallel checkpoints: what it refuses, naming the layout and what to do.
(Merging real tensor-parallel shards is proven end to end in tests/training/test_parallel_runs.py.)"""
import pytest

from megatiny.checkpoint import layout, open_weights
from megatiny.checkpoint.metadata import TrainState, WorldLayout, write_metadata
from megatiny.model.config import get_preset


def _tag(tmp_path, world: WorldLayout, *files: str):
    tag = tmp_path / layout.tag_for_step(4)
    tag.mkdir()
    for name in (layout.MODEL_STATES_ZERO12, *files):
        (tag / name).write_bytes(b"x")
    write_metadata(tag, get_preset("tiny-test"), state=TrainState(step=4, world=world))
    return tag


def test_pipeline_module_weights_are_refused(tmp_path):
    tag = _tag(tmp_path, WorldLayout(world_size=2, zero_stage=1, pipeline_parallel_size=2))
    with pytest.raises(ValueError, match=r"pipeline_parallel_size 2\) converts from its fp32 master weights"):
        open_weights(tag, weights="module")


def test_tensor_parallel_module_weights_are_refused(tmp_path):
    tag = _tag(tmp_path, WorldLayout(world_size=2, zero_stage=1, tensor_parallel_size=2),
               layout.MODEL_STATES_ZERO12_MP.format(mp=1))
    with pytest.raises(ValueError, match=r"tensor_parallel_size 2, pipeline_parallel_size 1\) converts from"):
        open_weights(tag, weights="module")
