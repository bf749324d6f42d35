"""What a model-parallel layout needs of a model, as pure checks (no processes, no torch).

The run config's validation (`megatiny.training.config.RunConfig.validate`) calls these once,
before any process starts; the parallel model builders (`GPT`, `build_pipeline_model`) call the
same functions as guards of their own entry points. Each raises ValueError naming the setting to
change.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatiny.model.config import ModelConfig
    from megatiny.parallel.state import ParallelLayout


def check_tensor_parallel(config: ModelConfig, layout: ParallelLayout) -> None:
    """Raise ValueError unless `config` can be split over `layout.tensor` ranks."""
    t = layout.tensor
    if config.num_query_groups % t:
        raise ValueError(
            f"parallel.tensor ({t}) must divide ModelConfig.num_query_groups "
            f"({config.num_query_groups}): each tensor-parallel rank owns whole key/value groups "
            "and the query heads that use them")
    for field in ("ffn_hidden_size", "vocab_size"):
        value = getattr(config, field)
        if value % t:
            raise ValueError(f"parallel.tensor ({t}) must divide ModelConfig.{field} ({value})")


def check_context_parallel(config: ModelConfig, layout: ParallelLayout) -> None:
    """Raise ValueError unless each context rank gets whole kv groups to attend over."""
    groups_per_tensor_rank = config.num_query_groups // layout.tensor
    if groups_per_tensor_rank % layout.context:
        raise ValueError(
            f"parallel.context ({layout.context}) must divide the key/value groups of each "
            f"tensor-parallel rank: ModelConfig.num_query_groups ({config.num_query_groups}) / "
            f"parallel.tensor ({layout.tensor}) = {groups_per_tensor_rank}; Ulysses gives every "
            "context rank whole kv groups")


def check_pipeline_model(config: ModelConfig, layout: ParallelLayout) -> None:
    """Raise ValueError for the model and layout combinations the pipeline model does not support."""
    if layout.pipeline == 1:
        return
    if layout.context > 1:
        raise ValueError(f"parallel.pipeline = {layout.pipeline} with parallel.context = "
                         f"{layout.context} is not supported; use one of them")
    layers = config.num_layers + (3 if config.tie_word_embeddings else 2)
    if layers < layout.pipeline:
        raise ValueError(f"parallel.pipeline ({layout.pipeline}) exceeds the pipeline's layers "
                         f"(ModelConfig.num_layers + {layers - config.num_layers} = {layers})")
