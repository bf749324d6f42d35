"""The chunked, LM-head-fused cross entropy equals the naive full-logits loss and its gradients."""
import pytest
import torch

from megatiny.model.loss import cross_entropy_reference, default_chunk_size, linear_cross_entropy


def _inputs(n=37, h=16, v=53, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * 0.3).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen)
    mask = (torch.rand(n, generator=gen) > 0.3).float()
    return hidden, weight, labels, mask


def _loss_and_grads(fn, hidden, weight):
    hidden.grad = weight.grad = None
    loss = fn()
    (loss * 2.5).backward()  # a non-unit upstream gradient must be applied too
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
@pytest.mark.parametrize("use_mask", [False, True])
def test_chunked_equals_naive_loss_and_gradients(chunk, use_mask):
    hidden, weight, labels, mask = _inputs()
    mask = mask if use_mask else None
    ours = _loss_and_grads(lambda: linear_cross_entropy(hidden, weight, labels, mask, chunk),
                           hidden, weight)
    naive = _loss_and_grads(lambda: cross_entropy_reference(hidden @ weight.t(), labels, mask),
                            hidden, weight)
    for a, b in zip(ours, naive):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_masked_tokens_and_ignore_index_do_not_contribute():
    hidden, weight, labels, mask = _inputs()
    full = linear_cross_entropy(hidden, weight, labels, mask)
    # Changing a masked token's label changes nothing; -100 acts as a mask too.
    masked = torch.nonzero(mask == 0)[0, 0]
    other = labels.clone()
    other[masked] = (labels[masked] + 1) % weight.shape[0]
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, other, mask), full)
    ignored = labels.clone()
    ignored[mask == 0] = -100
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, ignored), full)


def test_all_masked_gives_zero_loss_not_nan():
    hidden, weight, labels, _ = _inputs()
    loss = linear_cross_entropy(hidden, weight, labels, torch.zeros(labels.shape))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(hidden.grad == 0)


def test_bf16_inputs_give_fp32_loss_close_to_fp32():
    hidden, weight, labels, mask = _inputs()
    ref = linear_cross_entropy(hidden, weight, labels, mask)
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    loss = linear_cross_entropy(h16, w16, labels, mask, chunk_size=8)
    loss.backward()
    assert loss.dtype == torch.float32 and w16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref.detach(), atol=0.02, rtol=0.01)


def test_no_grad_path_and_default_chunk():
    hidden, weight, labels, mask = _inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, labels, mask)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, cross_entropy_reference(hidden @ weight.t(), labels, mask).detach())
    assert default_chunk_size(32000) == 262 and default_chunk_size(10) == 838860
