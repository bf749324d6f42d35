"""Where weights come from: one interface over every checkpoint format megatiny reads.

`open_weights(path)` recognises
  - a DeepSpeed checkpoint root (uses its `latest` tag) or one tag directory (`megatiny.json`
    + DeepSpeed files): fp32 master weights from the ZeRO optimizer shards, or the 16-bit module
    weights where DeepSpeed saved them whole (ZeRO-0/1/2);
    tensor- and pipeline-parallel ones (`train_state.world`) from every model-parallel rank's
    master weights, merged into full tensors;
  - a megatiny weights directory (`megatiny.json` + `model.safetensors`);
  - a Hugging Face Llama directory (`config.json` + `model.safetensors` or sharded safetensors).
Every source lists its tensors by megatiny name, checked against `hf.weight_table(config)` before
anything is read, and hands out one tensor at a time, so converters can stream.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from megatiny.checkpoint import consolidate, hf, layout
from megatiny.checkpoint.metadata import METADATA_FILE, TrainState, read_metadata
from megatiny.checkpoint.model_parallel import ModelParallelCheckpoint
from megatiny.checkpoint.tokenizer_export import has_tokenizer_files
from megatiny.model.config import ModelConfig

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHT_CHOICES = ("auto", "master", "module")


class WeightSource(Protocol):
    """A model's weights, readable one tensor at a time (by megatiny name, full shape)."""

    path: Path
    config: ModelConfig
    metadata: dict[str, Any]

    def names(self) -> list[str]: ...

    def tensor(self, name: str) -> torch.Tensor: ...


@dataclass
class _Base:
    path: Path
    config: ModelConfig
    metadata: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [e.megatiny for e in hf.weight_table(self.config)]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {e.megatiny: e.shape for e in hf.weight_table(self.config)}


