"""Resume a checkpoint on another model-parallel layout or ZeRO stage: megatiny's own resharding.

How a checkpoint continues depends on what changed between the layout that wrote it and the run
(`resume_mode`):

  SAME       tensor and pipeline sizes, number of ranks and ZeRO stage unchanged: DeepSpeed
             loads its own files (bitwise). The context size may differ: context ranks are
             data-parallel ranks to DeepSpeed, and the weights are replicated over them.
  UNIVERSAL  no tensor or pipeline parallelism on either side, ZeRO-3, another number of
             ranks: DeepSpeed's universal checkpoint (`CheckpointManager` converts it).
  RESHARD    anything else (e.g. tensor 2 x data 2 -> data 4, pipeline 2 -> 1, ZeRO-1 -> 3,
             ZeRO-1/2 on another number of ranks):
             the engine is built fresh for the new layout, then every local parameter gets its
             fp32 master weight and both Adam moments from the full tensors of the old layout
             (`ModelParallelCheckpoint`), cut to this rank's tensor shard and ZeRO partition,
             and the optimizer its step count. Learning rate and data position come from
             megatiny's TrainState as on every resume. Not bitwise (the new layout sums in
             another order), but the same optimizer state: losses continue within fp32 rounding.

The engine is a DeepSpeed engine with a ZeRO-1/2/3 optimizer over torch's AdamW (or DeepSpeed's
CPU Adam); its optimizer states are created here (AdamW creates them lazily at the first step).
"""
from __future__ import annotations

import enum
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from deepspeed.utils import (
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
    safe_set_local_fp32_param,
    safe_set_local_optimizer_state,
)

from megatiny.checkpoint.metadata import WorldLayout
from megatiny.checkpoint.model_parallel import ADAM_STATE_KEYS, ModelParallelCheckpoint
from megatiny.checkpoint.partition import partition_dim, pipeline_hf_name
from megatiny.parallel.state import ParallelLayout
from megatiny.parallel.tensor_parallel import shard


class ResumeMode(enum.Enum):
    SAME = "same"
    UNIVERSAL = "universal"
    RESHARD = "reshard"


def resume_mode(saved: WorldLayout | None, run: ParallelLayout, zero_stage: int | None = None) -> ResumeMode:
    """How a checkpoint written by `saved` (None: plain data parallelism on this many ranks,
    written before layouts were recorded) resumes on `run` with ZeRO stage `zero_stage`
    (None: not checked)."""
    if saved is None:  # from before layouts were recorded: plain data parallelism, these ranks
        saved = WorldLayout(world_size=run.world_size)
    stage_changed = None not in (zero_stage, saved.zero_stage) and zero_stage != saved.zero_stage
    same_split = (saved.layout.tensor, saved.layout.pipeline) == (run.tensor, run.pipeline)
    if same_split and saved.layout.world_size == run.world_size and not stage_changed:
        return ResumeMode.SAME
    # DeepSpeed's universal converter reads ZeRO-1/2 checkpoints only with Megatron-DeepSpeed's
    # `universal_checkpoint_info` in them, so those are resharded too.
    data_only = same_split and (run.tensor, run.pipeline) == (1, 1)
    if data_only and not stage_changed and saved.zero_stage in (3, None):
        return ResumeMode.UNIVERSAL
    return ResumeMode.RESHARD


def open_checkpoint(tag_dir, saved: WorldLayout | None, num_layers: int) -> ModelParallelCheckpoint:
    """The full-tensor reader of a tag directory written by `saved`."""
    layout = saved.layout if saved is not None else ParallelLayout()
    return ModelParallelCheckpoint(tag_dir, layout.tensor, layout.pipeline, num_layers)


