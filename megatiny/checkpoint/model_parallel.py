"""Full tensors out of a checkpoint of any model-parallel layout (tensor x pipeline x ZeRO shards).

A DeepSpeed tag directory written with tensor size T and pipeline size P holds one ZeRO
checkpoint per model-parallel rank `mp` (files `*mp_rank_{mp:02d}*`), each sharded further over
the data-parallel ranks (`megatiny.checkpoint.consolidate.ZeroCheckpoint` reads one):

  - without pipelines (written with megatiny's `mpu`): mp = tensor rank; parameter names are
    the Hugging Face names, and each tensor rank holds its shard of the split weights
    (`megatiny.checkpoint.partition.partition_dim`);
  - with pipelines (DeepSpeed's pipeline engine and topology): mp = stage x T + tensor rank,
    and names are layer-relative ("<layer>.<name>", `megatiny.checkpoint.partition.pipeline_hf_name`).

`ModelParallelCheckpoint.tensor(name)` finds a weight's stage, assembles each tensor rank's
shard from its ZeRO partitions and concatenates them along the split dimension (replicated
weights, e.g. norms, are taken from tensor rank 0): the weight as the one-rank model has it. The
Adam moments are laid out like the weights, so `tensor(name, "exp_avg")` does the same for them.
One parameter at a time: memory stays at about one full tensor.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from megatiny.checkpoint.consolidate import ZeroCheckpoint
from megatiny.checkpoint.partition import partition_dim, pipeline_hf_name

ADAM_STATE_KEYS = ("exp_avg", "exp_avg_sq")


class ModelParallelCheckpoint:
    """A tag directory written with `tensor_size` x `pipeline_size` model-parallel ranks, read as
    full, Hugging Face named fp32 tensors (master weights or Adam moments)."""

    def __init__(self, tag_dir: str | os.PathLike, tensor_size: int = 1, pipeline_size: int = 1,
                 num_layers: int | None = None):
        if pipeline_size > 1 and num_layers is None:
            raise ValueError("num_layers is needed to name the layers of a pipeline checkpoint")
        self.tag_dir = Path(tag_dir)
        self.tensor_size, self.pipeline_size = tensor_size, pipeline_size
        self.ranks: list[ZeroCheckpoint] = []
        # HF name -> per tensor rank: (the ZeroCheckpoint holding it, the name stored there)
        self._where: dict[str, list[tuple[ZeroCheckpoint, str]]] = {}
        for stage in range(pipeline_size):
            for tensor_rank in range(tensor_size):
                zero = ZeroCheckpoint(self.tag_dir, model_parallel_rank=stage * tensor_size + tensor_rank)
                self.ranks.append(zero)
                for stored in zero.names():
                    name = pipeline_hf_name(stored, num_layers) if pipeline_size > 1 else stored
                    self._where.setdefault(name, [None] * tensor_size)[tensor_rank] = (zero, stored)
        self._resolve_tied_aliases()
        incomplete = [name for name, found in self._where.items() if any(f is None for f in found)]
        if incomplete:
            raise ValueError(f"{self.tag_dir}: {incomplete[:3]} missing on some of the {tensor_size} tensor "
                             "ranks; the checkpoint is incomplete or not of this layout")

    def _resolve_tied_aliases(self) -> None:
        """A tied name (DeepSpeed's `shared_params`, e.g. `lm_head.weight` -> the embedding) that some
        tensor ranks record and others do not: on those others, read the tensor it is tied to."""
        for found in self._where.values():
            present = [(zero, stored) for zero, stored in filter(None, found) if stored in zero.shared]
            if not present or all(found):
                continue
            zero, stored = present[0]
            target = zero.shared[stored]
            stage = self.ranks.index(zero) // self.tensor_size
            for tensor_rank, entry in enumerate(found):
                holder = self.ranks[stage * self.tensor_size + tensor_rank]
                if entry is None and target in holder.names():
                    found[tensor_rank] = (holder, target)

    @property
    def stage(self) -> int:
        """The ZeRO stage the checkpoint was written with."""
        return self.ranks[0].stage

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> torch.Size:
        """Full shape of `name`."""
        parts = [zero.shape(stored) for zero, stored in self._lookup(name)]
        dim = partition_dim(name) if self.tensor_size > 1 else None
        if dim is None:
            return parts[0]
        return torch.Size((*parts[0][:dim], sum(p[dim] for p in parts), *parts[0][dim + 1:]))

    def tensor(self, name: str, state_key: str | None = None) -> torch.Tensor:
        """Full fp32 `name` (HF naming): the master weight, or its optimizer state `state_key`."""
        found = self._lookup(name)
        dim = partition_dim(name) if self.tensor_size > 1 else None
        if dim is None:
            zero, stored = found[0]
            return zero.tensor(stored, state_key)
        return torch.cat([zero.tensor(stored, state_key) for zero, stored in found], dim=dim)

    def optimizer_step(self) -> int:
        """Adam's step count (every model-parallel rank stepped the same number of times)."""
        steps = {zero.optimizer_step() for zero in self.ranks}
        if len(steps) != 1:
            raise ValueError(f"{self.tag_dir}: model-parallel ranks saved different optimizer step counts "
                             f"{sorted(steps)}")
        return steps.pop()

    def _lookup(self, name: str) -> list[tuple[ZeroCheckpoint, str]]:
        if name not in self._where:
            raise KeyError(f"{self.tag_dir}: no parameter {name!r} in this checkpoint")
        return self._where[name]
