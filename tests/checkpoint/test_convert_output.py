"""Conversion output directories: replaced atomically, and never lost when the final rename fails."""
from __future__ import annotations

import os

import pytest

from megatiny.checkpoint import convert


def test_overwrite_replaces_the_output_and_leaves_no_temp_dirs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with convert._atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_final_rename_puts_the_old_output_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if str(src).startswith(str(tmp_path / ".out.tmp-")):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(convert.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        with convert._atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no hidden .old-/.tmp- dirs left

