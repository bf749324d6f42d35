"""Fixtures for training tests: a tiny learnable corpus -> sentencepiece -> indexed dataset, and a
helper that writes run configs for `tools/train.py`."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml

ANIMALS = ["cat", "dog", "bird", "fox", "cow", "owl", "bee", "ant"]
PLACES = ["house", "garden", "river", "forest", "field", "barn", "hill", "lake"]


def _documents(count: int, seed: int = 0) -> list[str]:
    """Patterned text: each sentence follows a fixed template with a small vocabulary, so a tiny
    model learns it within tens of steps."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(4, 10)):
            a, p = rng.choice(ANIMALS), rng.choice(PLACES)
            n = rng.randint(1, 5)
            sentences.append(f"the {a} walks to the {p} and sees {n} {a}s near the {p} .")
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """{'prefix': indexed dataset prefix, 'tokenizer': sentencepiece .model path}."""
    from megatiny.data.indexed_dataset import IndexedDatasetBuilder, best_dtype
    from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece

    root = tmp_path_factory.mktemp("tiny_data")
    docs = _documents(600)
    model_path = train_sentencepiece(docs, root / "tok", vocab_size=320)
    tokenizer = load_tokenizer(model_path)
    prefix = root / "corpus_text_document"
    with IndexedDatasetBuilder(prefix, dtype=best_dtype(tokenizer.vocab_size)) as builder:
        for doc in docs:
            builder.add_document(np.array(tokenizer.encode(doc) + [tokenizer.eos_id], dtype=np.int64))
    return {"prefix": str(prefix), "tokenizer": str(model_path)}


def write_run_config(path: Path, data: dict[str, str], save_dir: Path, **sections) -> Path:
    """A tiny-test run config (ZeRO-3, precision auto, seq 32, global batch 8) with `sections` merged in."""
    config = {
        "model": {"preset": "tiny-test"},
        "tokenizer": data["tokenizer"],
        "data": {"data_path": data["prefix"], "split": "95,5,0"},
        "batch": {"seq_length": 32, "micro_batch_size": 2, "global_batch_size": 8},
        "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "cpu_adam": False},
        "schedule": {"train_steps": 16, "warmup_steps": 2},
        "checkpoint": {"save_dir": str(save_dir), "save_interval": 8, "resume": "auto"},
        "logging": {"log_interval": 4, "eval_interval": 8, "eval_iters": 2},
        "distributed": {"deepspeed_config": "ds_configs/zero3.json", "timeout_s": 120},
        "seed": 1234,
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **values}
        else:
            config[name] = values
    path.write_text(yaml.safe_dump(config))
    return path
