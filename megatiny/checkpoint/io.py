"""Training checkpoints on disk: tag names, the atomic `latest` pointer, rotation, RNG states.

Layout of a checkpoint root (SAVE_DIR)::

    SAVE_DIR/
      latest                  # names the newest COMPLETE tag; written (temp + rename) only after
                              # every rank finished saving, so a crash mid-save leaves it untouched
      step_00000100/          # DeepSpeed's files (mp_rank_00_model_states.pt, zero shards, ...)
        megatiny.json         # model config, tokenizer, step, consumed samples, run config
        rng_state_rank{R}.pt  # python/numpy/torch RNG states of data-parallel rank R
      universal/step_00000100 # made on demand when resuming with a different number of ranks

The DeepSpeed-specific saving and loading lives in `megatiny.training.engine`; this module only
deals with files, so the checkpoint tools can use it without DeepSpeed.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatiny.checkpoint.metadata import METADATA_FILE
from megatiny.fileio import atomic_output, atomic_write_text

LATEST_FILE = "latest"
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")
UNIVERSAL_DIR = "universal"


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def step_of_tag(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if not match:
        raise ValueError(f"{tag!r} is not a megatiny checkpoint tag (expected step_NNNNNNNN)")
    return int(match.group(1))


def write_latest(save_dir: str | os.PathLike, tag: str) -> Path:
    """Point SAVE_DIR/latest at `tag` atomically. Call only once all ranks finished saving `tag`."""
    save_dir = Path(save_dir)
    if not (save_dir / tag).is_dir():
        raise FileNotFoundError(f"{save_dir / tag}: cannot mark a missing checkpoint as latest")
    return atomic_write_text(save_dir / LATEST_FILE, tag)


def read_latest(save_dir: str | os.PathLike) -> str | None:
    """The tag named by SAVE_DIR/latest, or None when there is no complete checkpoint yet."""
    path = Path(save_dir) / LATEST_FILE
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not (Path(save_dir) / tag).is_dir():
        raise FileNotFoundError(f"{path} names {tag!r} but {Path(save_dir) / tag} does not exist; "
                                "the checkpoint directory was modified by hand: fix or delete 'latest'")
    return tag


def resolve_resume(resume: str, save_dir: str | os.PathLike | None) -> tuple[Path, str] | None:
    """Which checkpoint `checkpoint.resume` selects, as (root, tag), or None to start fresh.

    "auto": SAVE_DIR/latest if it exists; "none": never; otherwise a checkpoint root (with a
    `latest` file) or a tag directory.
    """
    if resume == "none":
        return None
    if resume == "auto":
        if save_dir is None or read_latest(save_dir) is None:
            return None
        return Path(save_dir), read_latest(save_dir)
    path = Path(resume)
    if (path / LATEST_FILE).is_file():
        return path, read_latest(path)
    if path.is_dir() and TAG_PATTERN.match(path.name) and (path / METADATA_FILE).is_file():
        return path.parent, path.name
    raise FileNotFoundError(f"checkpoint.resume={resume!r}: not a checkpoint root (no 'latest' file) nor a "
                            "complete tag directory (step_NNNNNNNN with megatiny.json)")


def list_tags(save_dir: str | os.PathLike) -> list[str]:
    """All step_* directories under SAVE_DIR (complete or not), oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    tags = [p.name for p in save_dir.iterdir() if p.is_dir() and TAG_PATTERN.match(p.name)]
    return sorted(tags, key=step_of_tag)


def remove_tag(save_dir: str | os.PathLike, tag: str) -> None:
    """Delete a tag dir (and its universal conversion); renamed first so a crash never leaves a
    half-deleted directory that looks like a checkpoint."""
    save_dir = Path(save_dir)
    for path in (save_dir / tag, save_dir / UNIVERSAL_DIR / tag):
        if path.is_dir():
            doomed = path.with_name(f".deleting.{path.name}")
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


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
