"""Attention backends agree with the math reference; backend selection and its fallbacks."""
import pytest
import torch

from megatiny.model import attention
from megatiny.model.attention import KVCache, causal_attention, resolve_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _qkv(b=2, t=11, s=11, h=8, g=2, d=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=gen, dtype=dtype)
    k = torch.randn(b, s, g, d, generator=gen, dtype=dtype)
    v = torch.randn(b, s, g, d, generator=gen, dtype=dtype)
    return q, k, v


def _repeated_kv_reference(q, k, v, window=None):
    """Textbook attention with K/V repeated per query head (HF's repeat_kv), bottom-right causal;
    with a window, query at absolute position p sees keys p - window < j <= p (written out)."""
    h, g = q.shape[2], k.shape[2]
    k = k.repeat_interleave(h // g, dim=2)
    v = v.repeat_interleave(h // g, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.double(), k.double()) / q.shape[-1] ** 0.5
    t, s = q.shape[1], k.shape[1]
    position = torch.arange(s - t, s)[:, None]  # absolute position of each query
    key = torch.arange(s)[None, :]
    allowed = (key <= position) & ((key > position - window) if window is not None else True)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v.double()).to(q.dtype)


def available_backends():
    return ["math", "sdpa"] + (["flash_attn"] if attention.FLASH_ATTN_AVAILABLE else [])


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("heads,groups", [(8, 2), (4, 4), (4, 1)])
@pytest.mark.parametrize("t,s", [(11, 11), (1, 9), (4, 9)])  # full, one decode step, chunked prefill
def test_cpu_backends_match_reference(backend, heads, groups, t, s):
    q, k, v = _qkv(t=t, s=s, h=heads, g=groups)
    out = causal_attention(q, k, v, backend)
    assert out.shape == q.shape
    torch.testing.assert_close(out, _repeated_kv_reference(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("window", [1, 3, 8, 20])
@pytest.mark.parametrize("t,s", [(11, 11), (1, 9), (4, 9)])
def test_sliding_window_matches_the_written_out_mask(backend, window, t, s):
    q, k, v = _qkv(t=t, s=s)
    torch.testing.assert_close(causal_attention(q, k, v, backend, window),
                               _repeated_kv_reference(q, k, v, window), atol=1e-5, rtol=1e-5)


def test_flash_attn_gets_the_window_as_window_size(monkeypatch):
    """(No GPU here: the call flash-attn would receive.) Window w = w - 1 keys left of the diagonal."""
    calls = []
    monkeypatch.setattr(attention, "_flash_attn_func", lambda q, k, v, **kw: calls.append(kw) or q)
    q, k, v = _qkv(t=4, s=9)
    causal_attention(q, k, v, "flash_attn", 5)
    causal_attention(q, k, v, "flash_attn")
    causal_attention(q, k, v, "flash_attn", 9)  # covers every key: plain causal
    assert calls == [{"causal": True, "window_size": (4, 0)}, {"causal": True, "window_size": (-1, -1)},
                     {"causal": True, "window_size": (-1, -1)}]


@pytest.mark.skipif(not (attention.FLASH_ATTN_AVAILABLE and torch.cuda.is_available()),
                    reason="flash-attn and CUDA not available")
@pytest.mark.parametrize("window", [None, 16])
@pytest.mark.parametrize("t", [64, 8, 1])  # full, chunked prefill, one decode step after 63 cached
def test_flash_attn_matches_math_on_cuda(window, t):
    q, k, v = (x.to("cuda", torch.bfloat16) for x in _qkv(t=t, s=64))
    torch.testing.assert_close(causal_attention(q, k, v, "flash_attn", window).float(),
                               causal_attention(q, k, v, "math", window).float(), atol=2e-2, rtol=2e-2)


def test_bf16_sdpa_close_to_math():
    q, k, v = _qkv(dtype=torch.bfloat16)
    torch.testing.assert_close(causal_attention(q, k, v, "sdpa").float(),
                               causal_attention(q, k, v, "math").float(), atol=2e-2, rtol=2e-2)


def test_future_keys_do_not_change_outputs():
    q, k, v = _qkv(t=10, s=10)
    k2, v2 = k.clone(), v.clone()
    k2[:, 6:] += 1.0
    v2[:, 6:] -= 1.0
    for backend in available_backends():
        if backend == "flash_attn":
            continue
        a, b = causal_attention(q, k, v, backend), causal_attention(q, k2, v2, backend)
        torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)
        assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_resolve_backend_auto_prefers_flash_only_on_cuda_half_when_installed():
    assert resolve_backend("auto", CUDA, torch.bfloat16, flash_available=True) == "flash_attn"
    assert resolve_backend("auto", CUDA, torch.float16, flash_available=True) == "flash_attn"
    assert resolve_backend("auto", CUDA, torch.float32, flash_available=True) == "sdpa"
    assert resolve_backend("auto", CPU, torch.bfloat16, flash_available=True) == "sdpa"
    assert resolve_backend("auto", CUDA, torch.bfloat16, flash_available=False) == "sdpa"
    assert resolve_backend("math", CUDA, torch.bfloat16, flash_available=True) == "math"
    assert resolve_backend("sdpa", CUDA, torch.bfloat16, flash_available=True) == "sdpa"
    assert resolve_backend("flash_attn", CUDA, torch.bfloat16, flash_available=True) == "flash_attn"


def test_resolve_backend_explicit_flash_never_falls_back_silently():
    with pytest.raises(RuntimeError, match="not installed"):
        resolve_backend("flash_attn", CUDA, torch.bfloat16, flash_available=False)
    with pytest.raises(RuntimeError, match="CUDA fp16/bf16"):
        resolve_backend("flash_attn", CPU, torch.bfloat16, flash_available=True)
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", CPU, torch.float32)


def test_this_machine_without_flash_attn_resolves_auto_to_sdpa():
    # flash-attn is not installable here; the import guard must leave the module usable.
    if attention.FLASH_ATTN_AVAILABLE:
        pytest.skip("flash-attn is installed")
    assert attention._flash_attn_func is None
    assert resolve_backend("auto", CPU, torch.float32) == "sdpa"


def test_kv_cache_stores_only_kv_groups_and_rejects_overflow():
    cache = KVCache(num_layers=2, batch_size=3, max_length=5, num_groups=2, head_dim=4,
                    dtype=torch.float32, device="cpu")
    assert cache.keys[0].shape == (3, 5, 2, 4)
    k = torch.randn(3, 4, 2, 4)
    keys, values = cache.update(0, k, k + 1)
    assert keys.shape == (3, 4, 2, 4) and torch.equal(keys, k) and torch.equal(values, k + 1)
    cache.advance(4)
    keys, _ = cache.update(1, torch.ones(3, 1, 2, 4), torch.ones(3, 1, 2, 4))
    assert keys.shape == (3, 5, 2, 4)
    cache.advance(1)
    with pytest.raises(ValueError, match="KVCache is full"):
        cache.update(0, torch.ones(3, 1, 2, 4), torch.ones(3, 1, 2, 4))
