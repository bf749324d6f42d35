"""The training engine: one builder over DeepSpeed, and the few things the loop asks of it.

`build_engine(run, plan, device)` decides everything once, from the run config and its
`RunPlan` (`RunConfig.validate`: layout, DeepSpeed file, ZeRO stage, accumulation): the
precision (`megatiny.training.config.run_precision`), the DeepSpeed JSON
(`megatiny.training.config.build_ds_config`), the process groups of the layout
(`megatiny.parallel.state.ParallelState`, given to DeepSpeed as its `mpu`), the model (the GPT
under `deepspeed.zero.Init` for ZeRO-3, so a model larger than one device can start, or this
rank's pipeline stage), its initial weights (`checkpoint.init_from`, through the
`CheckpointManager`), AdamW with no weight decay on norm weights and biases, and
`deepspeed.initialize`. The `Engine` it returns answers `loss`, `micro_step`, `pipeline_step`,
`evaluate` and `grad_norm`; `Engine.deepspeed_engine` is what `CheckpointManager` saves and
loads. The process group itself is `megatiny.parallel.process_group`'s.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import deepspeed
import torch

from megatiny.checkpoint.manager import CheckpointManager, ResumePoint
from megatiny.checkpoint.partition import load_full_state_dict, shard_state_dict
from megatiny.data.document_mask import DocumentInputs
from megatiny.model import GPT
from megatiny.model.compile import prepare_compile
from megatiny.model.config import ModelConfig
from megatiny.model.pipeline import build_pipeline_model
from megatiny.model.transformer import Block
from megatiny.parallel.context_parallel import split_for_context
from megatiny.parallel.state import DeepSpeedMPU, ParallelState
from megatiny.precision import Precision
from megatiny.training.config import RunConfig, RunPlan, build_ds_config, offloads_optimizer, run_precision


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
                                  attention_backend=runtime.attention_backend, compile=runtime.compile,
                                  compile_backend=runtime.compile_backend)
    load_full_state_dict(module, full, model_config, parallel)
    return module


def _tensor_shard(full: dict[str, torch.Tensor] | None, parallel: ParallelState
                  ) -> dict[str, torch.Tensor] | None:
    """This tensor rank's part of full (Hugging Face named) weights; `full` itself without
    tensor parallelism."""
    if full is None or parallel.layout.tensor == 1:
        return full
    return shard_state_dict(full, parallel.tensor_rank, parallel.layout.tensor)


def build_engine(run: RunConfig, plan: RunPlan, device: torch.device, *,
                 checkpoints: CheckpointManager | None = None, resume: ResumePoint | None = None) -> Engine:
    """The engine of `run` on `plan` (its layout, DeepSpeed file and ZeRO stage), on `device`.
    Every rank calls this (process groups, `zero.Init` and `deepspeed.initialize` are collective).

    `resume`: the checkpoint the run continues from (`CheckpointManager.find_resume`): only how
    the DeepSpeed config must load it is decided here (`checkpoint.load_universal`); the caller
    loads it into `Engine.deepspeed_engine`. Without one, `checkpoint.init_from` (if set) gives
    the initial weights (`_initial_weights`); otherwise they are the model's own initialization
    seeded with `run.seed`, identical on every rank (tensor parallelism: shards of them)."""
    layout = plan.layout
    precision = run_precision(run, device)
    ds_config = build_ds_config(run, plan.ds_file, layout.data, precision,
                                load_universal=resume is not None and resume.universal,
                                source=run.distributed.deepspeed_config,
                                context_parallel_size=layout.context)
    model_parallel = layout.tensor * layout.pipeline * layout.context > 1
    # Plain data parallelism: the model is whole on every rank and DeepSpeed groups the world itself.
    parallel = ParallelState(layout) if model_parallel else ParallelState.single_process()
    if run.runtime.model_runtime().compile:
        prepare_compile()
    init_weights = resume is None and run.checkpoint.init_from is not None
    init_state = _initial_weights(run, plan, checkpoints) if init_weights else None
    torch.manual_seed(run.seed)
    if layout.pipeline > 1:  # the PipelineModule carries its own topology (no mpu)
        mpu = None
        model = _pipeline_module(run, run.model_config(), parallel, plan.zero_stage, full=init_state)
    else:
        mpu = parallel.mpu() if model_parallel else None
        model = _model(run, parallel, mpu, ds_config, plan.zero_stage)
        if init_weights:  # on every rank (collectives under ZeRO-3)
            _copy_weights(model, _tensor_shard(init_state, parallel))
    optimizer = _build_optimizer(run, model, ds_config)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=mpu)
    engine.train()
    return Engine(engine, optimizer, parallel, device, precision)


def _initial_weights(run: RunConfig, plan: RunPlan, checkpoints: CheckpointManager | None
                     ) -> dict[str, torch.Tensor] | None:
    """`checkpoint.init_from`'s full (HF-named) fp32 weights, read through `checkpoints`: on rank
    0 (its copy reaches the others, see `_copy_weights`), or on every rank when the model is split
    over tensor or pipeline ranks (each then takes its part); None on the other ranks."""
    if checkpoints is None:
        raise ValueError("checkpoint.init_from needs a CheckpointManager to read the weights")
    split = plan.layout.tensor * plan.layout.pipeline > 1
    return checkpoints.initial_weights(run.checkpoint.init_from, run.model_config(), every_rank=split)


def _model(run: RunConfig, parallel: ParallelState, mpu: DeepSpeedMPU | None,
           ds_config: dict[str, Any], stage: int) -> GPT:
    """The GPT with this rank's tensor / context parallel layers, created under
    `deepspeed.zero.Init` for ZeRO-3 (partitioned over the data x context ranks as it is built);
    with compiled blocks under ZeRO-3, each block is a ZeRO-3 "leaf" (gathered whole)."""
    group = mpu.get_data_parallel_group() if mpu is not None else None
    runtime = run.runtime.model_runtime()
    with deepspeed.zero.Init(data_parallel_group=group, mpu=mpu, config_dict_or_path=ds_config,
                             enabled=stage == 3):
        model = GPT(run.model_config(), parallel, runtime=runtime)
    if stage == 3 and runtime.compile:
        # ZeRO-3 then gathers a block's parameters in ONE hook around the compiled block and puts
        # none on its submodules: their hooks, traced inside it, were graph breaks and recompiles.
        deepspeed.utils.set_z3_leaf_modules(model, [Block])
    return model


def _no_update(closure=None) -> None:
    """An optimizer step that changes nothing (see `Engine.micro_step`)."""


class Engine:
    """A DeepSpeed engine and the five things the training loop asks of it (build it with
    `build_engine`). Batches are (input_ids, labels) Long[B, T] pairs: whole, already shifted
    sequences of this data-parallel replica (under context parallelism this rank's slice is taken
    here, and every context rank's loss is the mean over the whole sequences). With the data's
    document options a batch also carries `DocumentInputs` (position ids, document ids, loss mask
    of the same rows: `megatiny.data.document_mask`); context ranks take their slice of the
    position ids and loss mask and keep the whole sequences' document ids (Ulysses attention sees
    whole sequences)."""

    def __init__(self, deepspeed_engine: deepspeed.DeepSpeedEngine, optimizer: torch.optim.Optimizer,
                 parallel: ParallelState, device: torch.device, precision: Precision):
        self.deepspeed_engine = deepspeed_engine
        """what `CheckpointManager` saves and loads"""
        self.precision = precision
        """runtime.precision as resolved for this run's devices"""
        self.pipelined = parallel.layout.pipeline > 1
        """steps go through `pipeline_step` (DeepSpeed's pipeline engine), not `loss`/`micro_step`"""
        self._optimizer, self._parallel, self._device = optimizer, parallel, device

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor,
             document: DocumentInputs | None = None) -> torch.Tensor:
        """Forward one training micro-batch: its mean next-token loss (fp32 scalar, with graph)."""
        document = (document or DocumentInputs()).to(self._device)
        position_ids, loss_mask = document.position_ids, document.loss_mask
        if self._parallel.layout.context > 1:
            rank, size = self._parallel.context_rank, self._parallel.layout.context
            input_ids = split_for_context(input_ids, rank, size)
            labels = split_for_context(labels, rank, size)
            position_ids = split_for_context(position_ids, rank, size)
            loss_mask = split_for_context(loss_mask, rank, size)
        extra = {name: value for name, value in (("loss_mask", loss_mask), ("position_ids", position_ids),
                                                 ("document_ids", document.document_ids))
                 if value is not None}  # none: exactly today's call
        return self.deepspeed_engine(input_ids.to(self._device), labels=labels.to(self._device), **extra)

    def micro_step(self, loss: torch.Tensor | None, lr: float, *, update: bool = True) -> None:
        """Backward of a micro-batch's `loss` (None: the micro-batch is dropped, no backward), then
        DeepSpeed's step, which applies the update with learning rate `lr` at the last micro-batch
        of the optimizer step. Call once per micro-batch, on every rank.

        `update=False` at the last micro-batch drops the optimizer step's update (a skipped loss
        spike): parameters, fp32 master weights and the optimizer's state (Adam's moments and
        step count) stay exactly as they were; the gradients are reduced, measured and cleared
        as usual and DeepSpeed's step counters advance, so a skipped step is still a step. All
        ranks must pass the same `update` (ZeRO's step is collective)."""
        if loss is not None:
            self.deepspeed_engine.backward(loss)
        self._set_lr(lr)
        if update:
            self.deepspeed_engine.step()
            return
        with self._update_dropped():
            self.deepspeed_engine.step()

    @contextlib.contextmanager
    def _update_dropped(self):
        """While open, the optimizer we gave DeepSpeed does nothing when stepped. Every DeepSpeed
        wrapper (ZeRO-1/2/3, with or without offload, BF16_Optimizer, or none) updates the fp32
        master weights only through it and then copies them into the model's parameters, which
        leaves them as they were; a new wrapper that steps some other way fails the check."""
        wrapper = self.deepspeed_engine.optimizer
        base = getattr(wrapper, "optimizer", wrapper)
        if base is not self._optimizer:
            raise RuntimeError(f"cannot drop an update: DeepSpeed's optimizer {type(wrapper).__name__} does "
                               "not step the optimizer megatiny built")
        self._optimizer.step = _no_update  # an instance attribute shadows the class's method
        try:
            yield
        finally:
            del self._optimizer.step

    def pipeline_step(self, micro_batches: list[tuple[torch.Tensor, ...]], lr: float
                      ) -> torch.Tensor:
        """Pipeline parallelism: forward, backward and update with learning rate `lr` over all
        `micro_batches` ((input_ids, labels[, DocumentInputs]) each) with DeepSpeed's 1F1B
        schedule; the mean loss (fp32 scalar, detached,
        averaged over micro-batches and data-parallel replicas, on every stage)."""
        self._set_lr(lr)
        data = [self._pipeline_micro_batch(*batch) for batch in micro_batches]
        return self.deepspeed_engine.train_batch(data_iter=iter(data)).detach()

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, ...]]) -> float:
        """The sum over `batches` ((input_ids, labels[, DocumentInputs])) of their mean losses (this
        rank's view), in evaluation mode."""
        self.deepspeed_engine.train(False)
        total = 0.0
        for input_ids, labels, *document in batches:
            if self.pipelined:
                loss = self.deepspeed_engine.eval_batch(
                    iter([self._pipeline_micro_batch(input_ids, labels, *document)]), num_micro_batches=1)
            else:
                loss = self.loss(input_ids, labels, *document)
            total += loss.float().item()
        self.deepspeed_engine.train(True)
        return total

    def _pipeline_micro_batch(self, input_ids: torch.Tensor, labels: torch.Tensor,
                              document: DocumentInputs | None = None) -> tuple:
        """What DeepSpeed's pipeline engine reads of a micro-batch: (input_ids, labels), or with
        document options ((input_ids, position_ids, document_ids), (labels, loss_mask)), the
        options that are off filled with what they mean (0.. positions, one document, all
        tokens counted), since only tensors travel between stages."""
        input_ids, labels = input_ids.to(self._device), labels.to(self._device)
        if document is None or all(t is None for t in (document.position_ids, document.document_ids,
                                                       document.loss_mask)):
            return input_ids, labels
        document = document.to(self._device)
        positions = document.position_ids if document.position_ids is not None else \
            torch.arange(input_ids.shape[1], device=self._device).expand_as(input_ids).contiguous()
        documents = document.document_ids if document.document_ids is not None else \
            torch.zeros_like(input_ids)
        loss_mask = document.loss_mask if document.loss_mask is not None else \
            torch.ones(input_ids.shape, dtype=torch.float32, device=self._device)
        return (input_ids, positions, documents), (labels, loss_mask)

    def grad_norm(self) -> float | None:
        """Global gradient 2-norm before clipping, of the last optimizer step."""
        norm = self.deepspeed_engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def _set_lr(self, lr: float) -> None:
        for group in self._optimizer.param_groups:
            group["lr"] = lr

