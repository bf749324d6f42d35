"""Checkpoint files: atomic `latest`, resume resolution, keep-last-K rotation, RNG states."""
import random

import numpy as np
import pytest
import torch

from megatiny.checkpoint import io
from megatiny.checkpoint.metadata import write_metadata
from megatiny.model.config import get_preset


def _make_tag(root, step, complete=True):
    tag = io.tag_for_step(step)
    (root / tag).mkdir(parents=True)
    (root / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        write_metadata(root / tag, get_preset("tiny-test"), step=step)
    return tag


def test_latest_is_atomic_and_validated(tmp_path):
    assert io.read_latest(tmp_path) is None
    tag = _make_tag(tmp_path, 100)
    io.write_latest(tmp_path, tag)
    assert io.read_latest(tmp_path) == "step_00000100"
    assert not list(tmp_path.glob(".latest*"))  # no temp file left behind
    with pytest.raises(FileNotFoundError):
        io.write_latest(tmp_path, "step_00000200")
    (tmp_path / "latest").write_text("step_00000300")
    with pytest.raises(FileNotFoundError, match="step_00000300"):
        io.read_latest(tmp_path)


def test_resolve_resume(tmp_path):
    assert io.resolve_resume("auto", tmp_path) is None
    assert io.resolve_resume("auto", None) is None
    tag = _make_tag(tmp_path, 5)
    _make_tag(tmp_path, 10, complete=False)  # a crashed save newer than latest is ignored
    io.write_latest(tmp_path, tag)
    assert io.resolve_resume("auto", tmp_path) == (tmp_path, tag)
    assert io.resolve_resume("none", tmp_path) is None
    assert io.resolve_resume(str(tmp_path), None) == (tmp_path, tag)
    assert io.resolve_resume(str(tmp_path / tag), None) == (tmp_path, tag)
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        io.resolve_resume(str(tmp_path / "step_00000010"), None)


def test_rotation_keeps_last_k_complete(tmp_path):
    for step in (10, 20, 30):
        _make_tag(tmp_path, step)
    _make_tag(tmp_path, 25, complete=False)  # crashed save, older than latest
    _make_tag(tmp_path, 50, complete=False)  # save in progress / crashed, newer than latest
    (tmp_path / io.UNIVERSAL_DIR / "step_00000010").mkdir(parents=True)
    io.write_latest(tmp_path, "step_00000030")
    deleted = io.rotate(tmp_path, keep_last=2)
    assert deleted == ["step_00000010", "step_00000025"]
    assert io.list_tags(tmp_path) == ["step_00000020", "step_00000030", "step_00000050"]
    assert not (tmp_path / io.UNIVERSAL_DIR / "step_00000010").exists()
    assert io.rotate(tmp_path, keep_last=0) == []
    assert io.rotate(tmp_path, keep_last=1) == ["step_00000020"]
    assert io.read_latest(tmp_path) == "step_00000030"


def test_prepare_tag_dir_removes_only_stale_saves(tmp_path):
    tag = _make_tag(tmp_path, 10)
    io.write_latest(tmp_path, tag)
    io.prepare_tag_dir(tmp_path, tag)
    assert (tmp_path / tag).is_dir()  # the latest checkpoint is never removed
    stale = _make_tag(tmp_path, 20, complete=False)
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


def test_tag_names():
    assert io.tag_for_step(100) == "step_00000100" and io.step_of_tag("step_00000100") == 100
    with pytest.raises(ValueError):
        io.step_of_tag("global_step100")
