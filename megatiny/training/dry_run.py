"""`megatiny train --dry-run`: the run config's validation on one process, and what it resolved.

No process group starts and DeepSpeed is not imported: `report` runs `RunConfig.validate` (the
same checks, same messages, as a real run before its process group starts), resolves
`runtime.precision` on this machine, and describes the layout, batch arithmetic, per-rank memory
estimate (`megatiny.training.memory`) and the DeepSpeed config JSON the run would use.
"""
from __future__ import annotations

import json
import os

from megatiny.precision import Precision
from megatiny.process_env import launch_world_size
from megatiny.training.config import RunConfig, RunPlan, build_ds_config, offloads_optimizer, run_precision
from megatiny.training.memory import format_bytes, rank_memory


def dry_run_world_size(run: RunConfig, requested: int | None, environ: dict[str, str] | None = None) -> int:
    """The ranks to validate for: the launcher's (WORLD_SIZE, or an MPI launcher's), else
    `requested` (--world-size), else one data-parallel replica (tensor x pipeline x context)."""
    environ = os.environ if environ is None else environ
    value = environ.get("WORLD_SIZE")
    if value:
        if not value.isdigit():
            raise ValueError(f"environment variable WORLD_SIZE={value!r} is not a number of ranks")
        return int(value)
    launched = launch_world_size(environ)  # mpirun's
    if launched is not None:
        return launched
    if requested is not None:
        return requested
    return run.parallel.tensor * run.parallel.pipeline * run.parallel.context


def local_precision(run: RunConfig) -> Precision:
    """runtime.precision as a rank of this machine resolves it (first GPU, else the CPU)."""
    import torch

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return run_precision(run, device)


def describe_plan_layout(plan: RunPlan) -> str:
    """e.g. "tensor 2 x pipeline 1 x context 1 x data 2 = 4 ranks, sequence parallel"."""
    layout = plan.layout
    text = (f"tensor {layout.tensor} x pipeline {layout.pipeline} x context {layout.context} x "
            f"data {layout.data} = {layout.world_size} ranks")
    return text + (", sequence parallel" if layout.sequence_parallel else "")


def _memory_lines(run: RunConfig, plan: RunPlan, precision: Precision, ds_config: dict) -> list[str]:
    """The per-rank memory estimate, one line per kind of state."""
    memory = rank_memory(run.model_config(), plan.layout, plan.zero_stage, precision.name)
    offload = " (offloaded to CPU)" if offloads_optimizer(ds_config) else ""
    return [
        f"memory per rank (estimate, ZeRO-{plan.zero_stage}, {precision.name}; activations not included):",
        f"  parameters        {format_bytes(memory.param_bytes)}  ({memory.parameters / 1e6:.2f}M on this "
        "rank before ZeRO partitioning)",
        f"  gradients         {format_bytes(memory.grad_bytes)}",
        f"  optimizer states  {format_bytes(memory.optimizer_bytes)}{offload}",
        f"  total             {format_bytes(memory.total_bytes)}",
    ]


def report(run: RunConfig, world_size: int) -> str:
    """Validate `run` for `world_size` ranks (ValueError/FileNotFoundError as a real run raises them)
    and describe what it resolved."""
    plan = run.validate(world_size)
    precision = local_precision(run)
    batch, layout = run.batch, plan.layout
    ds_config = build_ds_config(run, plan.ds_file, layout.data, precision,
                                source=run.distributed.deepspeed_config,
                                context_parallel_size=layout.context)
    model = run.model_config()
    tokens = batch.global_batch_size * batch.seq_length
    lines = [
        f"dry run: the config is valid for {world_size} ranks (nothing was started)",
        f"layout: {describe_plan_layout(plan)}",
        f"precision: {precision.describe()}",
        f"model: {model.num_parameters() / 1e6:.2f}M parameters, {model.num_layers} layers",
        f"batch: micro-batch {batch.micro_batch_size} x gradient accumulation "
        f"{plan.gradient_accumulation_steps} x data-parallel {layout.data} = global batch "
        f"{batch.global_batch_size} sequences of {batch.seq_length} tokens = {tokens} tokens per step",
        f"steps: {run.schedule.train_steps} ({run.schedule.train_steps * tokens:,} tokens)",
        *_memory_lines(run, plan, precision, ds_config),
        f"deepspeed config ({run.distributed.deepspeed_config}, as built for a fresh start):",
        json.dumps(ds_config, indent=2, sort_keys=True),
    ]
    return "\n".join(lines)
