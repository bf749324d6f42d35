"""Pipeline layer names and the combinations the pipeline model refuses (no processes)."""
from types import SimpleNamespace

import pytest

from megatiny.checkpoint.partition import pipeline_hf_name as hf_name
from megatiny.model import get_preset
from megatiny.model.pipeline import check_pipeline
from megatiny.parallel.state import ParallelLayout


def test_pipeline_names_map_to_hugging_face_names():
    assert hf_name("0.embed_tokens.weight", 2) == "model.embed_tokens.weight"
    assert hf_name("1.self_attn.q_proj.weight", 2) == "model.layers.0.self_attn.q_proj.weight"
    assert hf_name("2.post_attention_layernorm.weight", 2) == "model.layers.1.post_attention_layernorm.weight"
    assert hf_name("3.norm.weight", 2) == "model.norm.weight"
    assert hf_name("3.lm_head.weight", 2) == "lm_head.weight"
    assert hf_name("tied_modules.embed.embed_tokens.weight", 2) == "model.embed_tokens.weight"
    with pytest.raises(ValueError, match="beyond 2 blocks"):
        hf_name("4.norm.weight", 2)


@pytest.mark.parametrize("layout, changes, stage, message", [
    (dict(pipeline=2), {}, 2, r"parallel.pipeline = 2 needs ZeRO stage 0 or 1 .* stage 2"),
    (dict(pipeline=2, context=2), {}, 1, r"parallel.context = 2 is not supported"),
    (dict(pipeline=8), {}, 1, r"parallel.pipeline \(8\) exceeds .* = 4\)"),
    (dict(pipeline=2, tensor=4), {}, 1, r"must divide ModelConfig.num_query_groups"),
])
def test_unsupported_pipeline_combinations_are_refused(layout, changes, stage, message):
    config = get_preset("tiny-test", num_layers=2, **changes)
    state = SimpleNamespace(layout=ParallelLayout(**layout))
    with pytest.raises(ValueError, match=message):
        check_pipeline(config, state, stage)
    check_pipeline(get_preset("tiny-test"), SimpleNamespace(layout=ParallelLayout(pipeline=2)), 1)
