"""Pruning: exact per-row sparsity, nested masks from one ordering, Wanda, 2:4."""
import pytest
import torch

from toggle.compress.prune import PruneConfig, keep_mask, kept_per_row, pattern_problem
from toggle.compress.registry import method
from toggle.compress.registry import prune_matrix as prune
from toggle.compress.registry import prune_order


def _w(out_f=16, in_f=40, seed=0):
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))


def test_every_row_keeps_the_same_count_and_the_largest_weights():
    w = _w()
    pruned, mask = prune(w, PruneConfig("magnitude"), 0.3)
    keep = kept_per_row(40, 0.3)
    assert keep == 28
    assert torch.all(mask.sum(dim=1) == keep)
    assert torch.all(pruned[~mask] == 0) and torch.equal(pruned[mask], w[mask])
    # Every kept weight is at least as large as every pruned weight of its row.
    for row in range(16):
        assert w[row][mask[row]].abs().min() >= w[row][~mask[row]].abs().max()


def test_one_ordering_gives_nested_masks_and_monotone_error():
    w = _w()
    order = prune_order(w, PruneConfig("magnitude"))
    assert order.dtype == torch.int16
    ratios = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9]
    masks = [keep_mask(order, s) for s in ratios]
    errors = [float((w * m - w).norm()) for m in masks]
    assert errors[0] == 0
    assert all(a < b for a, b in zip(errors, errors[1:]))
    for looser, tighter in zip(masks, masks[1:]):
        assert torch.all(looser | ~tighter)  # kept at higher sparsity => kept at lower sparsity


def test_wanda_weighs_by_input_channel_norm():
    w = torch.ones(4, 8)
    w[:, 0] = 0.5  # small weights...
    norm = torch.ones(8)
    norm[0] = 100.0  # ...on a channel with large activations
    _, magnitude_mask = prune(w, PruneConfig("magnitude"), 0.125)
    _, wanda_mask = prune(w, PruneConfig("wanda"), 0.125, channel_norm=norm)
    assert not magnitude_mask[:, 0].any()  # magnitude drops the small weights
    assert wanda_mask[:, 0].all()  # Wanda keeps them: |W| * ||x|| is large
    with pytest.raises(ValueError, match="Wanda pruning needs the input channel norms"):
        prune(w, PruneConfig("wanda"), 0.5)


def test_two_four_pattern():
    w = _w(8, 32)
    pruned, mask = prune(w, PruneConfig("magnitude", "2:4"), 0.5)
    groups = mask.reshape(8, 8, 4)
    assert torch.all(groups.sum(-1) == 2)
    kept_min = (w.abs() * mask).reshape(8, 8, 4).masked_fill(~groups, float("inf")).amin(-1)
    dropped_max = (w.abs() * ~mask).reshape(8, 8, 4).amax(-1)
    assert torch.all(kept_min >= dropped_max)
    assert kept_per_row(32, 0.5, "2:4") == 16
    assert pattern_problem("2:4", 32, 0.3) and "exactly 0.5" in pattern_problem("2:4", 32, 0.3)
    assert "multiple of 4" in pattern_problem("2:4", 30, 0.5)
    assert pattern_problem("2:4", 32, 0.5) is None and pattern_problem("unstructured", 30, 0.3) is None
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_order(_w(4, 30), PruneConfig("magnitude", "2:4"))


def test_extreme_sparsity_keeps_one_weight_per_row():
    assert kept_per_row(10, 0.99) == 1
    assert kept_per_row(10, 0.0) == 10
    with pytest.raises(ValueError, match="pruner must be one of"):
        method("pruner", "random")
