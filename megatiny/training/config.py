"""The training run configuration: typed sections, loaded from YAML/JSON plus `key=value` overrides.

A run file looks like (every section optional except what the run needs)::

    model: {preset: tiny-test, activation_checkpointing: 1}   # preset + ModelConfig field overrides
    tokenizer: /data/tok.model
    data: {data_path: "0.7 /data/a_text_document 0.3 /data/b_text_document", split: "969,30,1"}
    batch: {seq_length: 2048, micro_batch_size: 8, global_batch_size: 1024}
    optimizer: {lr: 4.0e-4, min_lr: 4.0e-5, weight_decay: 0.1, grad_clip: 1.0}
    schedule: {train_steps: 1430512, warmup_steps: 2000, style: cosine}
    checkpoint: {save_dir: runs/tl, save_interval: 2000, keep_last: 3, resume: auto}
    logging: {log_interval: 10, eval_interval: 2000, eval_iters: 10}
    distributed: {deepspeed_config: ds_configs/zero3.json, timeout_s: 600}
    runtime: {precision: auto}       # auto | bf16 | fp16 | fp32 (see megatiny.precision)

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
from typing import Any

import yaml

from megatiny.model.config import PRESETS, ModelConfig, get_preset
from megatiny.precision import PRECISIONS

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
    """`preset` names a `megatiny.model.config.PRESETS` entry; `overrides` are ModelConfig fields."""

    preset: str | None = "tiny-test"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {self.preset!r}; choose one of {sorted(PRESETS)} "
                             "or set preset: null and give every model field explicitly")
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


@dataclass
class BatchConfig:
    """Tokens per sample = seq_length (the dataset returns seq_length + 1 tokens per sample).

    global_batch_size = micro_batch_size x gradient accumulation steps x data-parallel size; the
    accumulation steps are derived from the data-parallel size at launch (checked then).
    """

    seq_length: int = 64
    micro_batch_size: int = 4
    global_batch_size: int = 8

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
    """AdamW. Weight decay applies to matrices only (not norm weights, not biases).

    `cpu_adam`: with optimizer offload (ZeRO-Offload), use DeepSpeed's fused CPUAdam (fast; its
    first use compiles a small C++ op) instead of torch.optim.AdamW running on CPU tensors.
    """

    lr: float = 4e-4
    min_lr: float = 4e-5
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    cpu_adam: bool = True

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
    """Linear warmup over `warmup_steps` (step 0 uses optimizer.lr / warmup_steps, never 0) to
    optimizer.lr, then `style` decay to optimizer.min_lr at `decay_steps` (default: train_steps),
    constant after."""

    train_steps: int = 100
    warmup_steps: int = 10
    decay_steps: int | None = None
    style: str = "cosine"

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
    """`resume`: "auto" (newest complete checkpoint in save_dir if any), "none", or a path to a
    checkpoint root or tag dir. `init_from`: weights for continued pretraining (any path
    `megatiny.checkpoint.load_model` accepts), used only when not resuming; optimizer starts fresh.
    `keep_last`: number of complete checkpoints kept (0 = keep all)."""

    save_dir: str | None = None
    save_interval: int = 0
    keep_last: int = 0
    resume: str = "auto"
    init_from: str | None = None
    save_at_end: bool = True

    def __post_init__(self) -> None:
        _positive_int("checkpoint", "save_interval", self.save_interval, allow_zero=True)
        _positive_int("checkpoint", "keep_last", self.keep_last, allow_zero=True)
        if not isinstance(self.resume, str) or not self.resume:
            raise ValueError(f"checkpoint.resume must be 'auto', 'none' or a path, got {self.resume!r}")
        if self.save_interval and self.save_dir is None:
            raise ValueError("checkpoint.save_interval is set but checkpoint.save_dir is not")


@dataclass
class LoggingConfig:
    """`peak_tflops`: per-device peak for MFU; null = look the device up in the table (GPUs),
    on CPU MFU is omitted unless this is set. `tensorboard_dir` default: SAVE_DIR/tensorboard.
    `metrics_file`: JSON lines of every step's metrics (rank 0); default SAVE_DIR/metrics.jsonl."""

    log_interval: int = 10
    eval_interval: int = 0
    eval_iters: int = 4
    tensorboard: bool = True
    tensorboard_dir: str | None = None
    metrics_file: str | None = None
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        _positive_int("logging", "log_interval", self.log_interval)
        _positive_int("logging", "eval_interval", self.eval_interval, allow_zero=True)
        _positive_int("logging", "eval_iters", self.eval_iters)
        if self.peak_tflops is not None and (isinstance(self.peak_tflops, bool) or self.peak_tflops <= 0):
            raise ValueError(f"logging.peak_tflops must be > 0 or null, got {self.peak_tflops!r}")


