"""Optional fused kernels: import guards and the reference fallbacks used without them."""
import pytest
import torch

from megatiny.model import kernels


def test_fused_kernels_are_guarded_and_cpu_uses_the_reference():
    # On CPU the fused paths are never taken, installed or not.
    x = torch.randn(2, 5, 3, 8)
    w = torch.rand(8) + 0.5
    assert torch.equal(kernels.rms_norm(x, w, 1e-5), kernels.rms_norm_reference(x, w, 1e-5))
    cos, sin = kernels.rope_cos_sin(torch.arange(5), 8, 10000.0, torch.float32)
    assert torch.equal(kernels.apply_rotary(x, cos, sin), kernels.apply_rotary_reference(x, cos, sin))
    assert kernels.FUSED_RMS_NORM_AVAILABLE == (kernels._fused_rms_norm is not None)
    assert kernels.FUSED_ROTARY_AVAILABLE == (kernels._fused_rotary is not None)


def test_rms_norm_reference_definition():
    x = torch.randn(4, 16, dtype=torch.float64)
    w = torch.rand(16, dtype=torch.float64)
    expected = w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(kernels.rms_norm_reference(x, w, 1e-6), expected)


def test_rotary_is_a_rotation_of_half_pairs_by_position_angle():
    d, theta = 8, 10000.0
    x = torch.randn(1, 6, 2, d, dtype=torch.float64)
    positions = torch.arange(6)
    cos, sin = kernels.rope_cos_sin(positions, d, theta, torch.float64)
    out = kernels.apply_rotary(x, cos, sin)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # rotations preserve norms
    i = 1  # pair (i, i + d/2) at position p rotates by p * theta^(-2i/d)
    for p in range(6):
        angle = torch.tensor(p * theta ** (-2 * i / d), dtype=torch.float64)
        a, b = x[0, p, :, i], x[0, p, :, i + d // 2]
        torch.testing.assert_close(out[0, p, :, i], a * angle.cos() - b * angle.sin())
        torch.testing.assert_close(out[0, p, :, i + d // 2], b * angle.cos() + a * angle.sin())
    # relative-position property: <rope(q, m), rope(k, n)> depends only on m - n
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def dot_at(m, n):
        c, s = kernels.rope_cos_sin(torch.tensor([m, n]), d, theta, torch.float64)
        both = kernels.apply_rotary(torch.stack([q, k])[None, :, None, :], c, s)[0, :, 0]
        return (both[0] * both[1]).sum()

    # the angles are fp32 (as HF computes them): agreement to ~1e-6, not float64 precision
    torch.testing.assert_close(dot_at(5, 2), dot_at(13, 10), rtol=1e-5, atol=1e-6)


def _rms(x, w):
    return kernels.rms_norm(x, w, 1e-5), kernels.rms_norm_reference(x, w, 1e-5)


def _rotary(x, w):
    cos, sin = kernels.rope_cos_sin(torch.arange(x.shape[1], device=x.device), x.shape[-1], 10000.0, x.dtype)
    return kernels.apply_rotary(x * w, cos, sin), kernels.apply_rotary_reference(x * w, cos, sin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name, ops, available", [("rms_norm", _rms, kernels.FUSED_RMS_NORM_AVAILABLE),
                                                   ("rotary", _rotary, kernels.FUSED_ROTARY_AVAILABLE)])
def test_fused_kernel_matches_reference_on_cuda(name, ops, available, dtype):
    """On CUDA with the optional package the fused kernel runs: same outputs and gradients."""
    if not (torch.cuda.is_available() and available):
        pytest.skip(f"fused {name} needs CUDA and its optional package")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 17, 4, 64, device="cuda", generator=gen).to(dtype)
    w = (torch.rand(64, device="cuda", generator=gen) + 0.5).to(dtype)
    results = []
    for index in range(2):  # 0: fused path, 1: reference
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = ops(xi, wi)[index]
        out.float().square().sum().backward()
        results.append((out.detach(), xi.grad, wi.grad))
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
    for fused, reference in zip(*results):
        torch.testing.assert_close(fused.float(), reference.float(), **tol)
