"""Pipeline parallelism: the GPT partitioned into a DeepSpeed `PipelineModule` (1F1B by DeepSpeed's
pipeline engine).

Layers, in order (global layer index in brackets; state_dict keys are "<index>.<name>"):

    [0]        EmbeddingPipe   embed_tokens                  Long[B, S] -> [B, S, h]
    [1 .. L]   BlockPipe       one transformer block         [B, S, h] -> [B, S, h]
    [L + 1]    FinalPipe       norm; lm_head (in the loss)   [B, S, h] -> normed [B, S, h]
    [L + 2]    (tied only)     the embedding again           normed [B, S, h], passed on

Tied embeddings (`tie_word_embeddings`): layers 0 and L + 2 are DeepSpeed `TiedLayerSpec`s of one
EmbeddingPipe (key TIED_KEY): the first and the last stage each hold a copy, DeepSpeed broadcasts
the first stage's at construction and sums the two copies' gradients after each backward (and
counts the copy on the last stage once in the gradient norm: `ds_pipe_replicated`). The loss
uses the last stage's copy as its LM head weight. Its state_dict key is
"tied_modules.embed.embed_tokens.weight" on both stages (TIED_PREFIX + the embedding's name).

The loss function given to DeepSpeed is the last stage's fused LM head + cross entropy, so no
logits tensor is formed here either.

Packed documents (`megatiny.data.document_mask`): a micro-batch's inputs may be the tuple
(input_ids, position_ids, document_ids) and its labels (labels, loss_mask); the position and
document ids then travel between the stages beside the hidden states (integer tensors: DeepSpeed's
pipeline engine sends them and sends no gradient for them), so every block keeps RoPE and
attention per document. Plain (input_ids, labels) micro-batches run exactly as before.

Stages are balanced by parameter count. Composable with
tensor (and sequence) parallelism: DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data,
model) numbers ranks as `megatiny.parallel.state` does when context is 1, so its "model" (slice)
groups are our tensor groups. Not supported: context parallelism with pipelines, tied embeddings
(they would need DeepSpeed's TiedLayerSpec), ZeRO stage 2 or 3 (DeepSpeed's pipeline engine
asserts stage < 2). `check_pipeline` refuses those naming the settings.

Initial weights: `megatiny.checkpoint.partition.load_full_state_dict` copies this stage's (and
tensor rank's) part of a full Hugging Face named state dict, e.g. the one-rank GPT's (the
stage's names map to HF names by `megatiny.checkpoint.partition.pipeline_hf_name`); the pipeline
model's own initialization is not the one-rank model's random stream (each stage builds only its
layers).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from megatiny.model.attention import resolve_backend
from megatiny.model.compile import compile_blocks
from megatiny.model.config import ModelConfig
from megatiny.model.kernels import rope_cos_sin
from megatiny.model.parallel_checks import check_pipeline_model, check_tensor_parallel
from megatiny.model.transformer import Block, LMHead, RMSNorm, rotary_tables, token_embedding
from megatiny.parallel.checks import check_pipeline_zero_stage

if TYPE_CHECKING:
    from megatiny.parallel.state import ParallelLayout, ParallelState

BLOCK_CLASS = "BlockPipe"
TIED_KEY = "embed"
TIED_PREFIX = f"tied_modules.{TIED_KEY}."


def check_pipeline(config: ModelConfig, state: ParallelState | ParallelLayout, zero_stage: int) -> None:
    """Raise ValueError for the combinations the pipeline model does not support (the guard of
    `build_pipeline_model`; a run's config validation calls the same checks, from
    `megatiny.model.parallel_checks` and `megatiny.parallel.checks`)."""
    layout = getattr(state, "layout", state)
    check_pipeline_zero_stage(layout, zero_stage)
    check_pipeline_model(config, layout)
    check_tensor_parallel(config, layout)


class EmbeddingPipe(nn.Module):
    def __init__(self, config: ModelConfig, parallel: ParallelState):
        super().__init__()
        self.embed_tokens = token_embedding(config, parallel)

    def forward(self, inputs):
        """input_ids Long[B, S] -> [B, S, h]; or (input_ids, position_ids, document_ids) ->
        (hidden, position_ids, document_ids)."""
        if isinstance(inputs, tuple):
            input_ids, position_ids, document_ids = inputs
            return self.embed_tokens(input_ids), position_ids, document_ids
        return self.embed_tokens(inputs)


class BlockPipe(Block):
    """A transformer block that computes its own RoPE tables (only a tensor flows between layers)."""

    def __init__(self, config: ModelConfig, layer_index: int, parallel: ParallelState,
                 attention_backend: str = "auto"):
        super().__init__(config, layer_index, parallel)
        self.config, self.attention_backend = config, attention_backend
        self.sequence_factor = parallel.layout.tensor if parallel.sequence_parallel else 1

    def forward(self, x):
        """[B, S, h] -> [B, S, h]; or (hidden, position_ids, document_ids), passed on likewise."""
        if isinstance(x, tuple):
            hidden, position_ids, document_ids = x
            cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, hidden.dtype,
                                    self.config.rope_scaling)
            backend = resolve_backend(self.attention_backend, hidden.device, hidden.dtype)
            return super().forward(hidden, cos, sin, backend, None, document_ids), position_ids, document_ids
        cos, sin = rotary_tables(self.config, 0, x.shape[1] * self.sequence_factor, x)
        backend = resolve_backend(self.attention_backend, x.device, x.dtype)
        return super().forward(x, cos, sin, backend)


class FinalPipe(nn.Module):
    """Final norm; its LM head is applied by the pipeline's loss function (with tied embeddings
    the head is the last stage's copy of the embedding, so this layer has none)."""

    def __init__(self, config: ModelConfig, parallel: ParallelState):
        super().__init__()
        sp_group = parallel.tensor_group if parallel.sequence_parallel else None
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, sp_group)
        self.lm_head = None if config.tie_word_embeddings else LMHead(config, parallel)

    def forward(self, x) -> torch.Tensor:
        return self.norm(x[0] if isinstance(x, tuple) else x)


