"""Document boundaries of packed samples equal Megatron's `get_ltor_masks_and_position_ids`.

The cases are written out by hand (EOD = 2), and a slow loop over the EODs, a transcription of
Megatron's definitions (not of its code), checks random samples too."""
import pytest
import torch

from megatiny.data.config import DataConfig
from megatiny.data.document_mask import (
    DocumentMasking,
    dense_attention_mask,
    document_inputs,
    resolve_eod_token_id,
)

EOD = 2
ALL_ON = DocumentMasking(EOD, reset_attention_mask=True, reset_position_ids=True, eod_mask_loss=True)

# name: (input tokens, document ids, position ids, loss mask)
CASES = {
    "starts and ends mid-document": ([5, 6, EOD, 7, 8, EOD, 9],
                                     [0, 0, 0, 1, 1, 1, 2], [0, 1, 2, 0, 1, 2, 0], [1, 1, 0, 1, 1, 0, 1]),
    "starts with the EOD of the previous document": ([EOD, 5, 6, 7],
                                                      [0, 1, 1, 1], [0, 0, 1, 2], [0, 1, 1, 1]),
    "consecutive EODs": ([5, EOD, EOD, 6, EOD],
                         [0, 0, 1, 2, 2], [0, 1, 0, 0, 1], [1, 0, 0, 1, 0]),
    "no EOD": ([5, 6, 7, 8], [0, 0, 0, 0], [0, 1, 2, 3], [1, 1, 1, 1]),
    "ends with an EOD": ([5, 6, EOD], [0, 0, 0], [0, 1, 2], [1, 1, 0]),
}


def megatron_reference(tokens: list[int], eod: int):
    """Megatron's definitions, one EOD at a time: for an EOD at i, no token after i may attend
    to positions 0..i, and positions after i are shifted back to start at 0. Returns the dense
    bool mask [T, T] (True = may attend), position ids and loss mask."""
    t = len(tokens)
    allowed = torch.ones(t, t, dtype=torch.bool).tril()
    positions = list(range(t))
    previous_start = 0
    for i, token in enumerate(tokens):
        if token != eod:
            continue
        allowed[i + 1:, :i + 1] = False
        for j in range(i + 1, t):
            positions[j] -= i + 1 - previous_start
        previous_start = i + 1
    loss_mask = [0.0 if token == eod else 1.0 for token in tokens]
    return allowed, positions, loss_mask


@pytest.mark.parametrize("name", list(CASES))
def test_written_out_cases(name):
    tokens, documents, positions, loss_mask = CASES[name]
    out = document_inputs(torch.tensor([tokens]), ALL_ON)
    assert out.document_ids[0].tolist() == documents
    assert out.position_ids[0].tolist() == positions
    assert out.loss_mask[0].tolist() == loss_mask
    mask, ref_positions, ref_loss = megatron_reference(tokens, EOD)
    assert torch.equal(dense_attention_mask(out.document_ids[0], len(tokens)), mask)
    assert ref_positions == positions and ref_loss == loss_mask


def test_dense_mask_written_out():
    """[5, EOD, 6, EOD, EOD, 7]: documents [5, EOD], [6, EOD], [EOD], [7]."""
    out = document_inputs(torch.tensor([5, EOD, 6, EOD, EOD, 7]), ALL_ON)
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [0, 0, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0],
                             [0, 0, 0, 0, 1, 0],
                             [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(dense_attention_mask(out.document_ids, 6), expected)


def test_random_batches_equal_megatron_row_by_row():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (16, 40), generator=generator)  # EOD = 2: about one in six
    out = document_inputs(tokens, ALL_ON)
    for row in range(tokens.shape[0]):
        mask, positions, loss_mask = megatron_reference(tokens[row].tolist(), EOD)
        assert torch.equal(dense_attention_mask(out.document_ids[row], 40), mask), row
        assert out.position_ids[row].tolist() == positions, row
        assert out.loss_mask[row].tolist() == loss_mask, row


def test_each_option_alone_and_none():
    tokens = torch.tensor([[5, EOD, 6]])
    assert document_inputs(tokens, None) == document_inputs(tokens, None)
    off = document_inputs(tokens, None)
    assert (off.position_ids, off.document_ids, off.loss_mask) == (None, None, None)
    only_positions = document_inputs(tokens, DocumentMasking(EOD, reset_position_ids=True))
    assert only_positions.document_ids is None and only_positions.loss_mask is None
    assert only_positions.position_ids.tolist() == [[0, 1, 0]]
    only_mask = document_inputs(tokens, DocumentMasking(EOD, reset_attention_mask=True))
    assert only_mask.position_ids is None and only_mask.document_ids.tolist() == [[0, 0, 1]]
    only_loss = document_inputs(tokens, DocumentMasking(EOD, eod_mask_loss=True))
    assert only_loss.loss_mask.tolist() == [[1.0, 0.0, 1.0]] and only_loss.document_ids is None


def test_config_fields_and_eod_resolution(tmp_path):
    assert DocumentMasking.from_data_config(DataConfig(data_path="x")) is None
    config = DataConfig(data_path="x", reset_attention_mask=True, eod_token_id=7)
    assert DocumentMasking.from_data_config(config) == DocumentMasking(7, reset_attention_mask=True)
    assert resolve_eod_token_id(config) == 7
    missing = DataConfig(data_path=str(tmp_path / "nothing"), eod_mask_loss=True)
    assert resolve_eod_token_id(missing) is None
    with pytest.raises(ValueError, match="data.eod_token_id"):
        DocumentMasking.from_data_config(missing)
    with pytest.raises(ValueError, match="data.reset_position_ids"):
        DataConfig(data_path="x", reset_position_ids="yes")
    with pytest.raises(ValueError, match="data.eod_token_id"):
        DataConfig(data_path="x", eod_token_id=-1)
