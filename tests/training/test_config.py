"""Run config loading, overrides and validation; DeepSpeed config construction; schedule; MFU."""

import pytest

from megatiny.data.config import DataConfig
from megatiny.model.config import ModelRuntime, get_preset
from megatiny.precision import Precision
from megatiny.training.config import BatchConfig, RunConfig, apply_overrides, build_ds_config, load_config
from megatiny.training.engine import param_groups
from megatiny.training.flops import peak_tflops_for, throughput
from megatiny.training.schedule import learning_rate
from tests.helpers import REPO_ROOT

BF16, FP32, FP16 = (Precision(name, "test") for name in ("bf16", "fp32", "fp16"))

YAML = """
model:
  preset: nano-2m
runtime: {activation_checkpointing: 1, attention_backend: sdpa}
data: {data_path: "0.7 /d/a 0.3 /d/b", split: "969,30,1"}
batch: {seq_length: 128, micro_batch_size: 4, global_batch_size: 64}
optimizer: {lr: 4e-4, min_lr: 4e-5}
schedule: {train_steps: 1000, warmup_steps: 100}
"""


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    run = load_config(path, ["batch.micro_batch_size=8", "optimizer.lr=1e-3", "model.num_layers=2",
                             "checkpoint.save_dir=/tmp/x", "logging.peak_tflops=100"])
    assert run.batch.micro_batch_size == 8 and run.batch.global_batch_size == 64
    assert run.optimizer.lr == 1e-3 and run.optimizer.min_lr == 4e-5  # "4e-5" is a float, not a string
    model = run.model_config()
    assert model == get_preset("nano-2m", num_layers=2)
    assert run.runtime.model_runtime() == ModelRuntime(attention_backend="sdpa", activation_checkpointing=1)
    assert isinstance(run.data, DataConfig) and run.data.data_path == "0.7 /d/a 0.3 /d/b"
    assert run.checkpoint.save_dir == "/tmp/x" and run.logging.peak_tflops == 100
    # round trip through to_dict
    assert RunConfig.from_dict(run.to_dict()).to_dict() == run.to_dict()


def test_json_config_and_defaults(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"schedule": {"train_steps": 5, "warmup_steps": 0}}')
    run = load_config(path)
    assert run.schedule.train_steps == 5 and run.model.preset == "tiny-test"


@pytest.mark.parametrize("override, field", [
    ("batch.micro_batch_size=0", "batch.micro_batch_size"),
    ("batch.global_batch_size=7", "batch.global_batch_size"),
    ("optimizer.beta2=1.5", "optimizer.beta2"),
    ("optimizer.min_lr=1.0", "optimizer.min_lr"),
    ("schedule.style=step", "schedule.style"),
    ("checkpoint.keep_last=-1", "checkpoint.keep_last"),
    ("distributed.timeout_s=0", "distributed.timeout_s"),
    ("batch.sizes=3", "batch.sizes"),
    ("model.preset=tiny-test model.hidden_size=100", "hidden_size"),
    ("model.preset=giant", "model.preset"),
    ("nan_policy=ignore", "nan_policy"),
    ("batch.seq_length=4096", "batch.seq_length"),
    ("trainer.x=1", "trainer"),
])
def test_validation_errors_name_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config(None, override.split())


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch:\n  seq_length: 4\n  micro: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:\d+"):
        load_config(path)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["no_equals_sign"])


def test_gradient_accumulation_is_checked():
    batch = BatchConfig(seq_length=16, micro_batch_size=4, global_batch_size=64)
    assert batch.gradient_accumulation_steps(2) == 8
    with pytest.raises(ValueError, match="global_batch_size"):
        batch.gradient_accumulation_steps(3)


