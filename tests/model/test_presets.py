"""Presets of today's small open models: published shapes, exact published parameter counts."""
import pytest
import torch
import transformers

from megatiny.checkpoint.hf import config_to_hf
from megatiny.model import GPT, get_preset

# Parameter counts as published (model cards / safetensors metadata; tied embeddings counted once).
PUBLISHED_PARAMETERS = {
    "tinyllama-1.1b": 1_100_048_384,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "smollm2-1.7b": 1_711_376_384,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_preset_parameter_count_equals_the_published_figure_and_transformers(name):
    config = get_preset(name)
    assert config.num_parameters() == PUBLISHED_PARAMETERS[name]
    with torch.device("meta"):
        ours = GPT(config)
        hf_config = transformers.AutoConfig.for_model(**config_to_hf(config, torch.bfloat16))
        theirs = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert ours.num_parameters() == theirs.num_parameters() == PUBLISHED_PARAMETERS[name]
    assert type(theirs).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[config.family]
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_published_shape_details():
    assert get_preset("llama-3.2-3b").head_dim == 128
    assert get_preset("llama-3.2-1b").rope_scaling.original_max_position_embeddings == 8192
    assert get_preset("qwen2.5-1.5b").head_dim == 128 and get_preset("qwen2.5-0.5b").qkv_bias
    assert get_preset("smollm2-1.7b").rope_theta == 130000.0
    # initializer_range of the published config.json (init_std, which init_from also compares)
    assert get_preset("smollm2-135m").init_std == 0.041666666666666664
    hf = config_to_hf(get_preset("smollm2-135m"), torch.bfloat16)
    assert hf["initializer_range"] == 0.041666666666666664
