"""The training run configuration: typed sections, loaded from YAML/JSON plus `key=value` overrides.

A run file looks like (every section optional except what the run needs)::

    model: {preset: tiny-test, num_layers: 4}   # preset + ModelConfig field overrides
    tokenizer: /data/tok.model
    data: {data_path: "0.7 /data/a_text_document 0.3 /data/b_text_document", split: "969,30,1"}
    batch: {seq_length: 2048, micro_batch_size: 8, global_batch_size: 1024}
    optimizer: {lr: 4.0e-4, min_lr: 4.0e-5, weight_decay: 0.1, grad_clip: 1.0}
    schedule: {train_steps: 1430512, warmup_steps: 2000, style: cosine}
    checkpoint: {save_dir: runs/tl, save_interval: 2000, keep_last: 3, resume: auto}
    logging: {log_interval: 10, eval_interval: 2000, eval_iters: 10}
    distributed: {deepspeed_config: ds_configs/zero3.json, timeout_s: 600}
    runtime: {precision: auto, activation_checkpointing: 1}   # how it computes, not what it learns
    parallel: {tensor: 2, context: 1, sequence_parallel: true}  # model parallelism (data = the rest)

Overrides use dotted keys: `batch.micro_batch_size=4 schedule.train_steps=100 model.preset=nano-2m`.
Values are parsed as YAML scalars (`1e-4`, `true`, `null`, `[0.9, 0.95]`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from megatiny.checkpoint.manifest import VERIFY_MODES
from megatiny.data.config import DataConfig
from megatiny.model.config import (
    FAMILY_FIELDS,
    PRESETS,
    RUNTIME_FIELDS,
    ModelConfig,
    ModelRuntime,
    architecture_differences,
    get_preset,
)
from megatiny.model.parallel_checks import check_context_parallel, check_pipeline_model, check_tensor_parallel
from megatiny.parallel.checks import check_pipeline_zero_stage, check_sequence_split
from megatiny.precision import PRECISIONS, Precision, detect_hardware, resolve_precision

if TYPE_CHECKING:
    from megatiny.data.document_mask import DocumentMasking
    from megatiny.parallel.state import ParallelLayout

SCHEDULE_STYLES = ("cosine", "linear", "constant")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `4e-4` (no dot) as a string; this loader reads it as a float, as users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
NAN_POLICIES = ("skip", "stop")


def _positive_int(section: str, name: str, value: Any, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{section}.{name} must be an integer {bound}, got {value!r}")


def _non_negative(section: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{section}.{name} must be a number >= 0, got {value!r}")


@dataclass
class ModelSection:
    """The architecture: a named preset (`megatiny.model.config.PRESETS`) plus `ModelConfig` field
    overrides, e.g. `model: {preset: nano-2m, num_layers: 2}`. `preset` is required whenever the
    section has other keys; an absent or empty `model:` section means `preset: tiny-test`, or the
    architecture of `checkpoint.init_from` when that is set. With `preset: null` every ModelConfig
    field must be given (those of the newer families, `family`, `kv_channels`, `rope_scaling`, biases
    and sliding window, default to a plain Llama 2 decoder). How the model computes (attention
    kernel, activation checkpointing) is the `runtime` section's, not the architecture's."""

    preset: str | None = "tiny-test"
    """one of the presets below, or null (then give every ModelConfig field)"""
    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields that replace the preset's (`hidden_size`, `num_layers`, `vocab_size`, ...)"""

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {self.preset!r}; choose one of {sorted(PRESETS)} "
                             "or set preset: null and give every model field explicitly")
        _refuse_runtime_keys(self.overrides)
        if self.preset is None:
            missing = [f.name for f in dataclasses.fields(ModelConfig)
                       if f.name not in self.overrides and f.name not in FAMILY_FIELDS]
            if missing:
                raise ValueError(f"model: preset is null, so every ModelConfig field must be given; missing "
                                 f"{missing}. Or name a preset: {sorted(PRESETS)}")
        self.build()  # validates the fields now, naming the bad one

    def build(self) -> ModelConfig:
        try:
            if self.preset is None:
                return ModelConfig.from_dict(self.overrides)
            return get_preset(self.preset, **self.overrides)
        except TypeError as e:  # unknown field passed to dataclasses.replace
            known = [f.name for f in dataclasses.fields(ModelConfig)]
            raise ValueError(f"model: {e}; known fields: {known}") from None
        except ValueError as e:
            raise ValueError(f"model: {e}") from None


def _refuse_runtime_keys(model_values: dict[str, Any]) -> None:
    """Run files from before the `runtime` section held these under `model`: say where they went."""
    moved = sorted(set(model_values) & set(RUNTIME_FIELDS))
    if moved:
        raise ValueError(f"model.{moved[0]}: moved to runtime.{moved[0]} (it changes how the model "
                         f"computes, not its weights); write `runtime: {{{moved[0]}: "
                         f"{model_values[moved[0]]!r}}}` instead")


