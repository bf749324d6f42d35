"""Shared fixtures for evaluation tests: a real sentencepiece tokenizer and a briefly trained tiny GPT.

The model is trained for a few seconds on the bundled multiple-choice facts so its log-likelihoods
are far from uniform (near-ties between choices would make accuracy comparisons fragile).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from megatiny.checkpoint.metadata import TrainState, write_metadata
from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece
from megatiny.eval.tasks import BUNDLED_TASKS_DIR
from megatiny.eval.tasks.local_data import read_jsonl
from megatiny.model import GPT, get_preset

DATA_DIR = Path(__file__).resolve().parent / "data"


def training_texts() -> list[str]:
    items = read_jsonl(BUNDLED_TASKS_DIR / "megatiny_local_mc.jsonl")
    texts = [f"Question: {d['question']}\nAnswer: {d['choices'][d['answer']]}" for d in items]
    texts += [f"Question: {d['question']}\nAnswer: {d['answer']}."
              for d in read_jsonl(DATA_DIR / "megatiny_test_gen.jsonl")]
    texts += [d["text"] for d in read_jsonl(DATA_DIR / "megatiny_test_rolling.jsonl")]
    return texts


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    texts = training_texts()
    return train_sentencepiece(texts * 3, tmp_path_factory.mktemp("tokenizer") / "spm", vocab_size=512)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    return load_tokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def trained_model(tokenizer) -> GPT:
    """tiny-test GPT (2 layers, hidden 64, context 128) after 80 Adam steps on the task texts."""
    torch.manual_seed(0)
    config = get_preset("tiny-test", vocab_size=tokenizer.vocab_size)
    model = GPT(config)
    stream = []
    for text in training_texts():
        stream += [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
    data = torch.tensor(stream, dtype=torch.long)
    seq, batch = 64, 16
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
        sample = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
        loss = model(sample[:, :-1], labels=sample[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory, trained_model, tokenizer_path) -> Path:
    """A consolidated megatiny weights directory: megatiny.json + model.safetensors (HF names)."""
    out = tmp_path_factory.mktemp("weights")
    state = {k: v.detach().clone().contiguous() for k, v in trained_model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    write_metadata(out, trained_model.config, tokenizer=str(tokenizer_path), state=TrainState(step=80),
                   notes={"note": "tests/eval fixture"})
    return out


def instances(request_type: str, arguments: list[tuple]) -> list:
    """lm-eval request objects as the evaluator builds them."""
    from lm_eval.api.instance import Instance

    return [Instance(request_type=request_type, doc={}, arguments=args, idx=i)
            for i, args in enumerate(arguments)]