def test_ds_config_is_built_and_contradictions_refused():
    run = load_config(None, ["batch.micro_batch_size=2", "batch.global_batch_size=16",
                             "optimizer.grad_clip=0.5"])
    ds_file = {"zero_optimization": {"stage": 3}}
    config = build_ds_config(run, ds_file, data_parallel_size=4, precision=BF16)
    assert config["train_batch_size"] == 16
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 0.5 and config["zero_optimization"]["stage"] == 3
    assert "optimizer" not in config and "scheduler" not in config
    for key in ("train_batch_size", "optimizer", "scheduler", "gradient_clipping",
                "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        with pytest.raises(ValueError, match=f"sets '{key}'"):
            build_ds_config(run, {**ds_file, key: 1}, data_parallel_size=4, precision=BF16,
                            source="my_ds.json")
    with pytest.raises(ValueError, match="global_batch_size"):
        build_ds_config(run, ds_file, data_parallel_size=3, precision=BF16)


def test_shipped_ds_configs_are_accepted():
    import json
    run = load_config(None)
    for name in ("zero3", "zero3_offload", "zero2", "zero1"):
        ds_file = json.loads((REPO_ROOT / "ds_configs" / f"{name}.json").read_text())
        for precision in (BF16, FP32, FP16):
            build_ds_config(run, ds_file, data_parallel_size=1, precision=precision)


def test_ds_config_precision_comes_from_the_run_config():
    run = load_config(None)
    ds_file = {"zero_optimization": {"stage": 2}, "fp16": {"initial_scale_power": 12}}
    bf16 = build_ds_config(run, ds_file, 1, BF16)
    assert bf16["bf16"] == {"enabled": True} and "fp16" not in bf16
    fp32 = build_ds_config(run, ds_file, 1, FP32)
    assert "bf16" not in fp32 and "fp16" not in fp32
    fp16 = build_ds_config(run, ds_file, 1, FP16)["fp16"]
    assert fp16["enabled"] is True and fp16["loss_scale"] == 0  # dynamic loss scaling
    assert fp16["initial_scale_power"] == 12  # the file may tune loss scaling
    # A DeepSpeed file that still turns a precision on conflicts loudly, naming where it belongs.
    for key, value in (("bf16", {"enabled": True}), ("bfloat16", {"enabled": False}),
                       ("fp16", {"enabled": True})):
        with pytest.raises(ValueError, match=rf"my_ds.json: sets '{key}.*runtime.precision"):
            build_ds_config(run, {**ds_file, key: value}, 1, FP32, source="my_ds.json")
    with pytest.raises(ValueError, match="runtime.precision must be one of"):
        load_config(None, ["runtime.precision=float8"])
    assert load_config(None).runtime.precision == "auto"


def test_tinyllama_schedule():
    run = load_config(REPO_ROOT / "examples" / "tinyllama_1.1b.yaml")
    opt, sched = run.optimizer, run.schedule
    assert (opt.lr, opt.min_lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay, opt.grad_clip) == \
        (4e-4, 4e-5, 0.9, 0.95, 1e-8, 0.1, 1.0)
    assert sched.warmup_steps == 2000 and run.batch.global_batch_size * run.batch.seq_length == 1024 * 2048
    assert learning_rate(0, opt, sched) == pytest.approx(4e-4 / 2000)
    assert learning_rate(1999, opt, sched) == pytest.approx(4e-4)
    mid = (2000 + sched.train_steps) // 2
    assert learning_rate(mid, opt, sched) == pytest.approx(2.2e-4, rel=1e-3)
    assert learning_rate(sched.train_steps - 1, opt, sched) == pytest.approx(4e-5, rel=1e-3)
    assert learning_rate(sched.train_steps + 10, opt, sched) == 4e-5
    lrs = [learning_rate(s, opt, sched) for s in range(2000, sched.train_steps, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_mfu_against_design_figures():
    flops = get_preset("tinyllama-1.1b").flops_per_token(2048)
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989 and peak_tflops_for("NVIDIA H200") == 989
    assert peak_tflops_for("cpu") is None and peak_tflops_for("cpu", override=2.0) == 2.0
    # TinyLlama: 24k tokens/s per A100 is ~56% MFU by this formula
    perf = throughput(24000 * 8, 1.0, flops, num_devices=8, peak_tflops=312)
    assert perf["tokens_per_s_per_device"] == 24000
    assert perf["mfu"] == pytest.approx(0.56, abs=0.01)
    assert "mfu" not in throughput(100, 1.0, flops, 1, None)


def test_no_weight_decay_on_norms():
    from megatiny.model import GPT
    model = GPT(get_preset("tiny-test"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all("norm" in names[id(p)] for p in no_decay["params"]) and no_decay["params"]
    assert all(p.dim() == 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_data_section_is_validated_at_load(tmp_path):
    """A typo under `data:` is an error naming the field when the config is read, not a TypeError
    once the engine has started."""
    path = tmp_path / "run.yaml"
    path.write_text(YAML.replace('split: "969,30,1"', 'splt: "969,30,1"'))
    with pytest.raises(ValueError, match="splt"):
        load_config(path)
    with pytest.raises(ValueError, match="data_path"):
        load_config(None, ["data.split=1,1,1"])  # no data_path: no training data


def test_runtime_choices_left_the_model_section(tmp_path):
    """A run file of the layout before runtime.attention_backend: a clear error naming the new key."""
    for key, value in (("attention_backend", "math"), ("activation_checkpointing", 1)):
        with pytest.raises(ValueError, match=rf"model\.{key}: moved to runtime\.{key}.*runtime: {{{key}: "):
            load_config(None, [f"model.{key}={value}"])
    with pytest.raises(ValueError, match=r"runtime\.attention_backend must be one of"):
        load_config(None, ["runtime.attention_backend=xformers"])
    with pytest.raises(ValueError, match=r"runtime\.activation_checkpointing must be an integer >= 0"):
        load_config(None, ["runtime.activation_checkpointing=-1"])


def test_model_section_needs_a_preset():
    """Fields without a preset would silently start from TinyLlama's widths: refused."""
    with pytest.raises(ValueError, match="model.preset is required"):
        load_config(None, ["model.num_layers=2"])
    with pytest.raises(ValueError, match=r"preset is null, so every ModelConfig field must be given"):
        load_config(None, ["model.preset=null", "model.num_layers=2"])
    explicit = {"preset": None, **get_preset("nano-2m").to_dict()}
    assert RunConfig.from_dict({"model": explicit}).model_config() == get_preset("nano-2m")
    # a full section written before the family fields existed (family, kv_channels, ...) stays complete
    from megatiny.model.config import FAMILY_FIELDS
    before = {k: v for k, v in explicit.items() if k not in FAMILY_FIELDS}
    assert RunConfig.from_dict({"model": before}).model_config() == get_preset("nano-2m")
    assert load_config(None).model_config() == get_preset("tiny-test")  # no model section: the default


def test_parallel_section_is_validated_naming_the_fields():
    run = load_config(None, ["parallel.tensor=2", "parallel.sequence_parallel=true"])
    layout = run.parallel.layout(4)
    assert (layout.tensor, layout.context, layout.data, layout.sequence_parallel) == (2, 1, 2, True)
    assert load_config(None).parallel.layout(3).data == 3  # default: data parallelism alone
    refused = {
        "parallel.tensor=4": r"parallel.tensor \(4\) must divide ModelConfig.num_query_groups \(2\)",
        "parallel.tensor=0": "parallel.tensor must be a positive integer",
        "parallel.sequence_parallel=true": "needs parallel.tensor > 1",
        "parallel.context=3": r"parallel.context \(3\) must divide the key/value groups",
        "parallel.data=2": r"unknown key\(s\) \['parallel.data'\]",
    }
    for override, message in refused.items():
        with pytest.raises(ValueError, match=message):
            load_config(None, [override])
    with pytest.raises(ValueError, match=r"batch.seq_length \(63\) must be divisible by parallel.context"):
        load_config(None, ["parallel.context=2", "batch.seq_length=63"])
    with pytest.raises(ValueError, match=r"seq_length / parallel.context \(31\) must be divisible by "
                                         r"parallel.tensor \(2\)"):
        load_config(None, ["parallel.context=2", "parallel.tensor=2", "model.preset=tiny-test",
                           "model.num_query_groups=4",
                           "model.num_attention_heads=8", "parallel.sequence_parallel=true",
                           "batch.seq_length=62"])
    with pytest.raises(ValueError, match=r"world size 3 is not divisible by parallel.tensor"):
        run.parallel.layout(3)


def test_ds_batch_accounting_with_model_parallelism():
    """Tensor ranks do not count as replicas; context ranks count as DeepSpeed data ranks, so its
    train_batch_size is the global batch x context (see megatiny.parallel.state.DeepSpeedMPU)."""
    run = load_config(None, ["batch.micro_batch_size=2", "batch.global_batch_size=16"])
    config = build_ds_config(run, {}, data_parallel_size=2, precision=FP32, context_parallel_size=2)
    assert config["gradient_accumulation_steps"] == 4 and config["train_batch_size"] == 32
    assert config["train_micro_batch_size_per_gpu"] == 2


def test_runtime_compile_is_false_true_or_auto_and_auto_stays_off():
    for text, compiled in (("false", False), ("true", True), ("auto", False)):
        assert load_config(None, [f"runtime.compile={text}"]).runtime.model_runtime().compile is compiled
    for bad in ("1", "inductor", "[true]"):
        with pytest.raises(ValueError, match=r"runtime\.compile must be false, true or auto"):
            load_config(None, [f"runtime.compile={bad}"])


def test_runtime_compile_backend_is_inductor_or_aot_eager_and_reaches_the_model_runtime():
    assert load_config(None, []).runtime.model_runtime().compile_backend == "inductor"
    runtime = load_config(None, ["runtime.compile=true", "runtime.compile_backend=aot_eager"]).runtime
    assert runtime.model_runtime() == ModelRuntime(attention_backend="auto", compile=True,
                                                   compile_backend="aot_eager")
    for bad in ("eager", "Inductor", "true"):
        with pytest.raises(ValueError, match=r"runtime\.compile_backend must be one of"):
            load_config(None, [f"runtime.compile_backend={bad}"])
