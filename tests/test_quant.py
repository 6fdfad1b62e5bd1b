"""Quantisation: error monotone in bits, exact GGUF rules, packing, outlier-aware methods."""
import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toggle.compress.packing import pack_bits, unpack_bits
from toggle.compress.registry import quantize
from toggle.compress.quant import (QuantConfig, output_error, quantize_awq, quantize_gptq,
                                   quantize_rtn)


def _weights(out_f=96, in_f=200, seed=0):
    """Heavy-tailed weights with a few outlier input channels, like real LLM layers."""
    g = torch.Generator().manual_seed(seed)
    w = torch.distributions.StudentT(4.0).sample((out_f, in_f)) * 0.02
    w[:, torch.randint(0, in_f, (4,), generator=g)] *= 15
    return w


def _rel_error(w, q):
    return float((q.dequantize() - w).norm() / w.norm())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [128, 32, -1])
def test_error_never_grows_with_more_bits(symmetric, group_size):
    w = _weights()
    errors = [_rel_error(w, quantize_rtn(w, QuantConfig(b, group_size, symmetric))) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.03  # 8 bits is close to lossless, 2 bits is not
    assert errors[0] > 0.2


def test_codes_scales_and_partial_groups():
    w = _weights(out_f=8, in_f=72)  # 72 = 2 groups of 32 and a partial group of 8
    q = quantize_rtn(w, QuantConfig(3, 32, symmetric=False))
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (8, 72)
    assert int(q.codes.max()) <= 7
    assert q.scales.shape == (8, 3) and q.scales.dtype == torch.float16 and q.mins.shape == (8, 3)
    # Asymmetric: every group's minimum and maximum are representable (codes 0 and 7 are used).
    assert int(q.codes[:, 64:].min()) == 0 and int(q.codes[:, 64:].max()) == 7
    per_channel = quantize_rtn(w, QuantConfig(4, -1, symmetric=True))
    assert per_channel.scales.shape == (8, 1) and per_channel.mins is None


def test_symmetric_keeps_zeros_and_constant_groups_are_finite():
    w = _weights(out_f=4, in_f=64)
    w[:, ::3] = 0
    w[0] = 0.5  # a constant row: zero range
    for bits in range(2, 9):
        deq = quantize_rtn(w, QuantConfig(bits, 32, symmetric=True)).dequantize()
        assert torch.isfinite(deq).all()
        assert torch.all(deq[1:, ::3] == 0)
        asym = quantize_rtn(w, QuantConfig(bits, 32, symmetric=False)).dequantize()
        assert torch.isfinite(asym).all()
        assert torch.allclose(asym[0], torch.full((64,), 0.5), atol=1e-3)


@pytest.mark.parametrize("qtype,bits,symmetric", [("Q4_0", 4, True), ("Q4_1", 4, False), ("Q5_0", 5, True),
                                                  ("Q5_1", 5, False), ("Q8_0", 8, True)])
def test_group_32_is_bit_exact_with_the_gguf_reference(qtype, bits, symmetric):
    """At group size 32 our rules are llama.cpp's: same decoded values and same block bytes."""
    from toggle.formats.gguf import gguf_blocks

    w = _weights(out_f=16, in_f=128)
    kind = gguf.GGMLQuantizationType[qtype]
    reference = gguf.quants.quantize(w.numpy(), kind)
    q = quantize_rtn(w, QuantConfig(bits, 32, symmetric))
    np.testing.assert_array_equal(gguf_blocks(q, qtype), reference)
    np.testing.assert_array_equal(q.dequantize().numpy(), gguf.quants.dequantize(reference, kind))


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), count=st.integers(1, 300), seed=st.integers(0, 10_000))
def test_bit_packing_round_trip(bits, count, seed):
    codes = torch.randint(0, 1 << bits, (count,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.numel() == -(-count * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, count), codes)


def _calibration(in_f=128, tokens=2048, seed=1):
    """Correlated inputs with a few channels 20x larger than the rest (activation outliers)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(in_f, in_f, generator=g) / in_f ** 0.5 + 0.3 * torch.eye(in_f)
    x = torch.randn(tokens, in_f, generator=g) @ mixing
    x[:, :4] *= 20
    return x, x.T @ x / tokens


@pytest.mark.parametrize("bits", [3, 4])
def test_awq_and_gptq_beat_rtn_on_the_output_error(bits):
    w = _weights(out_f=64, in_f=128)
    _, gram = _calibration()
    cfg = QuantConfig(bits, 32, symmetric=False)
    rtn = output_error(w, quantize_rtn(w, cfg).dequantize(), gram)
    awq = quantize_awq(w, cfg, gram)
    gptq = quantize_gptq(w, cfg, gram)
    assert awq.input_scales is not None and awq.input_scales.shape == (128,)
    assert output_error(w, awq.dequantize(), gram) < 0.8 * rtn
    assert output_error(w, gptq.dequantize(), gram) < 0.6 * rtn
    # GPTQ stores exactly what RTN stores: codes within range plus float16 scales and minimums.
    assert int(gptq.codes.max()) < 2 ** bits and gptq.scales.shape == (64, 4)


def test_gptq_with_a_mask_keeps_pruned_weights_at_zero():
    w = _weights(out_f=32, in_f=64)
    _, gram = _calibration(in_f=64)
    mask = torch.rand(32, 64, generator=torch.Generator().manual_seed(3)) > 0.5
    for symmetric in (True, False):
        q = quantize_gptq(w * mask, QuantConfig(4, 32, symmetric), gram, mask=mask)
        deq = q.dequantize() * mask
        assert torch.all(deq[~mask] == 0)
        if symmetric:  # zero is a code: no mask needed to decode the zeros
            assert torch.all(q.dequantize()[~mask] == 0)


def test_methods_needing_statistics_say_so():
    w = _weights(out_f=8, in_f=32)
    with pytest.raises(ValueError, match="awq needs calibration activation statistics"):
        quantize(w, QuantConfig(4, 32, method="awq"))
    with pytest.raises(ValueError, match="bits must be 2..8"):
        QuantConfig(9)


@pytest.mark.parametrize("symmetric", [False, True])
def test_quantised_scales_decode_as_stored_and_cost_little_accuracy(symmetric):
    from toggle.compress.quant import ParamCodes

    w = _weights(out_f=64, in_f=256)
    float16 = _rel_error(w, quantize_rtn(w, QuantConfig(4, 32, symmetric)))
    errors = {}
    for sb in (8, 6, 3):
        q = quantize_rtn(w, QuantConfig(4, 32, symmetric, scale_bits=sb))
        assert set(q.params) == ({"scales"} if symmetric else {"scales", "mins"})
        for key, p in q.params.items():
            assert p.codes.dtype == torch.uint8 and p.codes.shape == (64, 8) and int(p.codes.max()) < 2 ** sb
            assert p.step.dtype == p.base.dtype == torch.float16 and p.step.shape == (64,)
            # The matrix decodes from exactly what a loader rebuilds from the stored codes.
            rebuilt = ParamCodes(codes=p.codes.clone(), step=p.step.clone(), base=p.base.clone(), bits=sb).decode()
            assert torch.equal(getattr(q, key), rebuilt)
        errors[sb] = _rel_error(w, q)
    # 8-bit scales are nearly free, fewer bits cost more; never a collapse
    assert errors[8] < 1.02 * float16 and errors[8] <= errors[6] < errors[3] < 0.5, (float16, errors)
    if symmetric:  # zero stays exactly representable
        w0 = w.clone()
        w0[:, ::5] = 0
        assert torch.all(quantize_rtn(w0, QuantConfig(4, 32, True, scale_bits=6)).dequantize()[:, ::5] == 0)


def test_gptq_with_quantised_scales_stays_on_the_row_grid_and_beats_rtn():
    w = _weights(out_f=48, in_f=128, seed=1)
    x = torch.randn(512, 128) * torch.linspace(0.2, 3.0, 128)
    gram = x.T @ x / 512
    cfg = QuantConfig(3, 32, False, scale_bits=6)
    rtn, g = quantize_rtn(w, cfg), quantize_gptq(w, cfg, gram)
    for key in ("scales", "mins"):
        assert torch.equal(g.params[key].step, rtn.params[key].step)  # the grid RTN chose for the rows
        assert torch.equal(getattr(g, key), g.params[key].decode())
    assert output_error(w, g.dequantize(), gram) < output_error(w, rtn.dequantize(), gram)
    with pytest.raises(ValueError, match="scale_bits"):
        QuantConfig(4, 32, scale_bits=12)
