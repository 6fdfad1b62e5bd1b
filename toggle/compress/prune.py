"""Pruning: unstructured magnitude and Wanda, per row, with an optional 2:4 pattern.

Every weight gets a score (magnitude |W|, or Wanda |W| * ||x_j||_2 with x_j the module's
j-th input channel over the calibration tokens; the registry, compress/registry.py, names the
score function of each pruner). Pruning compares weights within a row
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

PATTERNS = ("unstructured", "2:4")


@dataclass(frozen=True)
class PruneConfig:
    method: str = "magnitude"  # a pruner of the registry: 'magnitude' or 'wanda'
    pattern: str = "unstructured"  # 'unstructured' or '2:4'

    def __post_init__(self):
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


def magnitude_score(w: torch.Tensor, channel_norm: torch.Tensor | None = None) -> torch.Tensor:
    """|W|: importance of each weight; higher is kept longer."""
    return w.abs().float()


def wanda_score(w: torch.Tensor, channel_norm: torch.Tensor | None = None) -> torch.Tensor:
    """|W_ij| * ||x_j||_2 (Sun et al. 2023)."""
    if channel_norm is None:
        raise ValueError("Wanda pruning needs the input channel norms ||x_j||_2 (calibration statistics)")
    return w.abs().float() * channel_norm.float().reshape(1, -1)


def prune_order(score: torch.Tensor, pattern: str = "unstructured") -> torch.Tensor:
    """Rank of every weight within its comparison group (0 = pruned first), from its score: within
    its row, or within its group of 4 for the 2:4 pattern. int16 when the row fits, else int32."""
    out_f, in_f = score.shape
    if pattern == "2:4":
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

