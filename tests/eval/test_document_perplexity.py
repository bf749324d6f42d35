"""Perplexity with the document options a checkpoint trained with."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatiny.data.document_mask import DocumentMasking, document_inputs
from megatiny.eval.perplexity import checkpoint_document_masking, evaluate_perplexity
from megatiny.model import GPT, ModelRuntime, get_preset

EOD = 2
ALL_ON = DocumentMasking(EOD, reset_attention_mask=True, reset_position_ids=True, eod_mask_loss=True)


def test_perplexity_with_document_options_counts_only_non_eod_inputs():
    generator = np.random.default_rng(0)
    samples = [np.where(generator.random(17) < 0.2, EOD, generator.integers(3, 512, 17)) for _ in range(3)]
    torch.manual_seed(0)
    gpt = GPT(get_preset("tiny-test"), runtime=ModelRuntime(attention_backend="sdpa"))
    result = evaluate_perplexity(gpt, samples, batch_size=2, masking=ALL_ON)
    ids = torch.from_numpy(np.stack(samples))
    inputs, labels = ids[:, :-1], ids[:, 1:]
    doc = document_inputs(inputs, ALL_ON)
    with torch.no_grad():
        logits = gpt(inputs, position_ids=doc.position_ids, document_ids=doc.document_ids)
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    keep = inputs.reshape(-1) != EOD
    assert result.tokens == int(keep.sum()) < labels.numel()
    assert result.loss == pytest.approx(float(per_token[keep].mean()), rel=1e-5)
    plain = evaluate_perplexity(gpt, samples, batch_size=2)
    assert plain.tokens == labels.numel() and abs(plain.loss - result.loss) > 1e-3


def test_the_options_come_from_the_checkpoints_run_config():
    def metadata(data):
        return {"train_state": SimpleNamespace(run_config={"data": data})}
    assert checkpoint_document_masking({}) is None
    assert checkpoint_document_masking(metadata({"reset_attention_mask": False})) is None
    assert checkpoint_document_masking(metadata({"reset_position_ids": True, "eod_token_id": 5})) \
        == DocumentMasking(5, reset_position_ids=True)
    with pytest.raises(ValueError, match="eod_token_id"):
        checkpoint_document_masking(metadata({"eod_mask_loss": True}))
