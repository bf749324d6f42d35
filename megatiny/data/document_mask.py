"""Document boundaries inside packed samples: Megatron's `--reset-attention-mask`,
`--reset-position-ids` and `--eod-mask-loss`.

Training samples are packed across documents (`gpt_dataset`), and the only boundary a sample
carries is the EOD token that ends each document. With the EOD id, every boundary follows from
the input tokens (inputs = sample[:-1]) of one sample, so they are computed here, once per batch,
vectorized, and handed to the model as three per-token tensors (all Long/float [B, T]):

  document_ids  the number of EODs strictly before each token (an EOD belongs to the document it
                ends). Attention is allowed from query i to key j iff j <= i and
                document_ids[i] == document_ids[j]: exactly Megatron's mask, which forbids a token
                to see anything at or before an EOD that precedes it.
  position_ids  t minus the start of t's document: positions restart at 0 after each EOD
                (without `reset_position_ids`: 0 .. T-1, i.e. None).
  loss_mask     0.0 where the input token is EOD, else 1.0 (Megatron's `eod_mask_loss`: the token
                predicted after an EOD starts a new document and is not learned).

Any of them is None when its option is off, so the model then runs its unmasked path unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megatiny.data.config import DataConfig


@dataclass(frozen=True)
class DocumentMasking:
    """Which of Megatron's three document options are on, and the EOD token id they cut at."""

    eod_token_id: int
    reset_attention_mask: bool = False
    reset_position_ids: bool = False
    eod_mask_loss: bool = False

    @classmethod
    def from_data_config(cls, config: DataConfig | None, eod_token_id: int | None = None
                         ) -> DocumentMasking | None:
        """The options of `config` (None when all are off). `eod_token_id`: the resolved id when
        `config.eod_token_id` is null (see `resolve_eod_token_id`)."""
        if config is None or not config.document_masking:
            return None
        eod = config.eod_token_id if config.eod_token_id is not None else eod_token_id
        if eod is None:
            raise ValueError("data.eod_token_id: the document options need the EOD token id; set it, "
                             "or use data with a PREFIX.json sidecar whose tokenizer has an EOS id")
        return cls(eod_token_id=int(eod), reset_attention_mask=config.reset_attention_mask,
                   reset_position_ids=config.reset_position_ids, eod_mask_loss=config.eod_mask_loss)


@dataclass
class DocumentInputs:
    """Per-token inputs of a packed batch, each [B, T] or None (see the module docstring)."""

    position_ids: torch.Tensor | None = None
    document_ids: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> DocumentInputs:
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return DocumentInputs(move(self.position_ids), move(self.document_ids), move(self.loss_mask))


def document_inputs(input_ids: torch.Tensor, masking: DocumentMasking | None) -> DocumentInputs:
    """The document tensors of input tokens Long[B, T] (or [T]) under `masking` (None: all None)."""
    if masking is None:
        return DocumentInputs()
    is_eod = input_ids == masking.eod_token_id
    eods_through = is_eod.long().cumsum(dim=-1)
    document_ids = eods_through - is_eod.long()          # EODs strictly before each token
    position_ids = None
    if masking.reset_position_ids:
        t = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        # start of each token's document = index after the last EOD strictly before it
        after_eod = torch.where(is_eod, t + 1, torch.zeros_like(t))
        starts = after_eod.cummax(dim=-1).values
        starts = torch.cat((torch.zeros_like(starts[..., :1]), starts[..., :-1]), dim=-1)
        position_ids = t - starts
    loss_mask = (~is_eod).float() if masking.eod_mask_loss else None
    return DocumentInputs(position_ids=position_ids,
                          document_ids=document_ids if masking.reset_attention_mask else None,
                          loss_mask=loss_mask)


def dense_attention_mask(document_ids: torch.Tensor | None, length: int) -> torch.Tensor:
    """Bool [..., T, T]: True where query i may attend key j (causal, and within i's document
    when `document_ids` [..., T] is given)."""
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    if document_ids is None:
        return causal
    same = document_ids[..., :, None] == document_ids[..., None, :]
    return same & causal


def resolve_eod_token_id(config: DataConfig | None) -> int | None:
    """`config.eod_token_id`, else the EOS id of the tokenizer recorded in the sidecars of the
    datasets (they must agree); None when neither says."""
    from megatiny.data.sidecar import DatasetSidecar

    if config is None:
        return None
    if config.eod_token_id is not None:
        return config.eod_token_id
    found: dict[str, int] = {}
    for blend in config.blends().values():
        for _, prefix in blend:
            sidecar = DatasetSidecar.read(prefix)
            eos = sidecar.tokenizer.get("eos_id") if sidecar is not None else None
            if eos is not None:
                found[prefix] = int(eos)
    ids = set(found.values())
    if len(ids) > 1:
        raise ValueError(f"data.eod_token_id: the datasets' tokenizers disagree on the EOS id {found}; "
                         "set data.eod_token_id")
    return ids.pop() if ids else None

