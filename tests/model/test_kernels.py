"""Optional fused kernels: import guards and the reference fallbacks used without them."""
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

    torch.testing.assert_close(dot_at(5, 2), dot_at(13, 10))
