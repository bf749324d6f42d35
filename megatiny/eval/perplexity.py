"""Validation loss and perplexity on held-out indexed data.

The held-out set is one epoch of the chosen split, cut the way training cuts it (megatiny.data's
GPTDataset: samples of seq_length + 1 tokens that overlap by one token and run across document
boundaries), so every token of the split after the first is predicted exactly once. A blend
("0.7 A 0.3 B") is evaluated one dataset at a time (one epoch of each; the blend weights are not
used, since sampling by weight would repeat small datasets and skip parts of large ones); the total
is the token-weighted mean over the datasets, reported beside each dataset's own numbers.

A checkpoint trained with the data's document options (`data.reset_attention_mask`,
`reset_position_ids`, `eod_mask_loss`, recorded in its run config with the EOD id) is evaluated
with the same ones: attention and positions per document, and no loss where the input is EOD
(those tokens are then not counted).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from megatiny.checkpoint import load_model
from megatiny.data.builder import build_gpt_datasets
from megatiny.data.config import DataConfig, parse_blend
from megatiny.data.document_mask import DocumentInputs, DocumentMasking, document_inputs
from megatiny.data.gpt_dataset import split_document_ranges
from megatiny.data.indexed_dataset import IndexedDataset
from megatiny.model import GPT, ModelRuntime
from megatiny.precision import resolve_device, resolve_dtype

SPLITS = ("train", "valid", "test", "all")


@dataclass
class PerplexityResult:
    loss: float          # mean cross entropy, nats per predicted token
    perplexity: float    # exp(loss)
    tokens: int          # predicted tokens
    samples: int         # sequences of seq_length + 1 tokens
    # for a blend: prefix -> that dataset's own result (empty for a single prefix)
    datasets: dict[str, PerplexityResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def combine(cls, results: dict[str, PerplexityResult]) -> PerplexityResult:
        """The token-weighted total of per-dataset results (each token of every dataset counts once)."""
        tokens = sum(r.tokens for r in results.values())
        loss = sum(r.loss * r.tokens for r in results.values()) / tokens
        return cls(loss=loss, perplexity=_perplexity(loss), tokens=tokens,
                   samples=sum(r.samples for r in results.values()),
                   datasets=dict(results) if len(results) > 1 else {})


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def split_tokens(prefix: str, split: str, which: str) -> int:
    """Tokens in split `which` of the dataset at `prefix` (documents divided as training does)."""
    indexed = IndexedDataset(prefix)
    if which == "all":
        return indexed.num_tokens
    first, end = split_document_ranges(indexed.num_documents, DataConfig(data_path=prefix, split=split)
                                       .split_weights())[("train", "valid", "test").index(which)]
    docs = indexed.document_indices
    return int(indexed.sequence_lengths[docs[first]:docs[end]].sum(dtype=np.int64))


def held_out_datasets(data_path: str, seq_length: int, which: str = "valid", split: str = "969,30,1",
                      num_samples: int | None = None, seed: int = 1234,
                      cache_dir: str | None = None) -> dict[str, Any]:
    """prefix -> dataset (`ds[i]` int64 [seq_length + 1]) over split `which` of each dataset in
    `data_path` (a prefix or a blend "0.7 A 0.3 B"; the weights are ignored).

    which: train | valid | test (documents divided by `split`, as in the training config) or all
    (every document). num_samples: a cap per dataset; default one epoch of each dataset's split.
    """
    if which not in SPLITS:
        raise ValueError(f"split name must be one of {SPLITS}, got {which!r}")
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    if which == "all":
        which, split = "valid", "0,1,0"
    index = ("train", "valid", "test").index(which)
    datasets = {}
    for _, prefix in parse_blend(data_path):
        if prefix in datasets:
            raise ValueError(f"{data_path}: {prefix} appears twice in the blend")
        epoch = max(split_tokens(prefix, split, which) - 1, 0) // seq_length
        if epoch == 0:
            raise ValueError(f"{prefix}: the {which} split (split {split!r}) holds fewer than "
                             f"{seq_length + 1} tokens; use a shorter --seq-length or another split")
        counts = [0, 0, 0]
        counts[index] = epoch if num_samples is None else min(epoch, num_samples)
        config = DataConfig(data_path=prefix, split=split, cache_dir=cache_dir)
        datasets[prefix] = build_gpt_datasets(config, seq_length, counts, seed)[index]
    return datasets


def held_out_dataset(data_path: str, seq_length: int, which: str = "valid", split: str = "969,30,1",
                     num_samples: int | None = None, seed: int = 1234, cache_dir: str | None = None):
    """The dataset over split `which` of ONE prefix (see `held_out_datasets`; for a blend use that)."""
    if len(parse_blend(data_path)) != 1:
        raise ValueError(f"{data_path!r} is a blend: use held_out_datasets (one dataset per prefix)")
    return next(iter(held_out_datasets(data_path, seq_length, which, split, num_samples, seed,
                                       cache_dir).values()))


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, dataset, batch_size: int = 8,
                        device: str | torch.device | None = None,
                        max_samples: int | None = None,
                        masking: DocumentMasking | None = None) -> PerplexityResult:
    """Mean next-token cross entropy of `model` over `dataset` (samples of seq_length + 1 tokens).

    Batches of `batch_size` samples; inputs are sample[:-1], labels sample[1:]. A megatiny `GPT`
    computes the loss itself (its chunked fused cross entropy); other modules' logits go through
    log-softmax here. `masking`: the document options (a megatiny `GPT` only).
    """
    if masking is not None and not isinstance(model, GPT):
        raise ValueError("the document options (data.reset_attention_mask ...) need a megatiny GPT")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    total = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    if total == 0:
        raise ValueError("perplexity: the dataset has no samples")
    loss_sum, tokens = 0.0, 0
    model.eval()
    for start in range(0, total, batch_size):
        indices = range(start, min(start + batch_size, total))
        batch = np.stack([np.asarray(dataset[i], dtype=np.int64) for i in indices])
        ids = torch.from_numpy(batch).to(device)
        inputs, labels = ids[:, :-1], ids[:, 1:]
        document = document_inputs(inputs, masking)
        counted = labels.numel() if document.loss_mask is None else int(document.loss_mask.sum())
        loss_sum += float(batch_loss_sum(model, inputs, labels, document, counted))
        tokens += counted
    loss = loss_sum / tokens
    return PerplexityResult(loss=loss, perplexity=_perplexity(loss), tokens=tokens, samples=total)


def batch_loss_sum(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                   document: DocumentInputs | None = None, counted: int | None = None) -> torch.Tensor:
    """Summed fp32 cross entropy over every label of Long[B, T] inputs/labels (with `document`'s
    loss mask: over the `counted` labels it keeps)."""
    if isinstance(model, GPT):
        if document is None:
            return model(inputs, labels=labels).double() * labels.numel()
        mean = model(inputs, labels=labels, loss_mask=document.loss_mask,
                     position_ids=document.position_ids, document_ids=document.document_ids)
        return mean.double() * (labels.numel() if counted is None else counted)
    output = model(inputs)
    logits = (output.logits if hasattr(output, "logits") else output).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")


def run_perplexity(checkpoint: str | os.PathLike, data_path: str, seq_length: int, which: str = "valid",
                   split: str = "969,30,1", num_samples: int | None = None, batch_size: int = 8,
                   device: str | None = None, dtype: str = "auto", seed: int = 1234,
                   cache_dir: str | None = None, runtime: ModelRuntime | None = None) -> PerplexityResult:
    """Load `checkpoint` (anything `megatiny.checkpoint.load_model` reads) and evaluate it on every
    dataset of `data_path`; for a blend the result's `datasets` holds each one's numbers.
    `runtime`: how the model computes (e.g. compiled blocks), as in `load_model`."""
    torch_device = resolve_device(device)
    model, metadata = load_model(checkpoint, dtype=resolve_dtype(dtype, torch_device), device=torch_device,
                                 runtime=runtime)
    max_positions = metadata["model"].max_position_embeddings
    if seq_length > max_positions:
        raise ValueError(f"--seq-length {seq_length} exceeds the model's max_position_embeddings "
                         f"({max_positions})")
    datasets = held_out_datasets(data_path, seq_length, which, split, num_samples, seed, cache_dir)
    masking = checkpoint_document_masking(metadata)
    return PerplexityResult.combine({prefix: evaluate_perplexity(model, dataset, batch_size, torch_device,
                                                                 masking=masking)
                                     for prefix, dataset in datasets.items()})


def checkpoint_document_masking(metadata: dict[str, Any]) -> DocumentMasking | None:
    """The document options a checkpoint's run config trained with (None: off, or not recorded)."""
    run_config = getattr(metadata.get("train_state"), "run_config", None) or {}
    data = run_config.get("data") or {}
    options = {k: bool(data.get(k)) for k in ("reset_attention_mask", "reset_position_ids", "eod_mask_loss")}
    if not any(options.values()):
        return None
    if data.get("eod_token_id") is None:
        raise ValueError("the checkpoint's run config sets the document options but records no "
                         "data.eod_token_id")
    return DocumentMasking(eod_token_id=int(data["eod_token_id"]), **options)