def _pass_on(embedding: nn.Module, hidden):
    """The tied embedding's forward on the last stage: none (the loss uses its weight)."""
    return hidden


class PipelineLoss:
    """loss_fn(normed hidden, labels) -> the mean next-token loss, via the last stage's head."""

    def __init__(self):
        self.head: LMHead | None = None

    def __call__(self, hidden: torch.Tensor, labels) -> torch.Tensor:
        """labels Long[B, S], or (labels, loss_mask)."""
        if self.head is None:
            raise RuntimeError("the pipeline loss runs on the last stage only")
        if isinstance(labels, tuple):
            return self.head(hidden, *labels)
        return self.head(hidden, labels)


def build_pipeline_model(config: ModelConfig, state: ParallelState, zero_stage: int,
                         activation_checkpoint_interval: int = 0, attention_backend: str = "auto",
                         compile: bool = False, compile_backend: str = "inductor"):
    """The `deepspeed.pipe.PipelineModule` of this rank's stage (`attention_backend`, `compile`,
    `compile_backend`: ModelRuntime's; compile: each of the stage's blocks, see
    `megatiny.model.compile`)."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    check_pipeline(config, state, zero_stage)
    layout = state.layout
    tied = config.tie_word_embeddings
    weight = "embed_tokens.weight"
    embedding = TiedLayerSpec(TIED_KEY, EmbeddingPipe, config, state, tied_weight_attr=weight) if tied \
        else LayerSpec(EmbeddingPipe, config, state)
    specs = ([embedding]
             + [LayerSpec(BlockPipe, config, i, state, attention_backend) for i in range(config.num_layers)]
             + [LayerSpec(FinalPipe, config, state)])
    if tied:
        specs.append(TiedLayerSpec(TIED_KEY, EmbeddingPipe, config, state, forward_fn=_pass_on,
                                   tied_weight_attr=weight))
    loss = PipelineLoss()
    topology = PipeModelDataParallelTopology(num_pp=layout.pipeline, num_mp=layout.tensor,
                                             num_dp=layout.data)
    module = PipelineModule(layers=specs, topology=topology, loss_fn=loss,
                            partition_method="parameters",
                            activation_checkpoint_interval=activation_checkpoint_interval,
                            checkpointable_layers=[BLOCK_CLASS])
    if compile:
        compile_blocks((m for m in module.forward_funcs if isinstance(m, BlockPipe)), compile_backend)
    finals = [m for m in module.forward_funcs if isinstance(m, FinalPipe)]
    if finals:  # the last stage
        loss.head = LMHead(config, state, tied_weight=module.tied_modules[TIED_KEY].embed_tokens.weight) \
            if tied else finals[0].lm_head
    return module
