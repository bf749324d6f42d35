"""`megatiny.json`: what a checkpoint or weights directory says about itself.

Every checkpoint tag directory written by training (`SAVE_DIR/step_00000100/`) and every
consolidated megatiny weights directory holds this file beside the weights, so conversion and
evaluation can rebuild the model without the training config.

Layout (JSON object):
    format_version   int, METADATA_VERSION
    model            ModelConfig.to_dict()
    tokenizer        path of the tokenizer (sentencepiece .model or HF dir) or null
    step             optimizer steps completed (training checkpoints; 0 for weights dirs)
    consumed_samples training samples consumed (global, all ranks)
    extra            free-form: run config, data-blend description, world size, ...
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from megatiny.fileio import atomic_write_text
from megatiny.model.config import ModelConfig

METADATA_FILE = "megatiny.json"
METADATA_VERSION = 1


def write_metadata(directory: str | os.PathLike, model_config: ModelConfig, *,
                   tokenizer: str | None = None, step: int = 0, consumed_samples: int = 0,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write DIRECTORY/megatiny.json atomically (temp file + rename). Returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": METADATA_VERSION,
        "model": model_config.to_dict(),
        "tokenizer": str(tokenizer) if tokenizer is not None else None,
        "step": int(step),
        "consumed_samples": int(consumed_samples),
        "extra": extra or {},
    }
    return atomic_write_text(directory / METADATA_FILE, json.dumps(payload, indent=2, sort_keys=True))


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """Read DIRECTORY/megatiny.json; `model` is returned as a validated ModelConfig."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {METADATA_FILE} here; expected a megatiny checkpoint tag directory or "
            f"weights directory (written by megatiny training or tools/convert_checkpoint.py)")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    version = payload.get("format_version")
    if version != METADATA_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not supported "
                         f"(this megatiny reads version {METADATA_VERSION})")
    try:
        payload["model"] = ModelConfig.from_dict(payload["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: field 'model' is invalid: {e}") from None
    return payload
