"""Checkpoint manifests, in-process on a fake tag directory: every kind of damage is named, the
`sizes` mode misses only same-size alterations, and `megatiny checkpoint verify` exits accordingly."""
from __future__ import annotations

import json
import zlib

import pytest

from megatiny.checkpoint.manifest import (
    crc32_file,
    listable_files,
    manifest_name,
    share_of,
    verify,
    write_manifest,
)
from megatiny.cli.checkpoint import main as checkpoint_cli

FILES = {"zero_pp_rank_0_mp_rank_00_model_states.pt": 3000, "zero_pp_rank_1_mp_rank_00_model_states.pt": 2000,
         "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": 9_000_000,  # two 8 MiB blocks
         "rng_state_rank0.pt": 100, "rng_state_rank1.pt": 100}


@pytest.fixture
def tag_dir(tmp_path):
    """A two-rank tag directory with its manifests, as `CheckpointManager.save` writes them."""
    tag = tmp_path / "step_00000004"
    tag.mkdir()
    for i, (name, size) in enumerate(FILES.items()):
        (tag / name).write_bytes((bytes(range(i, 251)) * (size // 200 + 1))[:size])
    (tag / "megatiny.json").write_text("{}")
    names = listable_files(tag)
    assert names == sorted(FILES)
    for rank in range(2):
        write_manifest(tag, rank, 2, share_of(names, rank, 2))
    return tag


def test_crc32_matches_one_shot_over_block_boundaries(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert crc32_file(tmp_path / "f", block_bytes=4096) == f"{zlib.crc32(data):08x}"


def test_every_file_is_listed_once(tag_dir):
    listed = []
    for rank in range(2):
        listed += json.loads((tag_dir / manifest_name(rank)).read_text())["files"]
    assert sorted(listed) == sorted(FILES)
    report = verify(tag_dir)
    assert report.ok and report.files == len(FILES) and not report.legacy, report.describe()


def _damage(tag_dir, how: str) -> str:
    name = "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    path = tag_dir / name
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif how == "altered":
        data = bytearray(path.read_bytes())
        data[4_500_000] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "missing":
        path.unlink()
    return name


@pytest.mark.parametrize("how", ["truncated", "altered", "missing"])
def test_damage_is_named(tag_dir, how):
    name = _damage(tag_dir, how)
    report = verify(tag_dir, "full")
    assert not report.ok
    assert report.problems == [report.problems[0]] and report.problems[0].startswith(f"{name}: {how}")
    assert name in report.describe() and "DAMAGED" in report.describe()


def test_sizes_mode_misses_only_same_size_changes(tag_dir):
    _damage(tag_dir, "altered")
    assert verify(tag_dir, "sizes").ok
    _damage(tag_dir, "truncated")
    assert not verify(tag_dir, "sizes").ok
    assert verify(tag_dir, "off").ok


def test_a_missing_manifest_is_named_and_ranks_can_share_the_work(tag_dir):
    (tag_dir / manifest_name(1)).unlink()
    expected = "manifest_rank1.json: missing (the checkpoint was written by 2 ranks)"
    assert verify(tag_dir).problems == [expected]
    assert verify(tag_dir, ranks=[0]).ok  # a rank checking its share only


def test_no_manifest_is_a_legacy_checkpoint(tag_dir):
    for rank in range(2):
        (tag_dir / manifest_name(rank)).unlink()
    report = verify(tag_dir)
    assert report.ok and report.legacy and "not verified" in report.describe()


def test_cli_verify_exit_status(tag_dir, capsys):
    assert checkpoint_cli(["verify", str(tag_dir)]) == 0
    assert "OK, 5 files" in capsys.readouterr().out
    name = _damage(tag_dir, "altered")
    assert checkpoint_cli(["verify", str(tag_dir.parent), "--mode", "sizes"]) == 0
    assert checkpoint_cli(["verify", str(tag_dir.parent)]) == 1
    assert f"{name}: altered" in capsys.readouterr().out
    assert checkpoint_cli(["verify", str(tag_dir.parent / "nothing")]) == 2


def _complete_tag(root, step: int) -> None:
    from megatiny.checkpoint.manifest import write_manifest
    tag = root / f"step_{step:08d}"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"x" * 1000)
    write_manifest(tag, 0, 1, listable_files(tag))
    (tag / "megatiny.json").write_text("{}")


def test_rotation_never_deletes_the_last_checkpoint_that_verifies_for_one_that_does_not(tmp_path):
    from megatiny.checkpoint.io import write_latest
    from megatiny.checkpoint.manager import CheckpointManager

    lines = []
    manager = CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=1, log=lines.append)
    for step in (4, 8):
        _complete_tag(tmp_path, step)
    write_latest(tmp_path, "step_00000008")
    states = tmp_path / "step_00000008" / "mp_rank_00_model_states.pt"
    states.write_bytes(b"x" * 10)  # truncated after its manifest was written
    assert manager._rotate(tmp_path / "step_00000008") == []
    assert (tmp_path / "step_00000004").is_dir() and "not rotating" in lines[0]
    states.write_bytes(b"x" * 1000)
    assert manager._rotate(tmp_path / "step_00000008") == ["step_00000004"]


def test_resume_falls_back_past_every_damaged_checkpoint_and_moves_latest_first(tmp_path):
    from megatiny.checkpoint.io import write_latest
    from megatiny.checkpoint.layout import read_latest
    from megatiny.checkpoint.manager import CheckpointManager

    for step in (4, 8, 12):
        _complete_tag(tmp_path, step)
    write_latest(tmp_path, "step_00000012")
    (tmp_path / "step_00000012" / "mp_rank_00_model_states.pt").unlink()
    (tmp_path / "step_00000008" / "mp_rank_00_model_states.pt").write_bytes(b"y" * 1000)  # same size
    lines = []
    manager = CheckpointManager(tmp_path, rank=0, world_size=1, log=lines.append)
    assert manager._newest_verified(tmp_path, "step_00000012") == "step_00000004"
    assert read_latest(tmp_path) == "step_00000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000004", "step_00000008.damaged",
                                                         "step_00000012.damaged"]
    assert "falling back to" in lines[-1]
    _complete_tag(tmp_path, 16)
    (tmp_path / "step_00000016" / "megatiny.json").unlink()
    write_latest(tmp_path, "step_00000016")
    assert manager._newest_verified(tmp_path, "step_00000016") == "step_00000004"
    assert "step_00000016 is damaged: megatiny.json: missing" in lines[-2]
    (tmp_path / "step_00000004" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(RuntimeError, match="no complete checkpoint .* verifies"):
        manager._newest_verified(tmp_path, "step_00000004")
    assert (tmp_path / "step_00000004").is_dir()  # nothing renamed when nothing verifies
