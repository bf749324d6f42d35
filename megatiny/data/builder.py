"""Build the train / valid / test datasets a run config asks for.

    train, valid, test = build_gpt_datasets(data_config, seq_length, (n_train, n_valid, n_test), seed)

Each split is one `GPTDataset` (single prefix) or a `BlendedDataset` over one `GPTDataset` per
prefix; a split asked for 0 samples (or with no data path) is None. The function is pure library
code (no torch.distributed): in a multi-rank job call it on rank 0 first (it builds and caches the
indexes), barrier, then on the other ranks (they load the caches).
"""
from __future__ import annotations

import math
from typing import Any

from megatiny.data.blended_dataset import BlendedDataset, StrideBlend
from megatiny.data.config import Blend, DataConfig
from megatiny.data.gpt_dataset import GPTDataset, default_cache_dir, split_document_ranges
from megatiny.data.indexed_dataset import IndexedDataset
from megatiny.data.sidecar import DatasetSidecar

SPLIT_NAMES = ("train", "valid", "test")


def _split_sequence_range(indexed: IndexedDataset, doc_range: tuple[int, int]) -> tuple[int, int]:
    d = indexed.document_indices
    return int(d[doc_range[0]]), int(d[doc_range[1]])


def _samples_per_dataset(blend: Blend, num_samples: int, config: DataConfig) -> list[int]:
    """How many samples each dataset of a blend must provide."""
    if len(blend) == 1:
        return [num_samples]
    if config.index == "block":     # exact: the blend is a formula
        return StrideBlend([w for w, _ in blend]).taken_before(num_samples)
    # The greedy never draws more than ceil(weight x num_samples) from a dataset; surplus + 1 is margin.
    return [math.ceil(w * num_samples * (1 + config.blend_surplus)) + 1 for w, _ in blend]


def _build_split(blend: Blend, split_name: str, split_index: int | None, split_weights: list[float] | None,
                 num_samples: int, seq_length: int, seed: int, config: DataConfig,
                 vocab_size: int | None = None):
    if num_samples == 0 or not blend:
        if num_samples > 0:
            raise ValueError(f"{split_name}: {num_samples} samples requested but no data path was given "
                             f"for it (set {split_name}_data_path, or data_path with a split)")
        return None
    parts = []
    blend = [(w, p) for w, p in blend if w > 0]   # a zero-weight dataset is never drawn from
    for (_, prefix), n in zip(blend, _samples_per_dataset(blend, num_samples, config)):
        indexed = IndexedDataset(prefix)
        if split_index is None:
            doc_range = (0, indexed.num_documents)
        else:
            doc_range = split_document_ranges(indexed.num_documents, split_weights)[split_index]
            if doc_range[0] == doc_range[1]:
                raise ValueError(f"{prefix}: the {split_name} split {config.split!r} gets no documents of "
                                 f"{indexed.num_documents}; change data.split or ask for 0 {split_name} "
                                 f"samples")
        cache_dir = config.cache_dir or default_cache_dir(prefix)
        # Data without a PREFIX.json sidecar was not checked against the model's vocabulary: check samples.
        limit = vocab_size if vocab_size is not None and DatasetSidecar.read(prefix) is None else None
        parts.append(GPTDataset(indexed, _split_sequence_range(indexed, doc_range), n, seq_length,
                                seed, cache_dir, name=split_name, index=config.index, token_limit=limit))
    if len(parts) == 1:
        return parts[0]
    cache_dir = config.cache_dir or default_cache_dir(blend[0][1])
    return BlendedDataset(parts, [w for w, _ in blend], num_samples, cache_dir, name=split_name,
                          index=config.index)


def build_gpt_datasets(config: DataConfig, seq_length: int, num_samples: tuple[int, int, int] | list[int],
                       seed: int, vocab_size: int | None = None) -> tuple[Any, Any, Any]:
    """(train, valid, test) datasets; `ds[i]` is int64 [seq_length + 1]; None for unused splits.

    vocab_size: the model's; samples of datasets without a sidecar are checked against it."""
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise ValueError(f"num_samples must be three non-negative counts (train, valid, test), "
                         f"got {num_samples}")
    blends = config.blends()
    weights = config.split_weights() if config.uses_split else None
    out = []
    for i, name in enumerate(SPLIT_NAMES):
        split_index = i if config.uses_split else None
        if config.uses_split and weights[i] == 0 and num_samples[i] > 0:
            raise ValueError(f"split: {config.split!r} gives the {name} split no documents, but "
                             f"{num_samples[i]} {name} samples were requested")
        out.append(_build_split(blends[name], name, split_index, weights, int(num_samples[i]), seq_length,
                                seed + i, config, vocab_size))
    return tuple(out)


def describe_datasets(datasets) -> dict[str, Any]:
    """JSON-able description of (train, valid, test) for checkpoint client state."""
    return {name: (ds.describe() if ds is not None else None) for name, ds in zip(SPLIT_NAMES, datasets)}