@dataclass
class BatchConfig:
    """global_batch_size = micro_batch_size x gradient accumulation steps x data-parallel ranks; the
    accumulation steps are derived from the number of ranks at launch (a size that does not divide
    is an error then)."""

    seq_length: int = 64
    """tokens per sample (each sample holds seq_length + 1 tokens: inputs and shifted labels)"""
    micro_batch_size: int = 4
    """samples per rank per forward/backward"""
    global_batch_size: int = 8
    """samples per optimizer step, all ranks together"""

    def __post_init__(self) -> None:
        for name in ("seq_length", "micro_batch_size", "global_batch_size"):
            _positive_int("batch", name, getattr(self, name))
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"batch.global_batch_size ({self.global_batch_size}) must be a multiple of "
                             f"batch.micro_batch_size ({self.micro_batch_size})")

    def gradient_accumulation_steps(self, data_parallel_size: int) -> int:
        """Micro-batches per rank per optimizer step; raises if the sizes do not divide."""
        per_step = self.micro_batch_size * data_parallel_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"batch.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"batch.micro_batch_size x data-parallel size ({self.micro_batch_size} x "
                f"{data_parallel_size} = {per_step}); change one of them or the number of ranks")
        return self.global_batch_size // per_step


@dataclass
class OptimizerConfig:
    """AdamW. Weight decay applies to matrices only (not norm weights, not biases)."""

    lr: float = 4e-4
    """peak learning rate (after warmup)"""
    min_lr: float = 4e-5
    """learning rate at the end of the decay"""
    beta1: float = 0.9
    """Adam beta1"""
    beta2: float = 0.95
    """Adam beta2"""
    eps: float = 1e-8
    """Adam epsilon"""
    weight_decay: float = 0.1
    """decoupled weight decay of the matrices"""
    grad_clip: float = 1.0
    """global gradient-norm clipping (0: none)"""
    cpu_adam: bool = True
    """with optimizer offload (ZeRO-Offload): DeepSpeed's fused CPUAdam (its first use compiles a small
    C++ op); false = torch AdamW on the offloaded fp32 states"""

    def __post_init__(self) -> None:
        for name in ("lr", "min_lr", "eps", "weight_decay", "grad_clip"):
            _non_negative("optimizer", name, getattr(self, name))
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr!r}")
        if self.min_lr > self.lr:
            raise ValueError(f"optimizer.min_lr ({self.min_lr}) must be <= optimizer.lr ({self.lr})")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"optimizer.{name} must be in [0, 1), got {value!r}")


@dataclass
class ScheduleConfig:
    """Linear warmup to optimizer.lr, then decay to optimizer.min_lr, constant after. The learning
    rate is a pure function of the step, so resuming needs no scheduler state."""

    train_steps: int = 100
    """optimizer steps of the whole run"""
    warmup_steps: int = 10
    """linear warmup; step 0 uses optimizer.lr / warmup_steps, never 0"""
    decay_steps: int | None = None
    """step at which min_lr is reached (null: train_steps)"""
    style: str = "cosine"
    """decay shape: cosine | linear | constant"""

    def __post_init__(self) -> None:
        _positive_int("schedule", "train_steps", self.train_steps)
        _positive_int("schedule", "warmup_steps", self.warmup_steps, allow_zero=True)
        if self.decay_steps is not None:
            _positive_int("schedule", "decay_steps", self.decay_steps)
            if self.decay_steps < self.warmup_steps:
                raise ValueError(f"schedule.decay_steps ({self.decay_steps}) must be >= "
                                 f"schedule.warmup_steps ({self.warmup_steps})")
        if self.style not in SCHEDULE_STYLES:
            raise ValueError(f"schedule.style must be one of {SCHEDULE_STYLES}, got {self.style!r}")