def _stored_shapes(zero: consolidate.ZeroCheckpoint, config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of what `zero` stores, plus tied names other than the expected tied head
    (so that check_entries reports them as unexpected)."""
    found = {name: tuple(shape) for name, shape in zero.shapes.items()}
    for tied, target in zero.shared.items():
        if not (config.tie_word_embeddings and (tied, target) == (hf.TIED_HEAD, hf.TIED_TO)):
            found[tied] = tuple(zero.shape(tied))
    return found


class ZeroMasterSource(_Base):
    """fp32 master weights of a ZeRO-1/2/3 checkpoint tag directory."""

    def __init__(self, tag_dir: Path, metadata: dict[str, Any]):
        super().__init__(tag_dir, metadata["model"], metadata)
        self.zero = consolidate.ZeroCheckpoint(tag_dir)
        hf.check_entries(_stored_shapes(self.zero, self.config), self.expected_shapes(),
                         f"{tag_dir} (megatiny.json model config)", "parameter")

    def tensor(self, name: str) -> torch.Tensor:
        return self.zero.tensor(name)


class ModelParallelMasterSource(_Base):
    """fp32 master weights of a tensor- and/or pipeline-parallel ZeRO-1/2/3 checkpoint: every
    model-parallel rank's ZeRO shards assembled and the tensor ranks' shards concatenated
    (`megatiny.checkpoint.model_parallel.ModelParallelCheckpoint`; q/k/v rows are head-major, so
    the kv groups come back in order), pipeline layer names mapped to Hugging Face ones."""

    def __init__(self, tag_dir: Path, metadata: dict[str, Any], tensor_size: int, pipeline_size: int):
        super().__init__(tag_dir, metadata["model"], metadata)
        self.checkpoint = ModelParallelCheckpoint(tag_dir, tensor_size, pipeline_size, self.config.num_layers)
        found = {name: tuple(self.checkpoint.shape(name)) for name in self.checkpoint.names()
                 if not (self.config.tie_word_embeddings and name == hf.TIED_HEAD)}
        hf.check_entries(found, self.expected_shapes(),
                         f"{tag_dir} (megatiny.json model config, tensor_parallel_size {tensor_size}, "
                         f"pipeline_parallel_size {pipeline_size})", "parameter")

    def tensor(self, name: str) -> torch.Tensor:
        return self.checkpoint.tensor(name)


class ModuleStatesSource(_Base):
    """16-bit module weights that DeepSpeed saved whole (`mp_rank_00_model_states.pt`, ZeRO-0/1/2)."""

    def __init__(self, tag_dir: Path, metadata: dict[str, Any]):
        super().__init__(tag_dir, metadata["model"], metadata)
        path = tag_dir / layout.MODEL_STATES_ZERO12
        if not path.is_file():
            raise FileNotFoundError(
                f"{tag_dir}: no {layout.MODEL_STATES_ZERO12}; ZeRO-3 saves its 16-bit weights "
                f"partitioned, so only the fp32 master weights (--weights master) can be read")
        module = consolidate._load(path).get("module")
        if not isinstance(module, dict):
            raise ValueError(f"{path}: no 'module' state dict")
        if self.config.tie_word_embeddings:
            module.pop(hf.TIED_HEAD, None)
        self.module = module
        hf.check_entries({k: tuple(v.shape) for k, v in module.items()}, self.expected_shapes(),
                         f"{path} (megatiny.json model config)")

    def tensor(self, name: str) -> torch.Tensor:
        return self.module[name]


class SafetensorsSource(_Base):
    """A directory of safetensors weights: a single file or shards listed by an index."""

    def __init__(self, directory: Path, config: ModelConfig, metadata: dict[str, Any],
                 to_megatiny: dict[str, str] | None = None):
        super().__init__(directory, config, metadata)
        self._file_of = _safetensors_files(directory)
        self._handles = {f: safe_open(str(f), framework="pt") for f in set(self._file_of.values())}
        # stored name -> megatiny name (HF names when reading an HF dir)
        stored_to_megatiny = to_megatiny or {e.megatiny: e.megatiny for e in hf.weight_table(config)}
        self._stored_name = {m: s for s, m in stored_to_megatiny.items()}
        found = {}
        for stored, file in self._file_of.items():
            if stored not in self._handles[file].keys():
                raise ValueError(f"{directory / SAFETENSORS_INDEX} maps {stored!r} to {file.name}, "
                                 f"which does not contain it")
            if config.tie_word_embeddings and stored == hf.TIED_HEAD:
                continue  # some HF exports store the tied head too; it is the embedding
            shape = tuple(self._handles[file].get_slice(stored).get_shape())
            found[stored_to_megatiny.get(stored, stored)] = shape
        hf.check_entries(found, self.expected_shapes(), str(directory))

    def tensor(self, name: str) -> torch.Tensor:
        stored = self._stored_name[name]
        return self._handles[self._file_of[stored]].get_tensor(stored)


class StateDictSource(_Base):
    """An in-memory model's state dict (e.g. `GPT.state_dict()`) as a weight source."""

    def __init__(self, state_dict: dict[str, torch.Tensor], config: ModelConfig,
                 metadata: dict[str, Any] | None = None):
        super().__init__(Path("<memory>"), config, {"model": config, **(metadata or {})})
        self.state = {k: v for k, v in state_dict.items()
                      if not (config.tie_word_embeddings and k == hf.TIED_HEAD)}
        hf.check_entries({k: tuple(v.shape) for k, v in self.state.items()}, self.expected_shapes(),
                         "state dict")

    def tensor(self, name: str) -> torch.Tensor:
        return self.state[name]


def _safetensors_files(directory: Path) -> dict[str, Path]:
    """Stored tensor name -> the safetensors file holding it."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e})") from None
        files = {name: directory / f for name, f in weight_map.items()}
        missing = sorted({p.name for p in files.values() if not p.is_file()})
        if missing:
            raise FileNotFoundError(f"{index} lists shard(s) {missing} that are missing from {directory}")
        return files
    single = directory / SAFETENSORS_FILE
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}
    others = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    hint = (f" (found {others}: re-save with safetensors, e.g. save_pretrained(safe_serialization=True))"
            if others else "")
    raise FileNotFoundError(f"{directory}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}{hint}")


def open_weights(path: str | os.PathLike, *, tag: str | None = None, weights: str = "auto") -> WeightSource:
    """Open any checkpoint format megatiny reads (see the module docstring).

    `tag` picks a tag of a DeepSpeed checkpoint root (default: its `latest`). `weights` for DeepSpeed
    checkpoints: "master" (fp32 from the optimizer shards), "module" (16-bit module weights saved
    whole), "auto" (master if the optimizer shards exist, else module).
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint or weights directory")
    if not path.is_dir():
        raise ValueError(f"{path}: expected a directory (DeepSpeed checkpoint root or tag, megatiny "
                         f"weights dir, or Hugging Face model dir), got a file")
    kind = layout.kind_of(path)
    if tag is not None or kind in (layout.DirKind.TAG_DIR, layout.DirKind.CHECKPOINT_ROOT):
        tag_dir = layout.resolve_tag_dir(path, tag)
        metadata = read_metadata(tag_dir)
        has_optim = any(consolidate.OPTIM_PATTERN.match(p.name) for p in tag_dir.iterdir())
        world = metadata["train_state"].world
        tensor_size = world.layout.tensor if world is not None else 1
        pipeline_size = world.layout.pipeline if world is not None else 1
        if tensor_size > 1 or pipeline_size > 1:
            if weights == "module" or not has_optim:
                raise ValueError(f"{tag_dir}: a model-parallel checkpoint (tensor_parallel_size "
                                 f"{tensor_size}, pipeline_parallel_size {pipeline_size}) converts from its "
                                 "fp32 master weights only (--weights master, the optimizer shards)")
            return ModelParallelMasterSource(tag_dir, metadata, tensor_size, pipeline_size)
        if weights == "master" or (weights == "auto" and has_optim):
            return ZeroMasterSource(tag_dir, metadata)
        return ModuleStatesSource(tag_dir, metadata)
    if kind is layout.DirKind.WEIGHTS_DIR:
        metadata = read_metadata(path)
        return SafetensorsSource(path, metadata["model"], metadata)
    if kind is layout.DirKind.HF_DIR:
        return open_hf(path)
    raise FileNotFoundError(
        f"{path}: not a checkpoint megatiny can read: expected a DeepSpeed checkpoint root ('latest') "
        f"or tag directory (*_model_states.pt + {METADATA_FILE}), a megatiny weights directory "
        f"({METADATA_FILE} + {SAFETENSORS_FILE}), or a Hugging Face model directory (config.json)")


def open_hf(path: Path) -> SafetensorsSource:
    """A Hugging Face Llama directory as a weight source (config refused if not representable)."""
    config_path = path / "config.json"
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    config = hf.config_from_hf(hf_config, str(config_path))
    to_megatiny = {e.hf: e.megatiny for e in hf.weight_table(config)}
    metadata = {"model": config, "tokenizer": str(path) if has_tokenizer_files(path) else None,
                "train_state": TrainState(), "step": 0, "consumed_samples": 0, "notes": {"source": str(path)}}
    return SafetensorsSource(path, config, metadata, to_megatiny)
