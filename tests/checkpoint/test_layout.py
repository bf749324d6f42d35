"""What a directory is: tag names, `latest`, tag-dir and resume resolution (one answer for all)."""
import json

import pytest

from megatiny.checkpoint import io, layout
from megatiny.checkpoint.layout import DirKind
from tests.checkpoint.conftest import write_dangling_latest
from tests.checkpoint.test_io import make_tag


def test_tag_names():
    assert layout.tag_for_step(100) == "step_00000100" and layout.step_of_tag("step_00000100") == 100
    with pytest.raises(ValueError):
        layout.step_of_tag("global_step100")


def test_read_latest_validates_the_tag(tmp_path):
    assert layout.read_latest(tmp_path) is None
    io.write_latest(tmp_path, make_tag(tmp_path, 100))
    assert layout.read_latest(tmp_path) == "step_00000100"
    write_dangling_latest(tmp_path, "step_00000300")
    with pytest.raises(FileNotFoundError, match="step_00000300"):
        layout.read_latest(tmp_path)


def test_kind_of_every_directory(tmp_path):
    root = tmp_path / "root"
    tag = make_tag(root, 5)
    io.write_latest(root, tag)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "megatiny.json").write_text("{}")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert layout.kind_of(root) is DirKind.CHECKPOINT_ROOT
    assert layout.kind_of(root / tag) is DirKind.TAG_DIR
    assert layout.kind_of(weights) is DirKind.WEIGHTS_DIR
    assert layout.kind_of(hf) is DirKind.HF_DIR
    assert layout.kind_of(tmp_path / "missing") is None and layout.kind_of(tmp_path) is None
    # a tag dir is recognised by its DeepSpeed files whatever its name (conversion and resume agree)
    (root / tag).rename(root / "my_tag")
    assert layout.kind_of(root / "my_tag") is DirKind.TAG_DIR
    assert layout.resolve_resume(str(root / "my_tag"), None) == (root, "my_tag")
    assert layout.resolve_tag_dir(root / "my_tag") == root / "my_tag"


def test_resolve_tag_dir(tmp_path):
    tag = make_tag(tmp_path, 5)
    make_tag(tmp_path, 10)
    io.write_latest(tmp_path, tag)
    assert layout.resolve_tag_dir(tmp_path) == tmp_path / tag
    assert layout.resolve_tag_dir(tmp_path, "step_00000010") == tmp_path / "step_00000010"
    assert layout.resolve_tag_dir(tmp_path / tag) == tmp_path / tag
    with pytest.raises(FileNotFoundError, match=r"available tags: \['step_00000005', 'step_00000010'\]"):
        layout.resolve_tag_dir(tmp_path, "step_00000042")
    with pytest.raises(FileNotFoundError, match="neither a DeepSpeed tag directory"):
        layout.resolve_tag_dir(tmp_path.parent)


def test_resolve_resume(tmp_path):
    assert layout.resolve_resume("auto", tmp_path) is None
    assert layout.resolve_resume("auto", None) is None
    tag = make_tag(tmp_path, 5)
    make_tag(tmp_path, 10, complete=False)  # a crashed save newer than latest is ignored
    io.write_latest(tmp_path, tag)
    assert layout.resolve_resume("auto", tmp_path) == (tmp_path, tag)
    assert layout.resolve_resume("none", tmp_path) is None
    assert layout.resolve_resume(str(tmp_path), None) == (tmp_path, tag)
    assert layout.resolve_resume(str(tmp_path / tag), None) == (tmp_path, tag)
    with pytest.raises(FileNotFoundError, match="not a checkpoint root.*its save never finished"):
        layout.resolve_resume(str(tmp_path / "step_00000010"), None)
    with pytest.raises(FileNotFoundError, match="nothing megatiny wrote"):
        layout.resolve_resume(str(tmp_path / "step_00000010" / "nope"), None)