@dataclass
class CheckpointConfig:
    """A save writes `SAVE_DIR/step_NNNNNNNN/` on every rank (DeepSpeed shards +
    `rng_state_rank{R}.pt`), then, after all ranks finished, `megatiny.json` and finally `latest`
    (temp file + rename). A crash or SIGKILL mid-save leaves `latest` on the previous checkpoint;
    the half-written directory is removed by the next save of that step or by rotation
    (`megatiny.checkpoint.manager`).

    **Resuming** restores weights, optimizer state, step, consumed samples (the sampler restarts
    at that position) and each rank's RNG states: losses continue bitwise identically on CPU.
    **On another layout** (number of ranks, `parallel.tensor` / `pipeline` / `context`, ZeRO
    stage) it resumes too: a ZeRO-3 data-parallel checkpoint on another number of ranks through
    DeepSpeed's universal format (rank 0 converts it once to `SAVE_DIR/universal/step_N/`), every
    other change through megatiny's resharding (the full fp32 weights and Adam moments of the old
    layout, cut for each rank of the new one; `megatiny.checkpoint.reshard`). Kept: fp32 weights,
    Adam moments and step count, step, consumed samples (the data order is global, so no sample
    is repeated or skipped). Lost: RNG states of ranks whose role changed (they keep the seeded
    state; no model RNG is used in pretraining without dropout) and bitwise reproducibility
    (reduction order changes; fp32 losses agree within 1e-5). A checkpoint whose model config
    differs from the run's is refused."""

    save_dir: str | None = None
    """checkpoint root; also holds `metrics.jsonl` and `tensorboard/` by default"""
    save_interval: int = 0
    """save every N steps (0: only at the end)"""
    keep_last: int = 0
    """keep the newest K complete checkpoints (0: all)"""
    resume: str = "auto"
    """`auto` (newest complete checkpoint in save_dir, else start fresh), `none`, or a root/tag path"""
    init_from: str | None = None
    """weights for continued pretraining (DeepSpeed root or tag, megatiny weights dir, or Hugging Face
    Llama / Qwen2 / Mistral dir); used only when not resuming; optimizer and step start fresh. Without a
    `model` section the run takes its architecture; a `model` section must agree with it"""
    save_at_end: bool = True
    """save after the last step"""
    verify: str = "full"
    """checkpoint manifests (`megatiny.checkpoint.manifest`): `full` records each file's size and CRC-32
    and checks both before resuming (a damaged checkpoint is named and the previous one used); `sizes`
    records and checks sizes only; `off` checks nothing on resume (sizes are still recorded)"""

    def __post_init__(self) -> None:
        _positive_int("checkpoint", "save_interval", self.save_interval, allow_zero=True)
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"checkpoint.verify must be one of {VERIFY_MODES}, got {self.verify!r}")
        _positive_int("checkpoint", "keep_last", self.keep_last, allow_zero=True)
        if not isinstance(self.resume, str) or not self.resume:
            raise ValueError(f"checkpoint.resume must be 'auto', 'none' or a path, got {self.resume!r}")
        if self.save_interval and self.save_dir is None:
            raise ValueError("checkpoint.save_interval is set but checkpoint.save_dir is not")


SPIKE_POLICIES = ("none", "skip", "rewind")


@dataclass
class SpikeConfig:
    """Loss spikes (`megatiny.training.spikes`): with `policy: skip`, a step whose loss is more than
    `loss_z` standard deviations above the mean of the last `window` normal steps has its update
    dropped on every rank (parameters and optimizer state unchanged), and its step and global
    sample positions are recorded in the metrics and the checkpoint. With `policy: rewind` the
    run goes back to the newest checkpoint before the last `rewind_steps` batches (the spiking one
    included) and replays from there with those batches skipped.
    A gradient norm over `grad_norm_z` is recorded and kept out of the window (DeepSpeed computes
    it inside the update, too late to skip it). Judging starts after `min_history` steps."""

    policy: str = "none"
    """none | skip (drop the spiking step's update) | rewind (restart from an earlier checkpoint and
    skip the spiking step's batch and the `rewind_steps` - 1 before it)"""
    window: int = 128
    """normal steps whose loss and gradient norm make the mean and standard deviation"""
    loss_z: float = 6.0
    """a step's loss this many standard deviations above the window's mean is a spike"""
    grad_norm_z: float = 6.0
    """the same for the gradient norm (recorded and left out of the window, not skipped)"""
    min_history: int = 20
    """steps in the window before any step is judged"""
    rewind_steps: int = 1
    """policy rewind: the batches skipped on replay, ending with the spiking step's"""

    def __post_init__(self) -> None:
        if self.policy not in SPIKE_POLICIES:
            raise ValueError(f"spike.policy must be one of {SPIKE_POLICIES}, got {self.policy!r}")
        _positive_int("spike", "window", self.window)
        _positive_int("spike", "min_history", self.min_history)
        _positive_int("spike", "rewind_steps", self.rewind_steps)
        if self.min_history < 2 or self.min_history > self.window:
            raise ValueError(f"spike.min_history must be between 2 and spike.window ({self.window}), "
                             f"got {self.min_history}")
        for name in ("loss_z", "grad_norm_z"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"spike.{name} must be a number > 0, got {value!r}")


