"""`megatiny.json`: what a checkpoint or weights directory says about itself.

Every checkpoint tag directory written by training (`SAVE_DIR/step_00000100/`) and every
consolidated megatiny weights directory holds this file beside the weights, so conversion and
evaluation can rebuild the model without the training config.

Layout (JSON object), format_version 2:
    format_version   int, METADATA_VERSION
    model            ModelConfig.to_dict() (architecture only)
    tokenizer        path of the tokenizer (sentencepiece .model or HF dir) or null
    train_state      TrainState.to_dict(): step, consumed samples, skipped steps, the world
                     layout that wrote it, the data description and the run config
    notes            free-form provenance (e.g. `converted_from`), never read back by megatiny

Version 1 (an untyped `extra` dict beside top-level `step`/`consumed_samples`, runtime choices
such as `attention_backend` inside `model`) is migrated on read. A newer version is refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatiny.fileio import atomic_write_text
from megatiny.model.config import RUNTIME_FIELDS, ModelConfig
from megatiny.parallel.state import ParallelLayout

METADATA_FILE = "megatiny.json"
METADATA_VERSION = 2


@dataclass(frozen=True)
class WorldLayout:
    """How the ranks that wrote a checkpoint were arranged, as `megatiny.json` records it
    (`train_state.world`): the run's `ParallelLayout` (`layout`, which these sizes are the record
    of; sequence parallelism is not recorded, it does not change the files) with its ZeRO stage
    and precision.

    world_size = data-parallel x tensor x pipeline x context parallel sizes. `zero_stage` and
    `precision` (bf16 | fp16 | fp32, the resolved runtime.precision) are None when unknown (files
    written before they were recorded)."""

    world_size: int
    zero_stage: int | None = None
    precision: str | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    context_parallel_size: int = 1

    def __post_init__(self) -> None:
        model_parallel = self.tensor_parallel_size * self.pipeline_parallel_size * self.context_parallel_size
        for name in ("world_size", "tensor_parallel_size", "pipeline_parallel_size", "context_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"world.{name} must be an integer >= 1, got {value!r}")
        if self.world_size % model_parallel:
            raise ValueError(f"world.world_size ({self.world_size}) is not a multiple of tensor x pipeline x "
                             f"context parallel sizes ({model_parallel})")

    @classmethod
    def of_run(cls, layout: ParallelLayout, zero_stage: int | None = None,
               precision: str | None = None) -> WorldLayout:
        """What a run of `layout` records."""
        return cls(world_size=layout.world_size, zero_stage=zero_stage, precision=precision,
                   tensor_parallel_size=layout.tensor, pipeline_parallel_size=layout.pipeline,
                   context_parallel_size=layout.context)

    @property
    def layout(self) -> ParallelLayout:
        """The recorded sizes as the run's layout type (without sequence parallelism)."""
        return ParallelLayout.for_world(self.world_size, tensor=self.tensor_parallel_size,
                                        pipeline=self.pipeline_parallel_size,
                                        context=self.context_parallel_size)

    @property
    def data_parallel_size(self) -> int:
        return self.layout.data

    def describe(self) -> str:
        """e.g. "tensor 2 x context 1 x pipeline 1 x data 2 (4 ranks)"."""
        return f"{self.layout.describe()} ({self.world_size} ranks)"


