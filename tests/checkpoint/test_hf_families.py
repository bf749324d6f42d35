"""Today's small open model families (Llama 3.2, SmolLM2, Qwen2.5, Mistral) against `transformers`.

Each family is a tiny random model built by transformers from that family's config dict (no
download), with the symmetry HF's init leaves broken: biases non-zero, norm weights 1 + noise,
q/k scaled up (peaky attention, so a wrong mask or rotation shows), sequences longer than the
sliding window and positions past llama3's `original_max_position_embeddings`.
"""
import json

import pytest
import torch
import transformers

from megatiny.checkpoint import export_hf, import_hf, load_model
from megatiny.checkpoint.hf import config_from_hf
from megatiny.model.generate import generate
from tests.checkpoint.test_hf_roundtrip import read_safetensors_dir

SEQ = 40  # > every window below, > llama3's original_max_position_embeddings (16)
SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

FAMILIES = {
    # Llama 3.2: llama3 rope scaling (positions past original 16), tied, explicit head_dim
    # (32 != 64 / 4), no BOS, an eos list.
    "llama3.2": dict(model_type="llama", **SMALL, head_dim=32, tie_word_embeddings=True,
                     rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=[1, 2],
                     rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16}),
    # SmolLM2: Llama architecture, tied, bos = eos = 0, theta 1e5.
    "smollm2": dict(model_type="llama", **SMALL, tie_word_embeddings=True, rms_norm_eps=1e-5,
                    bos_token_id=0, eos_token_id=0,
                    rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    # Qwen2.5: q/k/v bias (o none), tied, eps 1e-6, theta 1e6, no sliding window.
    "qwen2.5": dict(model_type="qwen2", **SMALL, tie_word_embeddings=True, rms_norm_eps=1e-6,
                    bos_token_id=None, eos_token_id=3, use_sliding_window=False,
                    sliding_window=None, max_window_layers=2,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # Qwen2 with its sliding rule: layers >= max_window_layers slide.
    "qwen2-sliding": dict(model_type="qwen2", **SMALL, tie_word_embeddings=False, rms_norm_eps=1e-6,
                          bos_token_id=None, eos_token_id=3, use_sliding_window=True,
                          sliding_window=7, max_window_layers=1,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # Linear RoPE scaling (position interpolation), untied, MHA.
    "llama-linear": dict(model_type="llama", **{**SMALL, "num_key_value_heads": 4}, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    # Mistral: a window (8) shorter than the sequence, on every layer.
    "mistral": dict(model_type="mistral", **SMALL, tie_word_embeddings=False, rms_norm_eps=1e-5,
                    bos_token_id=1, eos_token_id=2, sliding_window=8,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}
HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
# config.json keys that determine the computation or the tokens (compared on the round trip).
ARCHITECTURAL_KEYS = (
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
    "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window", "max_window_layers",
    "layer_types")


def inert(config: dict, key: str) -> bool:
    """Qwen2's max_window_layers has no effect without use_sliding_window (the export writes
    num_hidden_layers there; docs/MODELS.md)."""
    return key == "max_window_layers" and not config.get("use_sliding_window")


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def break_symmetry(model: torch.nn.Module, seed: int) -> None:
    """Biases ~ N(0, 0.3), norms 1 + N(0, 0.1), q/k x 4: what a converter bug cannot hide behind."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(".bias"):
                param.copy_(0.3 * noise)
            elif "norm" in name:
                param.copy_(1 + 0.1 * noise)
            elif "q_proj" in name or "k_proj" in name:
                param.mul_(4.0)


def build_hf(family: str, directory) -> transformers.PreTrainedModel:
    values = dict(FAMILIES[family])
    config = transformers.AutoConfig.for_model(**values)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    break_symmetry(model, seed=1)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{family: (HF dir, HF model)} built once for the module."""
    root = tmp_path_factory.mktemp("families")
    return {name: (root / name, build_hf(name, root / name)) for name in FAMILIES}


def tokens(vocab: int, length: int = SEQ, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_load_model_logits_equal_transformers(hf_dirs, family):
    directory, reference = hf_dirs[family]
    model, _ = load_model(directory)
    x = tokens(model.config.vocab_size)
    with torch.no_grad():
        ours, theirs = model(x), reference(x).logits
    difference = relative_difference(ours, theirs)
    print(f"{family}: load_model logits relative difference {difference:.2e}")
    assert difference < 1e-5


@pytest.mark.parametrize("family", list(FAMILIES))
def test_round_trip_is_bit_exact_and_loads_in_its_own_class(hf_dirs, tmp_path, family):
    directory, reference = hf_dirs[family]
    import_hf(directory, tmp_path / "mt")
    export_hf(tmp_path / "mt", tmp_path / "hf2", dtype="float32", include_tokenizer=False)
    before, after = read_safetensors_dir(directory), read_safetensors_dir(tmp_path / "hf2")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    source = json.loads((directory / "config.json").read_text())
    exported = json.loads((tmp_path / "hf2" / "config.json").read_text())
    for key in ARCHITECTURAL_KEYS:
        if key in source and not inert(source, key):
            assert exported[key] == source[key], key
    generation = json.loads((tmp_path / "hf2" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == source["eos_token_id"]
    if (directory / "generation_config.json").is_file():  # the source's own file travels along
        assert generation == json.loads((directory / "generation_config.json").read_text())
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2", dtype=torch.float32)
    assert type(again).__name__ == HF_CLASS[source["model_type"]]
    x = tokens(source["vocab_size"])
    with torch.no_grad():
        assert torch.equal(again(x).logits, reference(x).logits)


@pytest.mark.parametrize("family", ["mistral", "qwen2-sliding", "llama3.2"])
def test_greedy_generation_past_the_window_equals_transformers(hf_dirs, family):
    directory, reference = hf_dirs[family]
    model, _ = load_model(directory)
    prompt = tokens(model.config.vocab_size, length=6, batch=1, seed=3)
    ours = generate(model, prompt, max_new_tokens=32)
    theirs = reference.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                pad_token_id=0)
    assert ours.shape[1] == prompt.shape[1] + 32 > 3 * 8  # well past every window
    assert torch.equal(ours, theirs)
    without_cache = generate(model, prompt, max_new_tokens=32, use_cache=False)
    assert torch.equal(without_cache, ours)


def test_config_translation_of_each_family(hf_dirs):
    llama = config_from_hf(json.loads((hf_dirs["llama3.2"][0] / "config.json").read_text()))
    assert (llama.head_dim, llama.kv_channels) == (32, 32)
    assert (llama.bos_token_id, llama.eos_token_id) == (None, [1, 2])
    assert llama.rope_scaling.type == "llama3" and llama.rope_scaling.factor == 32.0
    qwen = config_from_hf(json.loads((hf_dirs["qwen2.5"][0] / "config.json").read_text()))
    assert (qwen.family, qwen.qkv_bias, qwen.output_bias, qwen.sliding_window) == ("qwen2", True, False, None)
    sliding = config_from_hf(json.loads((hf_dirs["qwen2-sliding"][0] / "config.json").read_text()))
    assert [sliding.layer_sliding_window(i) for i in range(3)] == [None, 7, 7]
    mistral = config_from_hf(json.loads((hf_dirs["mistral"][0] / "config.json").read_text()))
    assert [mistral.layer_sliding_window(i) for i in range(3)] == [8, 8, 8]


def test_llama_attention_bias_puts_bias_on_all_four_projections(tmp_path):
    values = {**FAMILIES["smollm2"], "attention_bias": True}
    config = transformers.AutoConfig.for_model(**values)
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    break_symmetry(reference, seed=2)
    reference.save_pretrained(tmp_path / "hf")
    model, _ = load_model(tmp_path / "hf")
    assert model.config.qkv_bias and model.config.output_bias
    x = tokens(256)
    with torch.no_grad():
        assert relative_difference(model(x), reference(x).logits) < 1e-5


def test_logits_check_catches_k_permuted_with_the_query_head_count(hf_dirs, tmp_path):
    """A negative control: a converter that applies the Meta -> HF rotary permutation to k_proj with
    the query head count (instead of the kv head count) must fail the logits check above."""
    from safetensors.torch import save_file

    directory, reference = hf_dirs["llama3.2"]
    heads = FAMILIES["llama3.2"]["num_attention_heads"]
    tensors = read_safetensors_dir(directory)
    for name, weight in tensors.items():
        if name.endswith("k_proj.weight"):
            rows, columns = weight.shape
            tensors[name] = weight.view(heads, rows // heads // 2, 2, columns).transpose(1, 2).reshape(
                rows, columns).contiguous()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((directory / "config.json").read_text())
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    model, _ = load_model(broken)
    x = tokens(model.config.vocab_size)
    with torch.no_grad():
        assert relative_difference(model(x), reference(x).logits) > 1e-2


def test_an_instruct_models_stop_tokens_survive_the_round_trip(hf_dirs, tmp_path):
    """Llama-3.2-Instruct: config.json's eos is one id, generation_config.json lists three."""
    import shutil

    directory, _ = hf_dirs["llama3.2"]
    source = tmp_path / "instruct"
    shutil.copytree(directory, source)
    generation = {"bos_token_id": None, "eos_token_id": [1, 2, 9], "do_sample": True, "temperature": 0.6}
    (source / "generation_config.json").write_text(json.dumps(generation))
    import_hf(source, tmp_path / "mt")
    export_hf(tmp_path / "mt", tmp_path / "hf2", dtype="float32", include_tokenizer=False)
    assert json.loads((tmp_path / "hf2" / "generation_config.json").read_text()) == generation
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["eos_token_id"] == [1, 2]
    loaded = transformers.GenerationConfig.from_pretrained(tmp_path / "hf2")
    assert loaded.eos_token_id == [1, 2, 9]


@pytest.mark.parametrize("family", ["qwen2.5", "mistral"])
def test_megatiny_convert_commands_keep_the_family(hf_dirs, tmp_path, family):
    from megatiny.cli import convert as convert_checkpoint

    directory, _ = hf_dirs[family]
    assert convert_checkpoint.main(["to-megatiny", str(directory), str(tmp_path / "mt")]) == 0
    assert convert_checkpoint.main(["to-hf", str(tmp_path / "mt"), str(tmp_path / "out"), "--dtype", "fp32",
                                    "--no-tokenizer"]) == 0
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["architectures"] == [HF_CLASS[FAMILIES[family]["model_type"]]]
    assert read_safetensors_dir(tmp_path / "out").keys() == read_safetensors_dir(directory).keys()


def test_megatiny_convert_refuses_an_unsupported_architecture_naming_it(tmp_path, capsys):
    from megatiny.cli import convert as convert_checkpoint

    (tmp_path / "olmo").mkdir()
    (tmp_path / "olmo" / "config.json").write_text(json.dumps(
        {**FAMILIES["smollm2"], "model_type": "olmo2", "architectures": ["Olmo2ForCausalLM"]}))
    assert convert_checkpoint.main(["to-megatiny", str(tmp_path / "olmo"), str(tmp_path / "mt")]) == 2
    assert "model_type 'olmo2'" in capsys.readouterr().err
    assert not (tmp_path / "mt").exists()