@dataclass
class LoggingConfig:
    """Console lines and TensorBoard scalars every `log_interval` steps; every step's metrics in
    `metrics_file` (rank 0)."""

    log_interval: int = 10
    """steps between console lines and TensorBoard scalars"""
    eval_interval: int = 0
    """validation every N steps and at the end (0: never)"""
    eval_iters: int = 4
    """validation micro-batches per data-parallel rank (the same validation samples each time; the
    tensor, context and pipeline ranks of a replica read the same ones)"""
    tensorboard: bool = True
    """write TensorBoard event files"""
    tensorboard_dir: str | None = None
    """default: SAVE_DIR/tensorboard"""
    metrics_file: str | None = None
    """JSON lines of every step's loss, lr, grad norm, consumed samples; default SAVE_DIR/metrics.jsonl"""
    peak_tflops: float | None = None
    """per-device peak for MFU; null = look the GPU up in `megatiny.training.flops.PEAK_BF16_TFLOPS`
    (on CPU MFU is omitted unless set)"""

    def __post_init__(self) -> None:
        _positive_int("logging", "log_interval", self.log_interval)
        _positive_int("logging", "eval_interval", self.eval_interval, allow_zero=True)
        _positive_int("logging", "eval_iters", self.eval_iters)
        if self.peak_tflops is not None and (isinstance(self.peak_tflops, bool) or self.peak_tflops <= 0):
            raise ValueError(f"logging.peak_tflops must be > 0 or null, got {self.peak_tflops!r}")


