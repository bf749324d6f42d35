"""Checkpoint files: keep-last-K rotation, removal of crashed saves, RNG states."""
import random

import numpy as np
import pytest
import torch

from megatiny.checkpoint import io, layout
from megatiny.checkpoint.metadata import TrainState, write_metadata
from megatiny.model.config import get_preset


def make_tag(root, step, complete=True):
    """A tag dir as a save leaves it: a (fake) model-states file, and megatiny.json if complete."""
    tag = layout.tag_for_step(step)
    (root / tag).mkdir(parents=True)
    (root / tag / layout.MODEL_STATES_ZERO3.format(rank=0)).write_bytes(b"x")
    if complete:
        write_metadata(root / tag, get_preset("tiny-test"), state=TrainState(step=step))
    return tag


def test_write_latest_is_atomic_and_refuses_a_missing_tag(tmp_path):
    tag = make_tag(tmp_path, 100)
    io.write_latest(tmp_path, tag)
    assert layout.read_latest(tmp_path) == "step_00000100"
    assert not list(tmp_path.glob(".latest*"))  # no temp file left behind
    with pytest.raises(FileNotFoundError):
        io.write_latest(tmp_path, "step_00000200")


def test_rotation_keeps_last_k_complete(tmp_path):
    for step in (10, 20, 30):
        make_tag(tmp_path, step)
    make_tag(tmp_path, 25, complete=False)  # crashed save, older than latest
    make_tag(tmp_path, 50, complete=False)  # save in progress / crashed, newer than latest
    (tmp_path / layout.UNIVERSAL_DIR / "step_00000010").mkdir(parents=True)
    io.write_latest(tmp_path, "step_00000030")
    deleted = io.rotate(tmp_path, keep_last=2)
    assert deleted == ["step_00000010", "step_00000025"]
    assert layout.list_tags(tmp_path) == ["step_00000020", "step_00000030", "step_00000050"]
    assert not (tmp_path / layout.UNIVERSAL_DIR / "step_00000010").exists()
    assert io.rotate(tmp_path, keep_last=0) == []
    assert io.rotate(tmp_path, keep_last=1) == ["step_00000020"]
    assert layout.read_latest(tmp_path) == "step_00000030"


def test_prepare_tag_dir_removes_only_stale_saves(tmp_path):
    tag = make_tag(tmp_path, 10)
    io.write_latest(tmp_path, tag)
    io.prepare_tag_dir(tmp_path, tag)
    assert (tmp_path / tag).is_dir()  # the latest checkpoint is never removed
    stale = make_tag(tmp_path, 20, complete=False)
    io.prepare_tag_dir(tmp_path, stale)
    assert not (tmp_path / stale).exists()


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    io.save_rng_state(tmp_path, rank=0)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    assert io.load_rng_state(tmp_path, rank=0)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not io.load_rng_state(tmp_path, rank=1)
