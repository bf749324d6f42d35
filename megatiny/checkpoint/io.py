"""Writing and deleting training-checkpoint files: the atomic `latest` pointer, rotation, RNG states.

What the files are and how a directory is recognised: `megatiny.checkpoint.layout`. `latest` is
written (temp + rename) only after every rank finished saving, so a crash mid-save leaves it on
the previous complete checkpoint. The order of a save is `megatiny.checkpoint.manager`'s.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatiny.checkpoint.layout import LATEST_FILE, list_tags, read_latest, step_of_tag, universal_dir
from megatiny.checkpoint.metadata import METADATA_FILE
from megatiny.fileio import atomic_output, atomic_write_text


def write_latest(save_dir: str | os.PathLike, tag: str) -> Path:
    """Point SAVE_DIR/latest at `tag` atomically. Call only once all ranks finished saving `tag`."""
    save_dir = Path(save_dir)
    if not (save_dir / tag).is_dir():
        raise FileNotFoundError(f"{save_dir / tag}: cannot mark a missing checkpoint as latest")
    return atomic_write_text(save_dir / LATEST_FILE, tag)


def remove_tag(save_dir: str | os.PathLike, tag: str) -> None:
    """Delete a tag dir (and its universal conversion); renamed first so a crash never leaves a
    half-deleted directory that looks like a checkpoint."""
    save_dir = Path(save_dir)
    for path in (save_dir / tag, universal_dir(save_dir, tag)):
        if path.is_dir():
            doomed = path.with_name(f".deleting.{path.name}")
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def set_aside(save_dir: str | os.PathLike, tag: str, reason: str = "damaged") -> Path:
    """Rename a damaged tag dir to TAG.damaged (TAG.REASON; replacing an older one of that name):
    kept for a person to look at, no longer a checkpoint (`layout.list_tags` ignores it). Returns
    the new path."""
    save_dir = Path(save_dir)
    target = save_dir / f"{tag}.{reason}"
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    os.replace(save_dir / tag, target)
    return target


def prepare_tag_dir(save_dir: str | os.PathLike, tag: str) -> None:
    """Before saving `tag` (rank 0 only): remove leftovers of an earlier crashed save of that tag.
    The tag `latest` names is never removed."""
    if (Path(save_dir) / tag).exists() and read_latest(save_dir) != tag:
        remove_tag(save_dir, tag)


def rotate(save_dir: str | os.PathLike, keep_last: int) -> list[str]:
    """Keep the newest `keep_last` complete checkpoints (0 = all); also delete incomplete tag dirs
    older than `latest` (crashed saves). Never touches `latest` itself or anything newer.
    Returns the deleted tags."""
    latest = read_latest(save_dir)
    if latest is None:
        return []
    latest_step = step_of_tag(latest)
    older = [t for t in list_tags(save_dir) if step_of_tag(t) < latest_step]
    complete = [t for t in older if (Path(save_dir) / t / METADATA_FILE).is_file()]
    doomed = [t for t in older if t not in complete]
    if keep_last:
        doomed += complete[:max(0, len(complete) - (keep_last - 1))]
    for tag in doomed:
        remove_tag(save_dir, tag)
    return sorted(doomed, key=step_of_tag)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_rng_state(tag_dir: str | os.PathLike, rank: int) -> Path:
    path = Path(tag_dir) / f"rng_state_rank{rank}.pt"
    with atomic_output(path, "wb") as f:
        torch.save(rng_state(), f)
    return path


def load_rng_state(tag_dir: str | os.PathLike, rank: int) -> bool:
    """Restore this rank's RNG states; False when the checkpoint has none for `rank` (it was made
    with fewer ranks): the caller keeps its seeded state."""
    path = Path(tag_dir) / f"rng_state_rank{rank}.pt"
    if not path.is_file():
        return False
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return True