@dataclass
class DistributedConfig:
    """Shipped DeepSpeed files: `zero3.json` (default), `zero3_offload.json` (parameters and
    optimizer on CPU), `zero2.json`, `zero1.json`."""

    deepspeed_config: str = "ds_configs/zero3.json"
    """ZeRO stage, offload, buckets. It must NOT set `train_batch_size`, `train_micro_batch_size_per_gpu`,
    `gradient_accumulation_steps`, `optimizer`, `scheduler`, `gradient_clipping`, `bf16`/`bfloat16`,
    `amp` or `fp16.enabled`: those come from the run config (precision from `runtime.precision`), and
    a DeepSpeed file that sets them is refused. Its `fp16` section may keep loss-scaling keys
    (`initial_scale_power`, `loss_scale_window`, ...), used when fp16 is chosen"""
    backend: str = "auto"
    """auto (nccl with CUDA, gloo otherwise) | nccl | gloo"""
    timeout_s: float = 600.0
    """torch.distributed collective timeout: a dead peer is noticed after this long (use e.g. 30 to
    fail fast; saving and universal conversion must fit in it)"""
    master_port: int = 29500
    """rendezvous port for `mpirun` launches (the deepspeed launcher passes its own; plain `python`
    uses `$MASTER_PORT` or a free port, picked at random from `$MEGATINY_PORTS` (`LOW-HIGH`) or else
    from 20000 to just below the kernel's ephemeral range, where outgoing connections cannot take it
    before the rendezvous binds it)"""

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"distributed.backend must be auto, nccl or gloo, got {self.backend!r}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                or self.timeout_s <= 0:
            raise ValueError(f"distributed.timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        _positive_int("distributed", "master_port", self.master_port)


@dataclass
class RuntimeConfig:
    """Choices that change how a run computes, not the weights it learns: a checkpoint made with
    one setting resumes with another.

    | hardware | `precision: auto` gives | why |
    |---|---|---|
    | CUDA GPU with bf16 (A100, H100, RTX 30xx and newer) | bf16 | tensor cores, no loss scaling |
    | CUDA GPU without bf16 (V100, T4) | fp16 | with DeepSpeed's dynamic loss scaling |
    | CPU with native bf16 (`avx512_bf16`/`amx_bf16` flag; Arm `bf16`) | bf16 | in hardware (4.5x fp32 \
on an AVX512-BF16 EPYC) |
    | any other CPU (AVX2 only) | fp32 | PyTorch emulates bf16: a 512x512 matmul ~40-70x slower, \
training ~7x |

    The start-up line says which precision was chosen and why, e.g. `precision fp32 (auto: CPU
    without native bf16 (no avx512_bf16/amx_bf16 CPU flag); ...)`, and each checkpoint's
    `megatiny.json` records it (`train_state.world.precision`). Explicit `bf16` on a CPU without
    native bf16 still runs, with a warning that it is emulated; `fp16` on a CPU and `bf16` on a
    GPU without bf16 are refused. A CPU whose oneDNN is capped below bf16
    (`ONEDNN_MAX_CPU_ISA=AVX2`) counts as one without native bf16: that is also how to make a bf16
    machine behave like an AVX2-only one. Evaluation, generation, perplexity and the benchmarks
    take `--dtype auto` by the same rule (`megatiny.precision`)."""

    precision: str = "auto"
    """auto | bf16 | fp16 | fp32 (see the table)"""
    attention_backend: str = "auto"
    """auto (the `flash-attn` package on CUDA bf16/fp16 when installed, else PyTorch SDPA) | flash_attn |
    sdpa | math (reference)"""
    activation_checkpointing: int = 0
    """recompute blocks in the backward pass: 0 none, 1 every block, k every k-th block"""
    compile: bool | str = False
    """torch.compile each transformer block: false | true | auto (auto is off for now: on CPU
    compiling costs a long first step and ran slower than eager; on GPU it stays off until
    measured, see docs/PERFORMANCE.md). Compiled kernels are cached in $TORCHINDUCTOR_CACHE_DIR
    (default ~/.cache/megatiny/torchinductor) so a rerun or resume of the same config reuses them"""
    compile_backend: str = "inductor"
    """torch.compile's backend for `compile`: inductor (generated kernels) | aot_eager (the same
    Dynamo and AOTAutograd tracing, forward and backward, run with eager kernels: no code generated;
    to tell a tracing problem, e.g. graph breaks or recompiles, from an Inductor one)"""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"runtime.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not (isinstance(self.compile, bool) or self.compile == "auto"):
            raise ValueError(f"runtime.compile must be false, true or auto, got {self.compile!r}")
        try:
            self.model_runtime()
        except ValueError as e:
            raise ValueError(f"runtime.{e}") from None

    def model_runtime(self) -> ModelRuntime:
        return ModelRuntime(attention_backend=self.attention_backend,
                            activation_checkpointing=self.activation_checkpointing,
                            compile=self.compile is True,  # auto: off until GPU figures show a gain
                            compile_backend=self.compile_backend)


@dataclass
class ParallelConfig:
    """Model parallelism (`docs/PARALLELISM.md`). The data-parallel size is what is left:
    ranks / (tensor x pipeline x context); `batch.global_batch_size` counts whole sequences and is
    split over the data-parallel ranks only (the tensor and context ranks of one replica read the
    same samples; context ranks then take their slice of each sequence). Checkpoints of any
    layout resume on any other (see `checkpoint`)."""

    tensor: int = 1
    """Megatron tensor parallelism: ranks that split every layer (must divide the model's
    `num_query_groups`, `ffn_hidden_size` and `vocab_size`)"""
    pipeline: int = 1
    """pipeline stages (DeepSpeed's pipeline engine, 1F1B over the accumulation micro-batches);
    needs ZeRO stage <= 1, `nan_policy: stop`, untied embeddings and no context parallelism"""
    context: int = 1
    """DeepSpeed-Ulysses context parallelism: ranks that split every sequence (must divide
    `batch.seq_length` and the kv groups per tensor rank)"""
    sequence_parallel: bool = False
    """Megatron sequence parallelism over the tensor ranks (needs tensor > 1; `batch.seq_length` /
    context must divide by tensor)"""

    def __post_init__(self) -> None:
        if not self._is_default():  # (the default needs no check, nor torch imported)
            self._sizes_only()  # validates the fields, naming them

    def _is_default(self) -> bool:
        sizes = (self.tensor, self.pipeline, self.context)
        return self.sequence_parallel is False and all(type(v) is int and v == 1 for v in sizes)

    def _sizes_only(self) -> ParallelLayout:
        """The layout with one data-parallel replica (for checks that do not need the world size)."""
        from megatiny.parallel.state import ParallelLayout  # torch: imported when a config is checked

        return ParallelLayout(tensor=self.tensor, pipeline=self.pipeline, context=self.context,
                              sequence_parallel=self.sequence_parallel)

    def layout(self, world_size: int) -> ParallelLayout:
        """The layout of a run on `world_size` ranks (ValueError when the sizes do not divide it)."""
        from megatiny.parallel.state import ParallelLayout

        return ParallelLayout.for_world(world_size, tensor=self.tensor, pipeline=self.pipeline,
                                        context=self.context, sequence_parallel=self.sequence_parallel)

    @property
    def model_parallel(self) -> bool:
        """True when the model itself is split (tensor, pipeline or context > 1)."""
        return self.tensor * self.pipeline * self.context > 1

    def check_model(self, config: ModelConfig, seq_length: int) -> None:
        """ValueError unless `config` and `seq_length` can be split this way (the checks that need
        neither the number of ranks nor the DeepSpeed file; `RunConfig.validate` does the rest)."""
        if self._is_default():
            return
        layout = self._sizes_only()
        check_tensor_parallel(config, layout)
        check_context_parallel(config, layout)
        check_sequence_split(layout, seq_length)
        check_pipeline_model(config, layout)


@dataclass
class RunConfig:
    """Everything a training run needs."""

    model: ModelSection = field(default_factory=ModelSection)
    """the architecture (see `model` below)"""
    tokenizer: str | None = None
    """tokenizer path (sentencepiece `.model`, HF dir or `tokenizer.json`); recorded in each
    checkpoint's `megatiny.json`"""
    data: DataConfig | None = None
    """the training data (see `data` below); null only for runs that read no data (benchmarks)"""
    batch: BatchConfig = field(default_factory=BatchConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    seed: int = 1234
    """model init (identical on every rank) and dataset shuffling"""
    nan_policy: str = "skip"
    """non-finite loss: `skip` drops that micro-batch on every rank (a step with no finite micro-batch
    is taken with LR 0: parameters unchanged, Adam moments decay one step); `stop` exits with status 1
    naming the step and micro-batch"""

    def __post_init__(self) -> None:
        _positive_int("run", "seed", self.seed, allow_zero=True)
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        model_config = self.model.build()
        if self.batch.seq_length > model_config.max_position_embeddings:
            raise ValueError(f"batch.seq_length ({self.batch.seq_length}) exceeds the model's "
                             f"max_position_embeddings ({model_config.max_position_embeddings})")
        self.parallel.check_model(model_config, self.batch.seq_length)
        if self.data is not None and not isinstance(self.data, DataConfig):
            raise ValueError(f"data must be a DataConfig, got {type(self.data).__name__}")

    def model_config(self) -> ModelConfig:
        return self.model.build()

    def validate(self, world_size: int) -> RunPlan:
        """The checks of a run on `world_size` ranks that construction could not make (they need the
        number of ranks or read files): the layout divides the ranks, training data is given (and its
        sidecars' token ids fit the model's vocabulary, where they are readable), the DeepSpeed file
        exists and leaves to the run config what it owns, a pipeline runs under ZeRO stage <= 1 with
        `nan_policy: stop`, and the batch divides over the data-parallel ranks. Pure and the same on
        every rank: `train` calls it before any process group starts, `megatiny train --dry-run` on
        its own. ValueError (FileNotFoundError for a missing file) naming the field."""
        layout = self.parallel.layout(world_size)
        self._check_data()
        source = self.distributed.deepspeed_config
        eod_token_id = None
        if self.data.document_masking:  # (torch is imported only then)
            from megatiny.data.document_mask import resolve_eod_token_id

            eod_token_id = resolve_eod_token_id(self.data)
        return self.plan(layout, read_ds_file(source), source, eod_token_id=eod_token_id)

    def plan(self, layout: ParallelLayout, ds_file: dict[str, Any], source: str = "deepspeed config",
             eod_token_id: int | None = None) -> RunPlan:
        """The part of `validate` that reads no file: the run on `layout` (from
        `self.parallel.layout`) with DeepSpeed file contents `ds_file` (named `source` in errors).
        The ZeRO stage and the accumulation steps are derived here, once, and the document options
        (`data.reset_attention_mask` ...) with their EOD id (`data.eod_token_id`, else
        `eod_token_id`: the one `validate` read from the datasets' sidecars)."""
        masking = self._document_masking(eod_token_id)
        check_ds_file(ds_file, source)
        stage = zero_stage(ds_file)
        check_pipeline_zero_stage(layout, stage)
        if layout.pipeline > 1 and self.spike.policy != "none":
            raise ValueError(f"spike.policy: {self.spike.policy} needs the loss before the update; "
                             "DeepSpeed's pipeline engine (parallel.pipeline > 1) applies it first: set "
                             "spike.policy: none")
        if self.spike.policy == "rewind" and not self.checkpoint.save_interval:
            raise ValueError("spike.policy: rewind restarts from a checkpoint before the spike: set "
                             "checkpoint.save_dir and checkpoint.save_interval")
        if layout.pipeline > 1 and self.nan_policy != "stop":
            raise ValueError("parallel.pipeline > 1 needs nan_policy: stop (DeepSpeed's pipeline engine "
                             "applies the step before the loss is known, so a micro-batch cannot be "
                             "skipped); set nan_policy: stop")
        accumulation = self.batch.gradient_accumulation_steps(layout.data)
        return RunPlan(layout=layout, ds_file=ds_file, zero_stage=stage,
                       gradient_accumulation_steps=accumulation, document_masking=masking)

    def _document_masking(self, eod_token_id: int | None) -> DocumentMasking | None:
        if self.data is None or not self.data.document_masking:
            return None
        from megatiny.data.document_mask import DocumentMasking

        return DocumentMasking.from_data_config(self.data, eod_token_id)

    def _check_data(self) -> None:
        """A run without data, or data tokenized with a larger vocabulary than the model's, fails."""
        from megatiny.data.sidecar import check_data_vocab

        if self.data is None:
            raise ValueError("data: no training data; set data.data_path (e.g. '0.7 PREFIX_A 0.3 PREFIX_B') "
                             "or data.train_data_path")
        check_data_vocab(self.data, self.model_config().vocab_size)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = {"preset": self.model.preset, **self.model.overrides}
        out["data"] = self.data.to_dict() if self.data is not None else {}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from a nested mapping; unknown keys raise ValueError naming them and `source`."""
        values = dict(values)
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(sections))
        if unknown:
            raise ValueError(f"{source}: unknown top-level key(s) {unknown}; known: {sorted(sections)}")
        kwargs: dict[str, Any] = {}
        init_from = (values.get("checkpoint") or {}).get("init_from") \
            if isinstance(values.get("checkpoint"), dict) else None
        architecture = _init_from_architecture(init_from, source)
        if init_from is not None and not values.get("model"):
            if architecture is None:
                raise ValueError(f"{source}: checkpoint.init_from={init_from} is not a readable checkpoint "
                                 "or model directory, and without a model section the run's architecture "
                                 "comes from it; fix the path or add a model section")
            values["model"] = {"preset": None, **architecture.to_dict()}
        for name, value in values.items():
            if name == "model":
                kwargs[name] = _model_section(value, source)
                if architecture is not None:
                    _check_init_from_architecture(kwargs[name], architecture, init_from, source)
            elif name == "data":
                kwargs[name] = _data_section(value, source)
            elif name in _SECTION_TYPES:
                kwargs[name] = _section(_SECTION_TYPES[name], name, value, source)
            else:
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


@dataclass(frozen=True)
class RunPlan:
    """What `RunConfig.validate` resolved for a number of ranks."""

    layout: ParallelLayout
    """the parallel sizes, data-parallel size included"""
    ds_file: dict[str, Any]
    """the DeepSpeed file's contents (checked)"""
    zero_stage: int
    """its ZeRO stage"""
    gradient_accumulation_steps: int
    """micro-batches per data-parallel rank per optimizer step"""
    document_masking: DocumentMasking | None = None
    """the data's document options with their resolved EOD id (None: all off)"""


_SECTION_TYPES = {"batch": BatchConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
                  "checkpoint": CheckpointConfig, "logging": LoggingConfig,
                  "distributed": DistributedConfig, "runtime": RuntimeConfig,
                  "parallel": ParallelConfig, "spike": SpikeConfig}


def _section(section_type: type, name: str, value: Any, source: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: section '{name}' must be a mapping, got {value!r}")
    known = {f.name for f in dataclasses.fields(section_type)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {[f'{name}.{k}' for k in unknown]}; "
                         f"known keys of '{name}': {sorted(known)}")
    try:
        return section_type(**value)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _data_section(value: Any, source: str) -> DataConfig | None:
    """The data section parsed once, when the config is read (empty: a run without data)."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{source}: data must be a mapping of DataConfig fields, got {type(value).__name__}")
    try:
        return DataConfig.from_dict(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: data: {e}") from None


def _init_from_architecture(init_from: Any, source: str) -> ModelConfig | None:
    """The ModelConfig stored at `checkpoint.init_from` (an HF config.json, a megatiny.json), or
    None when there is no such readable directory (its absence is reported when the run loads it).
    An architecture megatiny cannot represent (OLMo-2, Gemma, yarn RoPE, ...) raises here, naming
    the field and value, before any process group or engine starts."""
    if not isinstance(init_from, str) or not Path(init_from).is_dir():
        return None
    from megatiny.checkpoint.sources import open_weights  # torch: only for runs that init from weights

    try:
        return open_weights(init_from).config
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"{source}: checkpoint.init_from: {e}") from None


def _check_init_from_architecture(section: ModelSection, architecture: ModelConfig, init_from: str,
                                  source: str) -> None:
    differences = architecture_differences(section.build(), architecture)
    if differences:
        raise ValueError(f"{source}: the model section differs from the architecture of "
                         f"checkpoint.init_from={init_from} in {'; '.join(differences)} (model section != "
                         "checkpoint); remove the model section to take the checkpoint's architecture")


def _model_section(value: Any, source: str) -> ModelSection:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: section 'model' must be a mapping, got {value!r}")
    value = dict(value)
    _refuse_runtime_keys(value)
    if value and "preset" not in value:
        raise ValueError(f"{source}: model.preset is required when the model section sets fields "
                         f"({sorted(value)}); name one of {sorted(PRESETS)} (or preset: null and give every "
                         "ModelConfig field)")
    preset = value.pop("preset", "tiny-test")
    try:
        return ModelSection(preset=preset, overrides=value)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], parsed YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r}: expected KEY=VALUE with a dotted key, "
                         "e.g. batch.micro_batch_size=4")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the nested mapping `values` with dotted `key=value` overrides applied."""
    out = json.loads(json.dumps(values))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: '{key}' is not a section")
            node = child
        node[keys[-1]] = value
    return out


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON run file into a mapping, with errors naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run config file not found")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections")
    return values


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config file (or defaults when `path` is None) and apply `key=value` overrides."""
    values = read_config_file(path) if path is not None else {}
    values = apply_overrides(values, overrides or [])
    return RunConfig.from_dict(values, source=str(path) if path is not None else "config")


# ---------------------------------------------------------------- the DeepSpeed config JSON
# DeepSpeed config keys that the run config owns, and where to set them instead.
OWNED_KEYS = {
    "train_batch_size": "batch.global_batch_size",
    "train_micro_batch_size_per_gpu": "batch.micro_batch_size",
    "gradient_accumulation_steps": "batch.global_batch_size / (batch.micro_batch_size x ranks)",
    "optimizer": "the optimizer section",
    "scheduler": "the schedule section",
    "gradient_clipping": "optimizer.grad_clip",
    "bf16": "runtime.precision",
    "bfloat16": "runtime.precision",
    "amp": "runtime.precision",
}

# Dynamic loss scaling for fp16 (DeepSpeed's defaults, written out); a DeepSpeed file's "fp16"
# section may tune these keys, but not "enabled", which runtime.precision decides.
FP16_LOSS_SCALING = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                     "hysteresis": 2, "min_loss_scale": 1}


def read_ds_file(path: str | os.PathLike) -> dict[str, Any]:
    """The DeepSpeed JSON file `distributed.deepspeed_config` names, as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"distributed.deepspeed_config: {path} not found "
                                "(see ds_configs/ for examples)")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: distributed.deepspeed_config must hold a JSON object")
    return values


def check_ds_file(ds_file: dict[str, Any], source: str = "deepspeed config") -> None:
    """ValueError when `ds_file` sets a key the run config owns (the message says where to set it)."""
    for key, ours in OWNED_KEYS.items():
        if key in ds_file:
            raise ValueError(f"{source}: sets '{key}', which megatiny takes from the run config "
                             f"({ours}); remove it from the DeepSpeed file")
    fp16 = ds_file.get("fp16", {})
    if not isinstance(fp16, dict) or "enabled" in fp16:
        raise ValueError(f"{source}: sets 'fp16.enabled', which megatiny takes from the run config "
                         "(runtime.precision); keep only loss-scaling keys in its 'fp16' section")


def zero_stage(ds_config: dict[str, Any]) -> int:
    """The ZeRO stage of a DeepSpeed config (0 when it has no `zero_optimization`)."""
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds_config: dict[str, Any]) -> bool:
    """Whether the optimizer states live on the CPU (or NVMe) under ZeRO-Offload."""
    device = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device in ("cpu", "nvme")


