"""Packed documents: with Megatron's three document options on, each document of a packed sample
gets the logits and per-token losses it gets alone (positions from 0); with them off, the model
is unchanged."""
import pytest
import torch
import torch.nn.functional as F

import megatiny.model.attention as attention
from megatiny.data.document_mask import DocumentMasking, document_inputs
from megatiny.model import GPT, ModelRuntime, get_preset

EOD = 2
ALL_ON = DocumentMasking(EOD, reset_attention_mask=True, reset_position_ids=True, eod_mask_loss=True)
TOLERANCE = 1e-5
# A sample that starts mid-document (5 tokens + EOD), then a whole document (7 + EOD), an
# empty one (EOD alone) and a document cut by the sample's end (4 tokens, no EOD).
DOCUMENT_LENGTHS = [(5, True), (7, True), (0, True), (4, False)]


def documents(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for length, has_eod in DOCUMENT_LENGTHS:
        tokens = torch.randint(3, 512, (length,), generator=generator)
        out.append(torch.cat((tokens, torch.tensor([EOD]))) if has_eod else tokens)
    return out


def model(backend: str, checkpointing: int = 0) -> GPT:
    torch.manual_seed(0)
    return GPT(get_preset("tiny-test"), runtime=ModelRuntime(attention_backend=backend,
                                                             activation_checkpointing=checkpointing))


def rel(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).abs().max() / reference.double().abs().max())


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_each_packed_document_equals_the_document_alone(backend):
    gpt = model(backend)
    docs = documents()
    packed = torch.cat(docs)[None]                        # [1, 17]
    next_token = torch.cat((packed[0, 1:], torch.tensor([7])))[None]  # labels of the packed sample
    extra = document_inputs(packed, ALL_ON)
    with torch.no_grad():
        logits = gpt(packed, position_ids=extra.position_ids, document_ids=extra.document_ids)[0]
        start = 0
        per_token_packed = F.cross_entropy(logits, next_token[0], reduction="none")
        for doc in docs:
            alone = gpt(doc[None])[0]
            assert rel(logits[start:start + len(doc)], alone) < TOLERANCE
            # per-token losses inside the document (its last token's label lies outside it)
            inside = F.cross_entropy(alone[:-1], doc[1:], reduction="none")
            assert len(doc) == 1 or rel(per_token_packed[start:start + len(doc) - 1], inside) < TOLERANCE
            start += len(doc)
        # The fused loss with the EOD loss mask = the mean over the non-EOD inputs.
        loss = gpt(packed, labels=next_token, loss_mask=extra.loss_mask,
                   position_ids=extra.position_ids, document_ids=extra.document_ids)
    keep = packed[0] != EOD
    assert rel(loss, per_token_packed[keep].mean()) < TOLERANCE


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_options_off_is_todays_path_and_options_on_change_the_result(backend):
    gpt = model(backend)
    packed = torch.cat(documents())[None].repeat(2, 1)
    with torch.no_grad():
        today = gpt(packed)
        off = document_inputs(packed, None)
        assert torch.equal(gpt(packed, position_ids=off.position_ids, document_ids=off.document_ids), today)
        on = document_inputs(packed, ALL_ON)
        masked = gpt(packed, position_ids=on.position_ids, document_ids=on.document_ids)
    assert rel(masked[:, :6], today[:, :6]) < TOLERANCE     # the first document sees nothing else
    assert rel(masked[:, 6:], today[:, 6:]) > 1e-3          # the later ones did see it


def test_gradients_with_activation_checkpointing_equal_without():
    packed = torch.cat(documents())[None].repeat(2, 1)
    labels = torch.roll(packed, -1, dims=1)
    extra = document_inputs(packed, ALL_ON)
    grads = []
    for checkpointing in (0, 1):
        gpt = model("sdpa", checkpointing)
        gpt(packed, labels=labels, loss_mask=extra.loss_mask, position_ids=extra.position_ids,
            document_ids=extra.document_ids).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in gpt.parameters()]))
    assert rel(grads[1], grads[0]) < TOLERANCE


@pytest.mark.parametrize("window", [None, 2])
def test_varlen_boundaries_and_the_flash_code_path_on_cpu(monkeypatch, window):
    """flash-attn's varlen path, with its kernel replaced by per-document causal math attention;
    with a sliding window too (Mistral-style models trained on packed documents)."""
    document_ids = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]])
    cu_seqlens, longest = attention.varlen_boundaries(document_ids)
    assert cu_seqlens.tolist() == [0, 2, 5, 6, 8, 10] and cu_seqlens.dtype == torch.int32
    assert longest == 3

    def varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, causal, window_size=(-1, -1)):
        assert causal and torch.equal(cu_q, cu_k)
        keys_left = None if window_size[0] < 0 else window_size[0] + 1
        out = torch.empty_like(q)
        for lo, hi in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            out[lo:hi] = attention.causal_attention(q[None, lo:hi], k[None, lo:hi], v[None, lo:hi], "math",
                                                    keys_left)[0]
        return out

    monkeypatch.setattr(attention, "_flash_attn_varlen_func", varlen_reference)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, 8, generator=generator)
    k, v = torch.randn(2, 5, 2, 8, generator=generator), torch.randn(2, 5, 2, 8, generator=generator)
    flash = attention.causal_attention(q, k, v, "flash_attn", window, document_ids=document_ids)
    for backend in ("sdpa", "math"):
        ours = attention.causal_attention(q, k, v, backend, window, document_ids=document_ids)
        assert rel(ours, flash) < TOLERANCE
    if window is not None:  # the window matters here: the 3-token document's last query
        assert rel(attention.causal_attention(q, k, v, "math", document_ids=document_ids), flash) > 1e-3


def test_document_inputs_are_refused_with_a_kv_cache():
    gpt = model("sdpa")
    ids = torch.tensor([[5, EOD, 6]])
    with pytest.raises(ValueError, match="kv_cache"):
        gpt(ids, document_ids=torch.zeros_like(ids), kv_cache=gpt.new_kv_cache(1, 8))
    with pytest.raises(ValueError, match="document_ids must cover"):
        gpt(ids, document_ids=torch.zeros(1, 2, dtype=torch.long))


def test_reset_position_ids_alone_moves_the_rope_positions():
    """With attention kept inside documents RoPE's relative form hides the positions, so this
    checks them with reset_position_ids alone: arange positions are today's result, restarted
    ones change every token after the first EOD and none before it."""
    gpt = model("sdpa")
    docs = documents()
    packed = torch.stack((torch.cat(docs), torch.cat(docs[::-1])))  # two rows, different documents
    only_positions = document_inputs(packed, DocumentMasking(EOD, reset_position_ids=True))
    with torch.no_grad():
        today = gpt(packed)
        arange = gpt(packed, position_ids=torch.arange(packed.shape[1]).expand_as(packed))
        restarted = gpt(packed, position_ids=only_positions.position_ids)
    assert rel(arange, today) < TOLERANCE
    for row in range(2):
        first = int((packed[row] == EOD).nonzero()[0]) + 1  # tokens through the first EOD
        assert rel(restarted[row, :first], today[row, :first]) < TOLERANCE
        assert (restarted[row, first:] - today[row, first:]).abs().amax(dim=-1).min() > 1e-4
