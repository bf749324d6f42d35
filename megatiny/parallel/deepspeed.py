"""The training engine over DeepSpeed: process group, DeepSpeed config, engine.

Responsibilities:
- `init_distributed`: works under the `deepspeed` launcher (env vars), `mpirun` (mpi4py
  discovery) and plain `python` (a world-size-1 group made here), with a configurable timeout.
- `build_ds_config` (`megatiny.training.config`'s, re-exported): our run config + a JSON file
  from ds_configs/ (ZeRO stage, offload). Batch sizes, precision, optimizer, scheduler and
  clipping belong to the run config; a file that also sets them is refused, naming the key.
- `TrainingEngine`: the model under `deepspeed.zero.Init` for ZeRO-3 (so a model larger than one
  device can start), AdamW with no weight decay on norm weights and biases, `deepspeed.initialize`.
Saving and loading the engine's checkpoints (and their universal conversion) belong to
`megatiny.checkpoint.manager.CheckpointManager`, which is handed `TrainingEngine.deepspeed_engine`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

from megatiny.model.config import ModelConfig
from megatiny.parallel.context_parallel import split_for_context
from megatiny.parallel.state import ParallelLayout, ParallelState
from megatiny.parallel.tensor_parallel import shard_state_dict
from megatiny.precision import Precision, detect_hardware, resolve_precision
from megatiny.process_env import RENDEZVOUS_VARIABLES, free_port, put_interpreter_bin_first
from megatiny.training.config import (  # the DeepSpeed JSON is the run config's (re-exported here)
    DistributedConfig,
    RunConfig,
    offloads_optimizer,
    zero_stage,
)
from megatiny.training.config import build_ds_config as build_ds_config
from megatiny.training.config import precision_section as precision_section
from megatiny.training.config import read_ds_file as read_ds_file


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _mpi_launched() -> bool:
    keys = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
    return any(k in os.environ for k in keys)


def skip_inference_shm_allreduce() -> None:
    """Keep DeepSpeed's CPU backend from building and mapping its shared-memory allreduce.

    On a CPU, DeepSpeed's communication backend JIT-compiles that op on its first use on a machine
    (~40 s on 2 cores, so in the first run of a fresh install) and maps a ~66 MB /dev/shm buffer
    per rank that it never removes, yet only DeepSpeed inference's `inference_all_reduce` uses it:
    every collective of training goes through torch.distributed (gloo). Marking the op
    incompatible in DeepSpeed's probe of its ops (a dict it caches, and reads before loading the
    op) skips both. Call it before `deepspeed.init_distributed`."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def init_distributed(cfg: DistributedConfig) -> DistInfo:
    """Join (or make) the process group. Returns this process's rank, world size and device."""
    put_interpreter_bin_first(if_it_has="ninja")  # one ninja for DeepSpeed's JIT ops (see process_env)
    skip_inference_shm_allreduce()
    launched = all(k in os.environ for k in RENDEZVOUS_VARIABLES)
    port = int(os.environ.get("MASTER_PORT", cfg.master_port))
    if not launched and not _mpi_launched():
        # Plain `python tools/train.py`: a group of one on this host.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(os.environ.get("MASTER_PORT", free_port())))
    os.environ.setdefault("LOCAL_RANK", "0")
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, distributed_port=port,
                               timeout=timedelta(seconds=cfg.timeout_s), verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def run_precision(run: RunConfig, device: torch.device) -> Precision:
    """runtime.precision resolved for `device` (the same answer on every rank of one host kind)."""
    return resolve_precision(run.runtime.precision, detect_hardware(device))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices; none on norm weights, biases and other vectors.

    Under ZeRO-3 parameters are partitioned (shape [0]); `ds_shape` holds the real shape.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        ndim = len(getattr(param, "ds_shape", param.shape))
        if ndim < 2 or "norm" in name or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _build_optimizer(run: RunConfig, model: torch.nn.Module, ds_config: dict[str, Any]):
    groups = param_groups(model, run.optimizer.weight_decay)
    opt = run.optimizer
    kwargs = dict(lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
    if offloads_optimizer(ds_config) and opt.cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def _check_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """ValueError unless `state` has exactly `model`'s parameter names and (this rank's) shapes."""
    names = {n for n, _ in model.named_parameters()}
    missing, unexpected = sorted(names - set(state)), sorted(set(state) - names)
    if missing or unexpected:
        raise ValueError(f"checkpoint.init_from: weights do not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for name, param in model.named_parameters():
        expected = tuple(getattr(param, "ds_shape", param.shape))
        if tuple(state[name].shape) != expected:
            raise ValueError(f"checkpoint.init_from: {name} has shape {tuple(state[name].shape)}, "
                             f"the model expects {expected}")


def _copy_weights(model: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Copy `state` (this rank's tensors, full-shaped per parameter: a tensor rank's shards under
    tensor parallelism; None on ranks that only receive) into `model`, ZeRO-3 partitioned or not.

    Every rank must call this: under ZeRO-3 each parameter is gathered over its partition group
    (data x context ranks, which hold the same weights) and that group's first rank's copy is
    scattered back; without ZeRO-3 `deepspeed.initialize` broadcasts the data-parallel group's
    first rank's parameters. So the first rank of every such group must hold `state`
    (`modifier_rank=None` would not do: ZeRO-3 then discards what was written)."""
    if state is not None:
        _check_weights(model, state)  # before the first collective
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if state is not None:
                param.data.copy_(state[name].to(param.dtype))


def _pipeline_module(run: RunConfig, model_config: ModelConfig, parallel: ParallelState, zero: int,
                     full: dict[str, torch.Tensor] | None = None):
    """This rank's pipeline stage, holding its part of `full` (full Hugging Face named weights,
    e.g. `checkpoint.init_from`'s) or, when None, of the one-rank GPT's initial weights (seeded by
    the caller), so a pipeline run starts where a one-rank run does."""
    from megatiny.model import GPT
    from megatiny.parallel.pipeline import build_pipeline_model, load_full_state_dict

    runtime = run.runtime.model_runtime()
    if full is None:
        full = GPT(model_config, runtime=runtime).state_dict()
    module = build_pipeline_model(model_config, parallel, zero,
                                  activation_checkpoint_interval=runtime.activation_checkpointing,
                                  attention_backend=runtime.attention_backend)
    load_full_state_dict(module, full, model_config, parallel)
    return module


def init_weights_on_every_rank(layout: ParallelLayout | None) -> bool:
    """Whether every rank needs `checkpoint.init_from`'s full weights, to take its part of a split
    model (tensor or pipeline > 1); otherwise rank 0's copy reaches the others (see `_copy_weights`)."""
    return layout is not None and layout.tensor * layout.pipeline > 1


def _tensor_shard(full: dict[str, torch.Tensor] | None, parallel: ParallelState | None
                  ) -> dict[str, torch.Tensor] | None:
    """This tensor rank's part of full (Hugging Face named) weights; `full` itself without
    tensor parallelism."""
    if full is None or parallel is None or parallel.layout.tensor == 1:
        return full
    return shard_state_dict(full, parallel.tensor_rank, parallel.layout.tensor)


class TrainingEngine:
    """A DeepSpeed engine with the few operations the loop needs.

    With `parallel` (a `ParallelState`; None on plain data parallelism) the model is built with
    its tensor / context parallel layers, and DeepSpeed (`zero.Init` and `initialize`) is given
    its `mpu`, so ZeRO partitions and averages over the data x context ranks and gradient clipping
    counts tensor-parallel shards once.

    `init_weights`: start from `init_state`, full (Hugging Face named) fp32 weights such as
    `checkpoint.init_from`'s, held by rank 0, or by every rank where `init_weights_on_every_rank`;
    each rank copies its tensor shard / pipeline stage of them."""

    def __init__(self, run: RunConfig, model_config: ModelConfig, ds_config: dict[str, Any],
                 dist_info: DistInfo, init_state: dict[str, torch.Tensor] | None = None,
                 init_weights: bool = False, parallel: ParallelState | None = None):
        from megatiny.model import GPT

        self.run, self.model_config, self.ds_config, self.dist = run, model_config, ds_config, dist_info
        self.parallel = parallel
        self.pipelined = parallel is not None and parallel.layout.pipeline > 1
        mpu = parallel.mpu() if parallel is not None and not self.pipelined else None
        group = mpu.get_data_parallel_group() if mpu is not None else None
        torch.manual_seed(run.seed)  # identical initial weights on every rank (TP: shards of them)
        needs_state = dist_info.rank == 0 or init_weights_on_every_rank(parallel and parallel.layout)
        if init_weights and init_state is None and needs_state:
            raise ValueError(f"checkpoint.init_from: rank {dist_info.rank} has no weights to copy")
        if self.pipelined:  # the PipelineModule carries its own topology (no mpu)
            model = _pipeline_module(run, model_config, parallel, zero_stage(ds_config),
                                     full=init_state if init_weights else None)
        else:
            with deepspeed.zero.Init(data_parallel_group=group, mpu=mpu, config_dict_or_path=ds_config,
                                     enabled=zero_stage(ds_config) == 3):
                model = GPT(model_config, parallel, runtime=run.runtime.model_runtime())
            if init_weights:  # on every rank (collectives under ZeRO-3)
                _copy_weights(model, _tensor_shard(init_state, parallel))
        self.optimizer = _build_optimizer(run, model, ds_config)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer, config=ds_config,
                                                    mpu=mpu)

    @property
    def deepspeed_engine(self) -> deepspeed.DeepSpeedEngine:
        """The DeepSpeed engine itself (what `CheckpointManager` saves and loads)."""
        return self.engine

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.engine.gradient_accumulation_steps()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss (fp32 scalar) of a micro-batch; input_ids, labels Long[B, T] (whole,
        already shifted sequences: under context parallelism this rank's slice is taken here, and
        every context rank returns the mean over the whole sequences)."""
        device = self.dist.device
        if self.pipelined:  # (evaluation only: training steps go through train_batch)
            return self.engine.eval_batch(iter([(input_ids.to(device), labels.to(device))]),
                                          num_micro_batches=1)
        if self.parallel is not None and self.parallel.layout.context > 1:
            rank, size = self.parallel.context_rank, self.parallel.layout.context
            input_ids = split_for_context(input_ids, rank, size)
            labels = split_for_context(labels, rank, size)
        return self.engine(input_ids.to(device), labels=labels.to(device))

    def train_batch(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Pipeline parallelism: forward, backward and update over all `micro_batches` ((input_ids,
        labels) Long[B, T] each) with DeepSpeed's 1F1B schedule; the mean loss (fp32 scalar,
        averaged over micro-batches and data-parallel replicas, on every stage)."""
        device = self.dist.device
        data = [(ids.to(device), labels.to(device)) for ids, labels in micro_batches]
        return self.engine.train_batch(data_iter=iter(data)).detach()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        """Call once per micro-batch; DeepSpeed applies the update at the accumulation boundary."""
        self.engine.step()

    def grad_norm(self) -> float | None:
        """Global gradient 2-norm before clipping, of the last optimizer step."""
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)


def barrier() -> None:
    """All ranks wait here (nothing to wait for without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all ranks of `values` (float64 on `device`), read back on the host."""
    return all_reduce_sum_tensor(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def all_reduce_sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all ranks of a device tensor (as float64); stays on the device."""
    tensor = tensor.to(torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    """Destroy the process group (without it gloo ranks abort at exit).

    DeepSpeed caches a clone of the world group (`deepspeed.utils.groups._WORLD_GROUP`) that dies
    with it; forgetting it lets one process train again (e.g. a resume in the same test)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    deepspeed.utils.groups._WORLD_GROUP = None
