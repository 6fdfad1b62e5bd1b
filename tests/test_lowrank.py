"""Low-rank: error monotone in rank, exact at full rank, activation-aware beats plain SVD."""
import pytest
import torch

from toggle.compress.lowrank import LowRankLinear, rank_for
from toggle.compress.registry import factorise, low_rank
from toggle.compress.quant import output_error


def _w(out_f=48, in_f=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Decaying spectrum, like trained weights.
    u, _ = torch.linalg.qr(torch.randn(out_f, out_f, generator=g))
    v, _ = torch.linalg.qr(torch.randn(in_f, in_f, generator=g))
    s = torch.exp(-torch.arange(min(out_f, in_f)) / 10.0)
    return (u[:, : len(s)] * s) @ v[:, : len(s)].T


def _gram(in_f=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4096, in_f, generator=g) * torch.linspace(0.1, 5, in_f)
    return x.T @ x / 4096


@pytest.mark.parametrize("method", ["svd", "asvd"])
def test_error_falls_with_rank_and_vanishes_at_full_rank(method):
    w, gram = _w(), _gram()
    factors = factorise(w, method, gram)
    errors = []
    for ratio in (0.1, 0.25, 0.5, 0.75, 1.0):
        a, b = factors.truncate(rank_for(ratio, 48, 64))
        assert a.shape == (48, rank_for(ratio, 48, 64)) and b.shape == (rank_for(ratio, 48, 64), 64)
        errors.append(float((a @ b - w).norm() / w.norm()))
    assert all(x > y for x, y in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4


def test_activation_aware_svd_has_lower_output_error():
    w, gram = _w(), _gram()
    for ratio in (0.25, 0.5):
        a, b = low_rank(w, "svd", ratio)
        a2, b2 = low_rank(w, "asvd", ratio, gram)
        assert output_error(w, a2 @ b2, gram) < 0.9 * output_error(w, a @ b, gram)
    with pytest.raises(ValueError, match="needs calibration activation statistics"):
        factorise(w, "asvd")


def test_rank_for_and_the_two_factor_module():
    assert rank_for(0.5, 48, 64) == 24
    assert rank_for(0.001, 48, 64) == 1
    assert rank_for(1.0, 48, 64) == 48
    layer = LowRankLinear(64, 48, 8, bias=True)
    assert layer.down.weight.shape == (8, 64) and layer.up.weight.shape == (48, 8)
    x = torch.randn(3, 64)
    expected = x @ layer.down.weight.T @ layer.up.weight.T + layer.up.bias
    torch.testing.assert_close(layer(x), expected)
    assert sum(p.numel() for p in layer.parameters()) == 8 * 64 + 48 * 8 + 48  # really two factors
