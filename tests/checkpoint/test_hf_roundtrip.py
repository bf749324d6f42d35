"""HF Llama <-> megatiny without DeepSpeed: bit-exact round trips and refusals with clear errors."""
import json

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from megatiny.checkpoint import export_hf, import_hf, load_model, save_model
from megatiny.checkpoint.hf import config_from_hf, config_to_hf
from megatiny.cli import convert as convert_checkpoint
from megatiny.model import GPT, get_preset


def tiny_config(**overrides):
    return get_preset("tiny-test", **overrides)


def read_safetensors_dir(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


def hf_model(config, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config_to_hf(config, dtype)))
    with torch.no_grad():  # HF initialises norms to 1; make them informative
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tie", [False, True])
def test_hf_to_megatiny_to_hf_is_bit_exact(tmp_path, dtype, tie):
    config = tiny_config(tie_word_embeddings=tie)
    original = hf_model(config, dtype)
    original.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "mt")
    export_hf(tmp_path / "mt", tmp_path / "hf2", dtype=dtype, include_tokenizer=False)
    before, after = read_safetensors_dir(tmp_path / "hf"), read_safetensors_dir(tmp_path / "hf2")
    if tie:
        before.pop("lm_head.weight", None)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype == dtype
        assert torch.equal(before[name], after[name]), name
    # loaded the same way (model.to(bf16) would also round HF's RoPE frequency buffer)
    first = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=dtype)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2", dtype=dtype)
    assert again.config.tie_word_embeddings == tie
    assert again.config.num_key_value_heads == 2
    x = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(first(x).logits, again(x).logits)


def test_megatiny_to_hf_to_megatiny_is_bit_exact(tmp_path):
    config = tiny_config()
    torch.manual_seed(1)
    model = GPT(config)
    save_model(model, tmp_path / "mt")
    export_hf(tmp_path / "mt", tmp_path / "hf", dtype="fp32", include_tokenizer=False, max_shard_size="50KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) > 1
    import_hf(tmp_path / "hf", tmp_path / "mt2")
    loaded, metadata = load_model(tmp_path / "mt2")
    assert metadata["model"] == config
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_logits_match_transformers(tmp_path):
    """An independent implementation agrees: q/k RoPE layout and GQA head grouping are right."""
    config = tiny_config(rope_theta=5000.0, rms_norm_eps=1e-6)
    original = hf_model(config, seed=3)
    original.save_pretrained(tmp_path / "hf")
    model, _ = load_model(tmp_path / "hf")
    x = torch.randint(0, config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x).logits, atol=1e-5, rtol=0)


def test_config_round_trip_through_transformers():
    config = get_preset("tinyllama-1.1b")
    hf = transformers.LlamaConfig(**config_to_hf(config, torch.bfloat16))
    assert config_from_hf(hf.to_dict()) == config
    assert hf.num_key_value_heads == 4 and hf.head_dim == 64 and hf.intermediate_size == 5632


@pytest.mark.parametrize("change, message", [
    ({"mlp_bias": True}, "mlp_bias is true"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type 'dynamic'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 8.0}},
     "rope_parameters.rope_type 'yarn'"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "factor": 8.0}},
     "rope_parameters.rope_type 'longrope'"),
    ({"rope_parameters": {"rope_type": "wobbly", "rope_theta": 1e4}}, "rope_type 'wobbly'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
     "without \\['low_freq_factor'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ({"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2"}, "model_type 'olmo2'.*QK-norm"),
    ({"architectures": ["GemmaForCausalLM"], "model_type": "gemma"}, "model_type 'gemma'"),
    ({"architectures": ["FooForCausalLM"], "model_type": "foo"}, "model_type 'foo'"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": True,
      "sliding_window": 4, "max_window_layers": 1,
      "layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ({"head_dim": 3}, "head_dim .* must be even"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_hf_architectures_are_refused(tmp_path, change, message):
    hf_config = config_to_hf(tiny_config(), torch.float32)
    if "rope_scaling" in change:  # a transformers-4 config: rope_theta + rope_scaling only
        hf_config.pop("rope_parameters")
    hf_config.update(change)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ValueError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "mt")
    assert not (tmp_path / "mt").exists()


def test_missing_extra_and_misshaped_hf_weights_are_named(tmp_path):
    config = tiny_config()
    hf_model(config).save_pretrained(tmp_path / "hf")
    tensors = read_safetensors_dir(tmp_path / "hf")
    for name, mutate, message in [
        ("model.layers.1.mlp.up_proj.weight", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
         r"missing tensor\(s\): model.layers.1.mlp.up_proj.weight"),
        ("bias", lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}),
         r"unexpected tensor\(s\) \(no mapping for them\): model.layers.0.self_attn.q_proj.bias"),
        ("kv", lambda t: t.update({"model.layers.0.self_attn.v_proj.weight": torch.zeros(64, 64)}),
         r"model.layers.0.self_attn.v_proj.weight: found \(64, 64\), expected \(16, 64\)"),
    ]:
        broken = dict(tensors)
        mutate(broken)
        directory = tmp_path / f"broken_{name}"
        directory.mkdir()
        (directory / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
        save_file(broken, str(directory / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ValueError, match=message):
            load_model(directory)


def test_pytorch_bin_only_dir_gets_a_hint(tmp_path):
    hf_model(tiny_config()).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="re-save with safetensors"):
        load_model(tmp_path / "hf")


def test_cli_errors_are_one_line_and_outputs_are_never_clobbered(tmp_path, capsys):
    hf_model(tiny_config()).save_pretrained(tmp_path / "hf")
    assert convert_checkpoint.main(["to-megatiny", str(tmp_path / "hf"), str(tmp_path / "mt")]) == 0
    before = (tmp_path / "mt" / "model.safetensors").read_bytes()
    assert convert_checkpoint.main(["to-megatiny", str(tmp_path / "hf"), str(tmp_path / "mt")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert convert_checkpoint.main(["to-hf", str(tmp_path / "mt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--no-tokenizer" in err and "Traceback" not in err
    assert convert_checkpoint.main(["to-hf", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert (tmp_path / "mt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mt"]  # no temp dirs left behind
    assert convert_checkpoint.main(["to-megatiny", str(tmp_path / "hf"), str(tmp_path / "mt"),
                                    "--overwrite", "--dtype", "bf16"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mt"]
    with safe_open(str(tmp_path / "mt" / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16


def test_tokenizer_travels_with_converted_weights(tmp_path, sp_models):
    import sentencepiece as spm

    from megatiny.data.tokenizer import load_tokenizer

    torch.manual_seed(0)
    save_model(GPT(tiny_config()), tmp_path / "mt", tokenizer=sp_models["bpe"])
    _, metadata = load_model(tmp_path / "mt")
    assert metadata["tokenizer"] == str((tmp_path / "mt" / "tokenizer.model").resolve())
    export_hf(tmp_path / "mt", tmp_path / "hf")  # the tokenizer recorded in megatiny.json
    import_hf(tmp_path / "hf", tmp_path / "mt2")
    _, metadata = load_model(tmp_path / "mt2")
    assert metadata["tokenizer"] == str((tmp_path / "mt2" / "tokenizer").resolve())
    text = "the quick brown fox (x + 1) naïve"
    sp = spm.SentencePieceProcessor(model_file=str(sp_models["bpe"]))
    assert load_tokenizer(metadata["tokenizer"]).encode(text) == sp.encode(text)