@dataclass
class DistributedConfig:
    """`deepspeed_config`: a JSON file (see ds_configs/) with the ZeRO settings; batch sizes,
    precision, optimizer, scheduler and clipping come from this run config and must not be in it.
    `timeout_s`: torch.distributed collective timeout (a dead peer is noticed after this).
    `backend`: "auto" = nccl with CUDA, gloo otherwise. `master_port` is used by mpirun
    launches (the deepspeed launcher sets its own; a plain-python run of one rank takes $MASTER_PORT
    or a free port)."""

    deepspeed_config: str = "ds_configs/zero3.json"
    backend: str = "auto"
    timeout_s: float = 600.0
    master_port: int = 29500

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"distributed.backend must be auto, nccl or gloo, got {self.backend!r}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                or self.timeout_s <= 0:
            raise ValueError(f"distributed.timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        _positive_int("distributed", "master_port", self.master_port)


@dataclass
class RuntimeConfig:
    """Choices that change how a run computes, not the weights it learns.

    `precision`: auto | bf16 | fp16 | fp32. `auto` is bf16 on GPUs that support it, fp16 with
    DeepSpeed's dynamic loss scaling on older GPUs, bf16 on CPUs with native bf16 (AVX512-BF16 or
    AMX), fp32 on other CPUs (where PyTorch emulates bf16, many times slower). The start-up line
    says what was chosen and why; `megatiny.precision` has the rules.
    """

    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"runtime.precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass
class RunConfig:
    """Everything a training run needs. `data` is the data library's DataConfig fields."""

    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    batch: BatchConfig = field(default_factory=BatchConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 1234
    nan_policy: str = "skip"

    def __post_init__(self) -> None:
        _positive_int("run", "seed", self.seed, allow_zero=True)
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        model_config = self.model.build()
        if self.batch.seq_length > model_config.max_position_embeddings:
            raise ValueError(f"batch.seq_length ({self.batch.seq_length}) exceeds the model's "
                             f"max_position_embeddings ({model_config.max_position_embeddings})")
        if not isinstance(self.data, dict):
            raise ValueError(f"data must be a mapping of DataConfig fields, got {type(self.data).__name__}")
        if self.data:  # checked now, before any process group or engine exists (empty: benchmarks)
            from megatiny.data.config import DataConfig
            DataConfig.from_dict(self.data)

    def model_config(self) -> ModelConfig:
        return self.model.build()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = {"preset": self.model.preset, **self.model.overrides}
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
        for name, value in values.items():
            if name == "model":
                kwargs[name] = _model_section(value, source)
            elif name in _SECTION_TYPES:
                kwargs[name] = _section(_SECTION_TYPES[name], name, value, source)
            else:
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


_SECTION_TYPES = {"batch": BatchConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
                  "checkpoint": CheckpointConfig, "logging": LoggingConfig,
                  "distributed": DistributedConfig, "runtime": RuntimeConfig}


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


def _model_section(value: Any, source: str) -> ModelSection:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: section 'model' must be a mapping, got {value!r}")
    value = dict(value)
    preset = value.pop("preset", "tiny-test" if not value else None)
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
