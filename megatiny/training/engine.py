"""The training engine over DeepSpeed: the model, its optimizer and `deepspeed.initialize`.

`TrainingEngine`: the model under `deepspeed.zero.Init` for ZeRO-3 (so a model larger than one
device can start), AdamW with no weight decay on norm weights and biases, `deepspeed.initialize`.
The DeepSpeed JSON is `megatiny.training.config.build_ds_config`'s; the process group is
`megatiny.parallel.process_group`'s. Saving and loading the engine's checkpoints (and their
universal conversion) belong to `megatiny.checkpoint.manager.CheckpointManager`, which is handed
`TrainingEngine.deepspeed_engine`.
"""
from __future__ import annotations

from typing import Any

import deepspeed
import torch

from megatiny.checkpoint.partition import load_full_state_dict, shard_state_dict
from megatiny.model import GPT
from megatiny.model.config import ModelConfig
from megatiny.model.pipeline import build_pipeline_model
from megatiny.parallel.context_parallel import split_for_context
from megatiny.parallel.process_group import DistInfo
from megatiny.parallel.state import ParallelLayout, ParallelState
from megatiny.precision import Precision, detect_hardware, resolve_precision
from megatiny.training.config import RunConfig, offloads_optimizer, zero_stage


def run_precision(run: RunConfig, device: torch.device) -> Precision:
    """runtime.precision resolved for `device` (the same answer on every rank of one host kind)."""
    return resolve_precision(run.runtime.precision, detect_hardware(device))


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
