"""`checkpoint.init_from=HF_DIR`: the run's architecture comes from the HF directory; a disagreeing
`model` section, an unsupported architecture and an unsupported layout fail at config load (one
process, before any process group or engine), naming the field."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from megatiny.training.config import RunConfig

QWEN2 = dict(model_type="qwen2", vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False, bos_token_id=None,
             eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def qwen2_dir(directory, **changes):
    """A tiny random Qwen2ForCausalLM saved by transformers (biases drawn non-zero)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**{**QWEN2, **changes}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.3)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return qwen2_dir(tmp_path_factory.mktemp("qwen2") / "hf")


def test_without_a_model_section_the_architecture_is_the_hf_directorys(hf_dir):
    run = RunConfig.from_dict({"checkpoint": {"init_from": str(hf_dir)}})
    config = run.model_config()
    assert (config.family, config.qkv_bias, config.output_bias, config.tie_word_embeddings) == \
        ("qwen2", True, False, True)
    assert (config.vocab_size, config.num_layers) == (320, 2)
    assert (config.bos_token_id, config.rms_norm_eps) == (None, 1e-6)
    assert RunConfig.from_dict(run.to_dict()).model_config() == config  # the saved run config says it


def test_a_model_section_that_disagrees_names_the_fields(hf_dir):
    with pytest.raises(ValueError, match=r"differs from the architecture of checkpoint.init_from=.* in "
                                         r".*family: 'llama' != 'qwen2'.*qkv_bias: False != True"):
        RunConfig.from_dict({"model": {"preset": "tiny-test", "vocab_size": 320},
                             "checkpoint": {"init_from": str(hf_dir)}})


def test_a_model_section_that_agrees_is_accepted(hf_dir):
    config = RunConfig.from_dict({"checkpoint": {"init_from": str(hf_dir)}}).model_config()
    section = {"preset": None, **config.to_dict()}
    assert RunConfig.from_dict({"model": section, "checkpoint": {"init_from": str(hf_dir)}}).model_config() \
        == config


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "olmo2", "architectures": ["Olmo2ForCausalLM"]}, r"model_type 'olmo2'.*QK-norm"),
    ({"model_type": "gemma", "architectures": ["GemmaForCausalLM"]}, r"model_type 'gemma'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
     r"rope_parameters.rope_type 'yarn' is not supported"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 4.0}},
     r"rope_parameters.rope_type 'dynamic' is not supported"),
])
def test_unsupported_architectures_are_refused_at_config_load(tmp_path, changes, message):
    directory = tmp_path / "hf"
    directory.mkdir()
    config = {**QWEN2, "architectures": ["Qwen2ForCausalLM"], **changes}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"checkpoint.init_from: .*{message}"):
        RunConfig.from_dict({"checkpoint": {"init_from": str(directory)}})


@pytest.mark.parametrize("parallel", [{"tensor": 2}, {"tensor": 2, "sequence_parallel": True},
                                      {"context": 2}, {"pipeline": 2}])
def test_attention_biases_and_tied_embeddings_are_accepted_on_model_parallel_layouts(hf_dir, parallel):
    """(Trained and compared with one rank in tests/model/test_families_training.py.)"""
    run = RunConfig.from_dict({"checkpoint": {"init_from": str(hf_dir)}, "parallel": parallel,
                               "nan_policy": "stop"})
    assert run.model_config().qkv_bias


def test_sliding_window_is_accepted_with_tensor_and_context_parallelism():
    model = {"preset": "tiny-test", "family": "mistral", "sliding_window": 16}
    for parallel in ({"tensor": 2}, {"context": 2}):
        RunConfig.from_dict({"model": model, "parallel": parallel})


def test_without_a_model_section_an_unreadable_init_from_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint.init_from=.*missing is not a readable .* add a model"):
        RunConfig.from_dict({"checkpoint": {"init_from": str(tmp_path / "missing")}})
