"""Validation loss and perplexity on held-out indexed data.

The held-out set is one epoch of the chosen split, cut the way training cuts it (megatiny.data's
GPTDataset: samples of seq_length + 1 tokens that overlap by one token and run across document
boundaries), so every token of the split after the first is predicted exactly once and the number
is directly comparable with the training run's validation loss.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from megatiny.data.builder import build_gpt_datasets
from megatiny.data.config import DataConfig, parse_blend
from megatiny.data.gpt_dataset import split_document_ranges
from megatiny.data.indexed_dataset import IndexedDataset

SPLITS = ("train", "valid", "test", "all")


@dataclass
class PerplexityResult:
    loss: float          # mean cross entropy, nats per predicted token
    perplexity: float    # exp(loss)
    tokens: int          # predicted tokens
    samples: int         # sequences of seq_length + 1 tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_tokens(prefix: str, split: str, which: str) -> int:
    """Tokens in split `which` of the dataset at `prefix` (documents divided as training does)."""
    indexed = IndexedDataset(prefix)
    if which == "all":
        return indexed.num_tokens
    first, end = split_document_ranges(indexed.num_documents, DataConfig(data_path=prefix, split=split)
                                       .split_weights())[("train", "valid", "test").index(which)]
    docs = indexed.document_indices
    return int(indexed.sequence_lengths[docs[first]:docs[end]].sum(dtype=np.int64))


def held_out_dataset(data_path: str, seq_length: int, which: str = "valid", split: str = "969,30,1",
                     num_samples: int | None = None, seed: int = 1234, cache_dir: str | None = None):
    """A dataset (`ds[i]` int64 [seq_length + 1]) over split `which` of `data_path`.

    data_path: a prefix or blend ("0.7 A 0.3 B"). which: train | valid | test (documents divided by
    `split`, as in the training config) or all (every document). num_samples: default one epoch
    of the split (for a blend, the sum over its datasets).
    """
    if which not in SPLITS:
        raise ValueError(f"split name must be one of {SPLITS}, got {which!r}")
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    if which == "all":
        which, split = "valid", "0,1,0"
    if num_samples is None:
        num_samples = sum(max(split_tokens(prefix, split, which) - 1, 0) // seq_length
                          for _, prefix in parse_blend(data_path))
        if num_samples == 0:
            raise ValueError(f"{data_path}: the {which} split (split {split!r}) holds fewer than "
                             f"{seq_length + 1} tokens; use a shorter --seq-length or another split")
    config = DataConfig(data_path=data_path, split=split, cache_dir=cache_dir)
    counts = [0, 0, 0]
    counts[("train", "valid", "test").index(which)] = num_samples
    return build_gpt_datasets(config, seq_length, counts, seed)[("train", "valid", "test").index(which)]


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, dataset, batch_size: int = 8,
                        device: str | torch.device | None = None,
                        max_samples: int | None = None) -> PerplexityResult:
    """Mean next-token cross entropy of `model` over `dataset` (samples of seq_length + 1 tokens).

    Batches of `batch_size` samples; inputs are sample[:-1], labels sample[1:]. A megatiny `GPT`
    computes the loss itself (its chunked fused cross entropy); other modules' logits go through
    log-softmax here.
    """
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
        loss_sum += float(batch_loss_sum(model, inputs, labels))
        tokens += labels.numel()
    loss = loss_sum / tokens
    return PerplexityResult(loss=loss, perplexity=math.exp(loss) if loss < 700 else math.inf,
                            tokens=tokens, samples=total)


def batch_loss_sum(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed fp32 cross entropy over every label of Long[B, T] inputs/labels."""
    from megatiny.model import GPT

    if isinstance(model, GPT):
        return model(inputs, labels=labels).double() * labels.numel()
    output = model(inputs)
    logits = (output.logits if hasattr(output, "logits") else output).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")


def run_perplexity(checkpoint: str | os.PathLike, data_path: str, seq_length: int, which: str = "valid",
                   split: str = "969,30,1", num_samples: int | None = None, batch_size: int = 8,
                   device: str | None = None, dtype: str = "auto", seed: int = 1234,
                   cache_dir: str | None = None) -> PerplexityResult:
    """Load `checkpoint` (anything `megatiny.checkpoint.load_model` reads) and evaluate it."""
    from megatiny.checkpoint import load_model
    from megatiny.eval.lm_eval_adapter import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    model, metadata = load_model(checkpoint, dtype=resolve_dtype(dtype, torch_device), device=torch_device)
    max_positions = metadata["model"].max_position_embeddings if "model" in metadata else None
    if max_positions is not None and seq_length > max_positions:
        raise ValueError(f"--seq-length {seq_length} exceeds the model's max_position_embeddings "
                         f"({max_positions})")
    dataset = held_out_dataset(data_path, seq_length, which, split, num_samples, seed, cache_dir)
    return evaluate_perplexity(model, dataset, batch_size, torch_device)