def run_precision(run: RunConfig, device: Any) -> Precision:
    """runtime.precision resolved for `device` (a torch.device; the same answer on every rank of
    one host kind): the one place a run's precision is decided."""
    return resolve_precision(run.runtime.precision, detect_hardware(device))


def precision_section(precision: Precision, ds_file: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed keys that enable `precision` (none for fp32)."""
    if precision.name == "bf16":
        return {"bf16": {"enabled": True}}
    if precision.name == "fp16":
        return {"fp16": {**FP16_LOSS_SCALING, **ds_file.get("fp16", {}), "enabled": True}}
    return {}


def build_ds_config(run: RunConfig, ds_file: dict[str, Any], data_parallel_size: int,
                    precision: Precision, *, source: str = "deepspeed config",
                    load_universal: bool = False, context_parallel_size: int = 1) -> dict[str, Any]:
    """The DeepSpeed config for this run: `ds_file` plus what the run config owns (batch sizes,
    clipping, and `precision`, the resolved runtime.precision).

    `data_parallel_size` is the number of replicas reading different samples. Context ranks appear
    to DeepSpeed as data-parallel ranks (`megatiny.parallel.state.DeepSpeedMPU`), so its
    `train_batch_size` counts micro_batch x accumulation x data x context "samples" (sequence
    slices): `batch.global_batch_size` x `context_parallel_size`.

    Raises ValueError when `ds_file` sets a key owned by the run config (the message says where
    to set it instead) or the batch sizes do not divide (`RunConfig.validate` refuses both first;
    these are the same checks guarding direct callers).
    """
    check_ds_file(ds_file, source)
    accumulation = run.batch.gradient_accumulation_steps(data_parallel_size)
    config = {k: v for k, v in json.loads(json.dumps(ds_file)).items() if k != "fp16"}
    config.update(precision_section(precision, ds_file))
    config.update({
        "train_batch_size": run.batch.global_batch_size * context_parallel_size,
        "train_micro_batch_size_per_gpu": run.batch.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": run.optimizer.grad_clip,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,  # our own logging reports progress
    })
    if offloads_optimizer(config) and not run.optimizer.cpu_adam:
        config["zero_force_ds_cpu_optimizer"] = False
    checkpoint = dict(config.get("checkpoint", {}))
    checkpoint["load_universal"] = load_universal
    config["checkpoint"] = checkpoint
    return config
