"""What a directory is: the one answer for resume, conversion, evaluation and reporting.

    checkpoint root   SAVE_DIR of a training run: `latest` names its newest complete tag
        latest
        step_00000100/    a tag directory (below)
        universal/step_00000100/   made on demand to resume on another number of ranks
    tag directory     DeepSpeed's files (`mp_rank_00_model_states.pt` for ZeRO-0/1/2,
                      `zero_pp_rank_0_mp_rank_00_model_states.pt` for ZeRO-3, optimizer shards)
                      + `megatiny.json` (written last: a tag without it is an unfinished save)
                      + `rng_state_rank{R}.pt`
                      + `manifest_rank{R}.json` (sizes and CRC-32 of the files, `manifest`)
    weights directory `megatiny.json` + `model.safetensors` (or shards and an index)
    HF directory      a Hugging Face Llama model (`config.json` + safetensors)

A tag directory is recognised by its DeepSpeed model-states file, whatever its name; a root by
its `latest` file. Only file names live here; reading them is for the modules that need them.
"""
from __future__ import annotations

import enum
import os
import re
from pathlib import Path

from megatiny.checkpoint.metadata import METADATA_FILE

LATEST_FILE = "latest"
UNIVERSAL_DIR = "universal"
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")
MODEL_STATES_ZERO3 = "zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
MODEL_STATES_ZERO12 = "mp_rank_00_model_states.pt"
# The same per model-parallel (tensor x pipeline) rank `mp`; rank 00 is the only one without it.
MODEL_STATES_ZERO3_MP = "zero_pp_rank_{rank}_mp_rank_{mp:02d}_model_states.pt"
MODEL_STATES_ZERO12_MP = "mp_rank_{mp:02d}_model_states.pt"
HF_CONFIG_FILE = "config.json"


class DirKind(enum.Enum):
    CHECKPOINT_ROOT = "checkpoint root"
    TAG_DIR = "DeepSpeed tag directory"
    WEIGHTS_DIR = "megatiny weights directory"
    HF_DIR = "Hugging Face model directory"


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def step_of_tag(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if not match:
        raise ValueError(f"{tag!r} is not a megatiny checkpoint tag (expected step_NNNNNNNN)")
    return int(match.group(1))


def has_model_states(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / MODEL_STATES_ZERO12).is_file() or (path / MODEL_STATES_ZERO3.format(rank=0)).is_file()


def kind_of(path: str | os.PathLike) -> DirKind | None:
    """What `path` is, or None when it is none of the kinds (or not a directory)."""
    path = Path(path)
    if not path.is_dir():
        return None
    if has_model_states(path):
        return DirKind.TAG_DIR
    if (path / LATEST_FILE).is_file():
        return DirKind.CHECKPOINT_ROOT
    if (path / METADATA_FILE).is_file():
        return DirKind.WEIGHTS_DIR
    if (path / HF_CONFIG_FILE).is_file():
        return DirKind.HF_DIR
    return None


def is_complete_tag(path: str | os.PathLike) -> bool:
    """A tag directory whose save finished (its megatiny.json is written after every rank's files)."""
    return has_model_states(path) and (Path(path) / METADATA_FILE).is_file()


def read_latest(root: str | os.PathLike) -> str | None:
    """The tag ROOT/latest names, or None when there is no complete checkpoint yet."""
    path = Path(root) / LATEST_FILE
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not (Path(root) / tag).is_dir():
        raise FileNotFoundError(f"{path} names {tag!r} but {Path(root) / tag} does not exist; "
                                "the checkpoint directory was modified by hand: fix or delete 'latest'")
    return tag


def resolve_tag_dir(path: str | os.PathLike, tag: str | None = None) -> Path:
    """The tag directory `path` means: `path` itself if it is one, else the tag `tag` (default:
    the one `latest` names) of the checkpoint root `path`."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint directory does not exist")
    if tag is not None:
        tag_dir = path / tag
        if not tag_dir.is_dir():
            tags = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise FileNotFoundError(f"{tag_dir}: no such tag in {path}; available tags: {tags}")
        return tag_dir
    kind = kind_of(path)
    if kind is DirKind.TAG_DIR:
        return path
    if kind is DirKind.CHECKPOINT_ROOT:
        return path / read_latest(path)
    raise FileNotFoundError(
        f"{path}: neither a DeepSpeed tag directory (no *_model_states.pt) nor a checkpoint root "
        f"(no '{LATEST_FILE}' file); pass the tag directory or --tag")


def resolve_resume(resume: str, save_dir: str | os.PathLike | None) -> tuple[Path, str] | None:
    """Which checkpoint `checkpoint.resume` selects, as (root, tag), or None to start fresh.

    "auto": the tag SAVE_DIR/latest names, if any; "none": never; otherwise a checkpoint root or
    a complete tag directory.
    """
    if resume == "none":
        return None
    if resume == "auto":
        if save_dir is None:
            return None
        tag = read_latest(save_dir)
        return None if tag is None else (Path(save_dir), tag)
    path = Path(resume)
    kind = kind_of(path)
    if kind is DirKind.CHECKPOINT_ROOT:
        return path, read_latest(path)
    if kind is DirKind.TAG_DIR and is_complete_tag(path):
        return path.parent, path.name
    why = (f"{METADATA_FILE} is missing: its save never finished" if kind is DirKind.TAG_DIR
           else f"it is a {kind.value}" if kind is not None else "nothing megatiny wrote")
    raise FileNotFoundError(f"checkpoint.resume={resume!r}: not a checkpoint root (no '{LATEST_FILE}' "
                            f"file) nor a complete tag directory ({why}); to start from weights only, "
                            "use checkpoint.init_from")


def list_tags(root: str | os.PathLike) -> list[str]:
    """All step_* directories under ROOT (complete or not), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and TAG_PATTERN.match(p.name)]
    return sorted(tags, key=step_of_tag)


def universal_dir(root: str | os.PathLike, tag: str) -> Path:
    """Where the universal-format conversion of ROOT/TAG lives."""
    return Path(root) / UNIVERSAL_DIR / tag
