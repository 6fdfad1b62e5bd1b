"""Pruning: unstructured magnitude and Wanda, per row, with an optional 2:4 pattern.

Every weight gets a score (magnitude |W|, or Wanda |W| * ||x_j||_2 with x_j the module's
j-th input channel over the calibration tokens). Pruning compares weights within a row
(one output), as Wanda does, so every row keeps the same number of weights; the 2:4
pattern compares within each group of 4 consecutive inputs and keeps 2.

The rank of each weight among its comparison group is computed once per module
(`prune_order`); any sparsity is then a threshold on that rank (`keep_mask`), so masks for
growing sparsity are nested and a new ratio costs one comparison, not a sort.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PRUNERS = ("magnitude", "wanda")
PATTERNS = ("unstructured", "2:4")


@dataclass(frozen=True)
class PruneConfig:
    method: str = "magnitude"  # 'magnitude' or 'wanda'
    pattern: str = "unstructured"  # 'unstructured' or '2:4'

    def __post_init__(self):
        if self.method not in PRUNERS:
            raise ValueError(f"pruner must be one of {PRUNERS}, got {self.method!r}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"prune pattern must be one of {PATTERNS}, got {self.pattern!r}")


def pattern_problem(pattern: str, in_features: int, sparsity: float) -> str | None:
    """Why a sparsity cannot be used with a pattern on this matrix, or None."""
    if pattern == "2:4" and sparsity not in (0.0, 0.5):
        return f"sparsity {sparsity} with the 2:4 pattern; 2:4 means exactly 0.5 (or 0 for none)"
    if pattern == "2:4" and sparsity and in_features % 4:
        return f"the 2:4 pattern needs the input size to be a multiple of 4, not {in_features}"
    return None


def kept_per_row(in_features: int, sparsity: float, pattern: str = "unstructured") -> int:
    """Weights kept in each row at this sparsity (at least one)."""
    if sparsity <= 0:
        return in_features
    if pattern == "2:4":
        return in_features // 2
    pruned = math.floor(sparsity * in_features + 0.5)
    return max(1, in_features - pruned)


def prune_scores(w: torch.Tensor, method: str, channel_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Importance of each weight; higher is kept longer."""
    score = w.abs().float()
    if method == "wanda":
        if channel_norm is None:
            raise ValueError("Wanda pruning needs the input channel norms ||x_j||_2 (calibration statistics)")
        score = score * channel_norm.float().reshape(1, -1)
    return score


def prune_order(w: torch.Tensor, cfg: PruneConfig, channel_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of every weight within its comparison group (0 = pruned first): within its row,
    or within its group of 4 for the 2:4 pattern. int16 when the row fits, else int32."""
    score = prune_scores(w, cfg.method, channel_norm)
    out_f, in_f = score.shape
    if cfg.pattern == "2:4":
        if in_f % 4:
            raise ValueError(f"the 2:4 pattern needs the input size to be a multiple of 4, not {in_f}")
        score = score.reshape(out_f, in_f // 4, 4)
    order = torch.argsort(score, dim=-1, stable=True)
    dtype = torch.int16 if score.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    ranks = torch.empty_like(order, dtype=dtype)
    positions = torch.arange(score.shape[-1], dtype=dtype).expand_as(order)
    ranks.scatter_(-1, order, positions)
    return ranks.reshape(out_f, in_f)


def keep_mask(order: torch.Tensor, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
    """Boolean mask of kept weights at `sparsity` from a precomputed `prune_order`."""
    in_f = order.shape[1]
    if pattern == "2:4":
        return order >= 2 if sparsity > 0 else torch.ones_like(order, dtype=torch.bool)
    return order >= in_f - kept_per_row(in_f, sparsity, pattern)


def prune(w: torch.Tensor, cfg: PruneConfig, sparsity: float,
          channel_norm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One-off pruning: (pruned weights, keep mask)."""
    mask = keep_mask(prune_order(w, cfg, channel_norm), sparsity, cfg.pattern)
    return w * mask, mask
