"""How full (Hugging Face named) weights map onto the shards of a model-parallel run.

- tensor parallelism: `partition_dim(name)` is the dimension a full weight is split along over
  the tensor-parallel ranks (rows of q/k/v and entries of their biases, gate/up, the embedding
  and the LM head; columns of o and down; None for the replicated norms and o's bias), the
  model's parallel layers being `megatiny.model.transformer`'s; `shard_state_dict` takes one
  rank's part of full weights (`megatiny.checkpoint.model_parallel` concatenates a checkpoint's
  shards back).
- pipeline parallelism: a stage's state_dict keys are "<layer index>.<name>"
  (`megatiny.model.pipeline`); `pipeline_hf_name` turns one into its Hugging Face name and
  `load_full_state_dict` copies a stage's (and tensor rank's) part of full weights into it.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from megatiny.model.config import ModelConfig
from megatiny.model.pipeline import TIED_PREFIX
from megatiny.parallel.tensor_parallel import shard

if TYPE_CHECKING:
    from megatiny.parallel.state import ParallelState

# Which dimension of each full weight is split over the tensor-parallel ranks (None = replicated),
# by the last two parts of its Hugging Face name.
_COLUMN = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight",
           "embed_tokens.weight", "lm_head.weight", "q_proj.bias", "k_proj.bias", "v_proj.bias")
_ROW = ("o_proj.weight", "down_proj.weight")


def partition_dim(name: str) -> int | None:
    """The split dimension of full weight `name` (HF naming): 0, 1, or None (replicated)."""
    if name.endswith(_COLUMN):
        return 0
    if name.endswith(_ROW):
        return 1
    return None


def shard_state_dict(full: dict[str, torch.Tensor], tensor_rank: int, tensor_size: int
                     ) -> dict[str, torch.Tensor]:
    """One tensor-parallel rank's weights from a full (Hugging Face named) state dict.

    q/k/v are split contiguously along their output rows, which are head-major, so rank r gets
    query heads [r*H/T, (r+1)*H/T) and kv groups [r*G/T, (r+1)*G/T): exactly the groups those
    query heads attend with (head i uses group i // (H/G)), as long as T divides G. Their biases
    split the same way (entry j belongs to output row j); o_proj's bias is whole on every rank."""
    out = {}
    for name, tensor in full.items():
        dim = partition_dim(name)
        out[name] = tensor.clone() if dim is None else shard(tensor, dim, tensor_rank, tensor_size)
    return out


def pipeline_hf_name(pipeline_name: str, num_layers: int) -> str:
    """The Hugging Face name of a pipeline state_dict key ("<layer index>.<name>", or the tied
    embedding's TIED_PREFIX + its name, on the first and the last stage)."""
    if pipeline_name.startswith(TIED_PREFIX):
        return f"model.{pipeline_name[len(TIED_PREFIX):]}"
    match = re.fullmatch(r"(\d+)\.(.+)", pipeline_name)
    if match is None:
        raise ValueError(f"not a pipeline parameter name: {pipeline_name!r}")
    index, rest = int(match.group(1)), match.group(2)
    if index == 0:
        return f"model.{rest}"
    if index <= num_layers:
        return f"model.layers.{index - 1}.{rest}"
    if index == num_layers + 1:
        return rest if rest.startswith("lm_head.") else f"model.{rest}"
    raise ValueError(f"pipeline layer index {index} is beyond {num_layers} blocks + 2")


@torch.no_grad()
def load_full_state_dict(module: nn.Module, full: dict[str, torch.Tensor], config: ModelConfig,
                         state: ParallelState) -> None:
    """Copy this stage's and tensor rank's part of `full` (HF names) into `module`, a pipeline
    stage (`megatiny.model.pipeline.build_pipeline_model`)."""
    t, rank = state.layout.tensor, state.tensor_rank
    for name, tensor in module.state_dict().items():
        hf = pipeline_hf_name(name, config.num_layers)
        source, dim = full[hf], partition_dim(hf)
        if dim is not None and t > 1:
            source = shard(source, dim, rank, t)
        tensor.copy_(source)