def load_resharded(engine: Any, source: ModelParallelCheckpoint, *, tensor_rank: int, tensor_size: int,
                   pipelined: bool, num_layers: int) -> None:
    """Fill `engine` (a DeepSpeed engine of this rank, any layout, ZeRO-1/2/3) with the weights and
    Adam state of `source`. `tensor_rank` / `tensor_size`: this rank's place in the new tensor
    group; `pipelined`: the engine's module is a PipelineModule (layer-relative names). Every rank
    calls this; it involves no collectives."""
    optimizer = getattr(engine, "optimizer", None)
    base = getattr(optimizer, "optimizer", None)
    if engine.zero_optimization_stage() not in (1, 2, 3) or base is None:
        raise ValueError("resuming on another layout fills ZeRO's optimizer partitions: it needs "
                         "zero_optimization.stage 1, 2 or 3 in this run's DeepSpeed config")
    # ZeRO-3 hands its fp32 partitions to the torch optimizer only during a step (param_groups
    # are empty in between); ZeRO-1/2 leave them in param_groups.
    flats = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if flats is None:
        flats = [flat for group in base.param_groups for flat in group["params"]]
    step = source.optimizer_step()
    _create_adam_state(base, flats, step)
    for name, param in engine.module.named_parameters():
        full_name = pipeline_hf_name(name, num_layers) if pipelined else name
        dim = partition_dim(full_name) if tensor_size > 1 else None
        values = {}
        for key in (None, *ADAM_STATE_KEYS):
            full = source.tensor(full_name, key)
            values[key] = full if dim is None else shard(full, dim, tensor_rank, tensor_size)
        expected = tuple(getattr(param, "ds_shape", param.shape))
        if tuple(values[None].shape) != expected:
            raise ValueError(f"{source.tag_dir}: {full_name} gives a shard of shape "
                             f"{tuple(values[None].shape)} for tensor rank {tensor_rank} of {tensor_size}; "
                             f"the model expects {expected}")
        if hasattr(param, "ds_id"):
            _set_zero3(param, values)
        else:
            _set_zero12(param, base, values)
    engine.global_steps = step


def group_options(engine: Any) -> list[dict[str, Any]]:
    """The torch optimizer's per-group options (weight decay, betas, ...) of `engine`'s ZeRO
    optimizer, to put back after a universal load (`repair_universal_load`)."""
    base = getattr(getattr(engine, "optimizer", None), "optimizer", None)
    if base is None:
        return []
    return [{k: v for k, v in group.items() if k != "params"} for group in base.param_groups]


def repair_universal_load(engine: Any, options: list[dict[str, Any]]) -> None:
    """Undo two slips of DeepSpeed's ZeRO-3 universal load (`load_hp_checkpoint_state_from_
    checkpoint_dir_stage3`): it gives every fp32 partition's Adam state the same `step` tensor, which
    torch's AdamW then advances in place once per partition each step (Adam's bias correction runs
    ahead: losses drift ~1e-4 relative within 3 steps instead of ~1e-8); and it copies group 0's
    options into every group (weight decay then also hits the norm weights). Each partition gets
    its own step and each group its `options` back (those of the run, from `group_options`)."""
    base = getattr(getattr(engine, "optimizer", None), "optimizer", None)
    if base is None:
        return
    for state in base.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()
    for group, saved in zip(base.param_groups, options):
        group.update(saved)


def _create_adam_state(base: torch.optim.Optimizer, flats: list[torch.Tensor], step: int) -> None:
    """Zero Adam moments and step count `step` in `base.state` for each flat fp32 partition."""
    for flat in flats:
        state = base.state[flat]
        for key in ADAM_STATE_KEYS:
            if key not in state:
                state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        # torch's Adam(W) keeps the step as a float32 tensor; DeepSpeed's CPU Adam as an int
        state["step"] = (torch.tensor(float(step), dtype=torch.float32)
                         if isinstance(base, torch.optim.Adam | torch.optim.AdamW) else step)


def _set_zero3(param: torch.nn.Parameter, values: dict[str | None, torch.Tensor]) -> None:
    """ZeRO-3: this rank keeps partition r of the flattened tensor (zero-padded to equal parts)
    as its 16-bit weights (`ds_tensor`), fp32 master and optimizer states."""
    rank, world = dist.get_rank(param.ds_process_group), dist.get_world_size(param.ds_process_group)
    size = param.ds_tensor.numel()

    def partition(full: torch.Tensor) -> torch.Tensor:
        flat = F.pad(full.reshape(-1), (0, size * world - full.numel()))
        return flat.narrow(0, rank * size, size)

    weights = partition(values[None])
    safe_set_local_fp32_param(param, weights)
    for key in ADAM_STATE_KEYS:
        safe_set_local_optimizer_state(param, partition(values[key]), key)
    param.ds_tensor.data.copy_(weights.to(param.ds_tensor.dtype))


def _set_zero12(param: torch.nn.Parameter, base: torch.optim.Optimizer,
                values: dict[str | None, torch.Tensor]) -> None:
    """ZeRO-1/2: every rank holds the whole 16-bit parameter; the part of it in this rank's fp32
    partition (`_hp_mapping`, None when none is) gets the master weight and Adam moments."""
    mapping = getattr(param, "_hp_mapping", None)
    if mapping is not None:
        flat = base.param_groups[mapping.param_group_index]["params"][0]
        mapping.set_optim_state_fragment(flat, base.state[flat])
        safe_set_full_fp32_param(param, values[None])
        for key in ADAM_STATE_KEYS:
            safe_set_full_optimizer_state(param, values[key], key)
    param.data.copy_(values[None].view_as(param).to(param.dtype))