@dataclass(frozen=True)
class TrainState:
    """Where a training run stood when a checkpoint was written.

    step: optimizer steps completed. consumed_samples: training samples consumed, all ranks
    together (the sampler's position). skipped_steps: steps whose every micro-batch had a
    non-finite loss. world: the layout that wrote it (None for weights directories).
    data: `megatiny.data.describe_datasets` of the run's datasets. run_config: RunConfig.to_dict().
    spike: the loss-spike detector's window, its skipped / flagged steps (`spike.policy: skip`)
    and the step ranges rewinds skip (`spike.policy: rewind`).
    """

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0
    world: WorldLayout | None = None
    data: dict[str, Any] | None = None
    run_config: dict[str, Any] | None = None
    spike: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("step", "consumed_samples", "skipped_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"train_state.{name} must be an integer >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        if not isinstance(values, dict):
            raise ValueError(f"train_state must be an object, got {values!r}")
        _check_keys("train_state", values, cls)
        values = dict(values)
        world = values.get("world")
        if world is not None:
            if not isinstance(world, dict):
                raise ValueError(f"train_state.world must be an object, got {world!r}")
            _check_keys("train_state.world", world, WorldLayout)
            values["world"] = WorldLayout(**world)
        return cls(**values)


def _check_keys(where: str, values: dict[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def write_metadata(directory: str | os.PathLike, model_config: ModelConfig, *,
                   tokenizer: str | os.PathLike | None = None, state: TrainState | None = None,
                   notes: dict[str, Any] | None = None) -> Path:
    """Write DIRECTORY/megatiny.json atomically (temp file + rename). Returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": METADATA_VERSION,
        "model": model_config.to_dict(),
        "tokenizer": str(tokenizer) if tokenizer is not None else None,
        "train_state": (state or TrainState()).to_dict(),
        "notes": notes or {},
    }
    return atomic_write_text(directory / METADATA_FILE, json.dumps(payload, indent=2, sort_keys=True))


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """Read DIRECTORY/megatiny.json (migrating version 1).

    Returns {"model": ModelConfig, "tokenizer": str | None, "train_state": TrainState,
    "notes": dict, "step": int, "consumed_samples": int}; the last two repeat the train state's.
    """
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {METADATA_FILE} here; expected a megatiny checkpoint tag directory or "
            f"weights directory (written by megatiny training or tools/convert_checkpoint.py)")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object")
    version = payload.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > METADATA_VERSION:
        raise ValueError(f"{path}: written by a newer megatiny (format_version {version}); this megatiny "
                         f"reads versions 1 to {METADATA_VERSION}: upgrade megatiny")
    if version == 1:
        payload = _migrate_v1(payload)
    elif version != METADATA_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not one this megatiny reads "
                         f"(1 to {METADATA_VERSION})")
    try:
        model = ModelConfig.from_dict(payload["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: field 'model' is invalid: {e}") from None
    try:
        state = TrainState.from_dict(payload.get("train_state") or {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: field 'train_state' is invalid: {e}") from None
    return {"format_version": METADATA_VERSION, "model": model, "tokenizer": payload.get("tokenizer"),
            "train_state": state, "notes": dict(payload.get("notes") or {}),
            "step": state.step, "consumed_samples": state.consumed_samples}


def _migrate_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: `extra`'s known keys become the TrainState, the rest notes; runtime choices
    leave `model` (and the stored run config's `model` section, for `runtime`)."""
    extra = dict(payload.get("extra") or {})
    world = None
    if "world_size" in extra:
        world = {"world_size": int(extra.pop("world_size")), "zero_stage": extra.pop("zero_stage", None),
                 "precision": extra.pop("precision", None)}
    extra.pop("data_blend", None)  # the run config's data.data_path says the same
    run_config = extra.pop("run_config", None)
    if isinstance(run_config, dict):
        run_config = migrate_runtime_keys(run_config)
    state = {"step": int(payload.get("step", 0)), "consumed_samples": int(payload.get("consumed_samples", 0)),
             "skipped_steps": int(extra.pop("skipped_steps", 0)), "world": world,
             "data": extra.pop("data", None), "run_config": run_config}
    model = {k: v for k, v in dict(payload.get("model") or {}).items() if k not in RUNTIME_FIELDS}
    return {"format_version": METADATA_VERSION, "model": model, "tokenizer": payload.get("tokenizer"),
            "train_state": state, "notes": extra}


def migrate_runtime_keys(run_config: dict[str, Any]) -> dict[str, Any]:
    """A stored run config (plain data) with `model.attention_backend` / `model.activation_checkpointing`
    moved to `runtime` (where they have lived since metadata version 2)."""
    run_config = json.loads(json.dumps(run_config))
    model = run_config.get("model")
    if isinstance(model, dict):
        moved = {k: model.pop(k) for k in RUNTIME_FIELDS if k in model}
        if moved:
            run_config["runtime"] = {**(run_config.get("runtime") or {}), **moved}
    return run_config
