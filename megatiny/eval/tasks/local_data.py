"""Offline datasets for local lm-eval tasks: JSON lines read straight into `datasets` objects.

lm-eval resolves `dataset_path: json` + `data_files` against the current directory, so a YAML
naming a relative file only works from one place. Our task YAMLs instead name a loader here
(`custom_dataset: !function ...`) that reads the file beside this module, from any directory and
without the Hugging Face hub or its dataset cache.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

TASKS_DIR = Path(__file__).resolve().parent


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; a bad line raises ValueError naming file and line."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({e.msg})") from None
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def jsonl_splits(**split_files: str | os.PathLike) -> datasets.DatasetDict:
    """A DatasetDict with one split per keyword, e.g. `jsonl_splits(test="items.jsonl")`."""
    return datasets.DatasetDict({split: datasets.Dataset.from_list(read_jsonl(path))
                                 for split, path in split_files.items()})


def load_local_mc(**_task_metadata) -> datasets.DatasetDict:
    """The bundled `megatiny_local_mc` items (split `test`). lm-eval passes task metadata as
    keyword arguments; none of it changes the data."""
    return jsonl_splits(test=TASKS_DIR / "megatiny_local_mc.jsonl")
