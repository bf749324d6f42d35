"""The parallel layout of a run and its process groups (tensor x context x data x pipeline).

Rank order is Megatron-core's default: tensor fastest, then context, then data, pipeline slowest,

    rank = t + T * (c + C * (d + D * p))

so the ranks of one tensor-parallel group are consecutive (they stay inside a host, where the
per-layer all-reduces are cheap) and pipeline stages are the farthest apart. This is also the order
of DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data, model) when context is 1.

`ParallelLayout` is the pure arithmetic (validated, rank <-> coordinates, the ranks of each group),
usable without processes. `ParallelState` creates the torch.distributed groups for this rank and
`DeepSpeedMPU` presents them to DeepSpeed as its `mpu` (see there for how context ranks appear).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

# Axes from fastest- to slowest-varying rank.
AXES = ("tensor", "context", "data", "pipeline")


@dataclass(frozen=True)
class RankCoordinates:
    """Where one rank sits in the layout (each coordinate < that axis's size)."""

    tensor: int
    context: int
    data: int
    pipeline: int


@dataclass(frozen=True)
class ParallelLayout:
    """Sizes of the parallel axes; tensor x context x data x pipeline = world size.

    `sequence_parallel` is Megatron's sequence parallelism (norms/residuals sharded along the
    sequence over the tensor-parallel group), so it needs tensor > 1. Context parallelism (long
    sequences split over `context` ranks, DeepSpeed-Ulysses attention) is a separate axis.
    """

    tensor: int = 1
    pipeline: int = 1
    context: int = 1
    data: int = 1
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        for name in AXES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"parallel.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.sequence_parallel, bool):
            raise ValueError(f"parallel.sequence_parallel must be true or false, got "
                             f"{self.sequence_parallel!r}")
        if self.sequence_parallel and self.tensor == 1:
            raise ValueError("parallel.sequence_parallel shards activations over the tensor-parallel "
                             "ranks, so it needs parallel.tensor > 1 (got tensor = 1); set "
                             "sequence_parallel: false or raise parallel.tensor")

    @classmethod
    def for_world(cls, world_size: int, tensor: int = 1, pipeline: int = 1, context: int = 1,
                  sequence_parallel: bool = False) -> ParallelLayout:
        """The layout whose data-parallel size is world_size / (tensor x pipeline x context)."""
        model_ranks = tensor * pipeline * context
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world size must be a positive integer, got {world_size!r}")
        if model_ranks < 1 or world_size % model_ranks:
            raise ValueError(
                f"world size {world_size} is not divisible by parallel.tensor x parallel.pipeline x "
                f"parallel.context = {tensor} x {pipeline} x {context} = {model_ranks}; choose sizes "
                "whose product divides the number of ranks")
        return cls(tensor=tensor, pipeline=pipeline, context=context, data=world_size // model_ranks,
                   sequence_parallel=sequence_parallel)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def world_size(self) -> int:
        return self.tensor * self.context * self.data * self.pipeline

    def describe(self) -> str:
        """e.g. "tensor 2 x context 1 x pipeline 1 x data 2, sequence parallel"."""
        sizes = f"tensor {self.tensor} x context {self.context} x pipeline {self.pipeline} x data {self.data}"
        return sizes + (", sequence parallel" if self.sequence_parallel else "")

    def _sizes(self) -> tuple[int, ...]:
        return tuple(getattr(self, axis) for axis in AXES)

    def coordinates(self, rank: int) -> RankCoordinates:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a layout of {self.world_size} ranks")
        coords = []
        for size in self._sizes():
            coords.append(rank % size)
            rank //= size
        return RankCoordinates(*coords)

    def rank_of(self, coords: RankCoordinates) -> int:
        rank = 0
        for axis, size in reversed(list(zip(AXES, self._sizes()))):
            value = getattr(coords, axis)
            if not 0 <= value < size:
                raise ValueError(f"{axis} coordinate {value} is outside parallel.{axis} = {size}")
            rank = rank * size + value
        return rank

    def group_ranks(self, axes: tuple[str, ...]) -> list[list[int]]:
        """Every group that varies `axes` (others fixed), each as its sorted global ranks.

        Groups are listed in order of their smallest rank, so every process creates them in the
        same order (torch.distributed.new_group requires that)."""
        unknown = set(axes) - set(AXES)
        if unknown:
            raise ValueError(f"unknown parallel axes {sorted(unknown)}; axes are {AXES}")
        groups: dict[tuple[int, ...], list[int]] = {}
        for rank in range(self.world_size):
            c = self.coordinates(rank)
            key = tuple(getattr(c, axis) for axis in AXES if axis not in axes)
            groups.setdefault(key, []).append(rank)
        return sorted(groups.values())


# Groups ParallelState creates: name -> axes that vary inside one group.
GROUP_AXES: dict[str, tuple[str, ...]] = {
    "tensor": ("tensor",),
    "context": ("context",),
    "data": ("data",),
    "pipeline": ("pipeline",),
    # ZeRO partitions and averages gradients over every rank that holds the same weights.
    "data_context": ("context", "data"),
    # Megatron's "model parallel" group: the ranks that together hold one copy of the model.
    "model": ("tensor", "pipeline"),
}


class ParallelState:
    """This rank's process groups for `layout`. Call on every rank (new_group is collective).

    `ParallelState.single_process()` is the state of a model that is not split (every size 1):
    no groups, no process group needed; what the model uses when it is not given one."""

    def __init__(self, layout: ParallelLayout):
        if not dist.is_initialized():
            raise RuntimeError("ParallelState needs torch.distributed to be initialized first")
        world = dist.get_world_size()
        if layout.world_size != world:
            raise ValueError(f"parallel layout tensor x context x data x pipeline = "
                             f"{layout.tensor} x {layout.context} x {layout.data} x {layout.pipeline} = "
                             f"{layout.world_size} ranks, but the world has {world}")
        self.layout = layout
        self.rank = dist.get_rank()
        self.coords = layout.coordinates(self.rank)
        self.groups: dict[str, Any] = {}
        self.group_members: dict[str, list[int]] = {}
        for name, axes in GROUP_AXES.items():
            for ranks in layout.group_ranks(axes):
                group = dist.new_group(ranks=ranks)  # every rank creates every group, same order
                if self.rank in ranks:
                    self.groups[name], self.group_members[name] = group, ranks

    @classmethod
    def single_process(cls) -> ParallelState:
        """One process holds the whole model: layout of one rank, rank 0, no process groups (a
        model that is not split never asks for one)."""
        state = cls.__new__(cls)  # (no torch.distributed: __init__'s groups are not needed)
        state.layout, state.rank = ParallelLayout(), 0
        state.coords = state.layout.coordinates(0)
        state.groups, state.group_members = {}, {}
        return state

    @property
    def tensor_group(self):
        return self.groups["tensor"]

    @property
    def context_group(self):
        return self.groups["context"]

    @property
    def tensor_rank(self) -> int:
        return self.coords.tensor

    @property
    def context_rank(self) -> int:
        return self.coords.context

    @property
    def data_rank(self) -> int:
        """Which replica's samples this rank reads (TP and context ranks of a replica share it)."""
        return self.coords.data

    @property
    def sequence_parallel(self) -> bool:
        return self.layout.sequence_parallel

    def mpu(self) -> DeepSpeedMPU:
        return DeepSpeedMPU(self)


class DeepSpeedMPU:
    """The `mpu` object `deepspeed.initialize(mpu=...)` and `deepspeed.zero.Init(mpu=...)` query.

    Tensor parallelism appears as DeepSpeed's "model parallel" group (pipeline runs give DeepSpeed
    no mpu: the `PipelineModule` carries its own topology, see `megatiny.model.pipeline`): gradient
    clipping adds the norms of parameters marked `tensor_model_parallel` on every model-parallel
    rank and of replicated ones on model-parallel rank 0 only, then all-reduces over this group.

    Context ranks are presented to DeepSpeed as data-parallel ranks: `get_data_parallel_group` is
    the data x context group, over which ZeRO partitions states and averages gradients (the
    model's context-parallel loss scales its backward by the context size to turn that average
    into the sum over the sequence slices; see `megatiny.parallel.context_parallel`). We do not
    use DeepSpeed's own sequence-parallel groups (`get_sequence_parallel_*`): DeepSpeed 0.19.8
    scales gradients for them differently in ZeRO-1/2 (sum over sequence ranks) and in ZeRO-3's
    reduce-scatter path (mean), so no one loss convention is exact under both. DeepSpeed's batch
    accounting therefore counts micro_batch x data x context "samples" per step (each context rank
    holds micro_batch sequences of seq_length / context tokens).
    """

    def __init__(self, state: ParallelState):
        self.state = state

    def _group(self, name: str):
        return self.state.groups[name]

    def _rank_in(self, name: str) -> int:
        return self.state.group_members[name].index(self.state.rank)

    def _size(self, name: str) -> int:
        return len(self.state.group_members[name])

    # Megatron "model parallel" = tensor x pipeline.
    def get_model_parallel_group(self):
        return self._group("model")

    def get_model_parallel_rank(self) -> int:
        return self._rank_in("model")

    def get_model_parallel_world_size(self) -> int:
        return self._size("model")

    def get_tensor_model_parallel_group(self):
        return self._group("tensor")

    def get_tensor_model_parallel_rank(self) -> int:
        return self._rank_in("tensor")

    def get_tensor_model_parallel_world_size(self) -> int:
        return self._size("tensor")

    def get_tensor_model_parallel_src_rank(self) -> int:
        """Global rank of tensor-parallel rank 0 in this rank's group."""
        return self.state.group_members["tensor"][0]

    def get_data_parallel_group(self):
        return self._group("data_context")

    def get_data_parallel_rank(self) -> int:
        return self._rank_in("data_context")

    def get_data_parallel_world_size(self) -> int:
        return self._size("data_context")

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.state.group_members["data_context"])

    def get_pipeline_model_parallel_group(self):
        return self._group("pipeline")

    def get_pipeline_model_parallel_rank(self) -> int:
        return self._rank_in("pipeline")

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self._size("pipeline")
