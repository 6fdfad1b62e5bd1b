"""Low-rank factorisation: truncated SVD and activation-aware SVD.

W (out, in) is replaced by two factors A (out, k) @ B (k, in), stored and run as two
smaller matmuls. The rank is given as a ratio of the full rank min(out, in).

  svd    W = U S V^T, A = U_k sqrt(S_k), B = sqrt(S_k) V_k^T: best rank-k approximation
         in the Frobenius norm of the weights.
  asvd   SVD-LLM style (Wang et al. 2024): with the input Gram matrix G = E[x x^T] = L L^T,
         the output error E||(W - A B) x||^2 = ||(W - A B) L||_F^2, so the SVD of W L gives
         the best rank-k approximation for the calibration inputs: W L = U S V^T,
         A = U_k sqrt(S_k), B = sqrt(S_k) V_k^T L^-1.

The factorisation is computed once per module at full rank (`svd` / `asvd`); any rank is
then a prefix of its columns and rows (`SVDFactors.truncate`). Splitting sqrt(S) between
the factors keeps both on the same scale, which matters when they are quantised next.
Storing factors saves bytes only when k (out + in) < out * in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .linalg import single_threaded

def rank_for(rank_ratio: float, out_features: int, in_features: int) -> int:
    """Rank k for a ratio of the full rank min(out, in), at least 1."""
    full = min(out_features, in_features)
    return max(1, min(full, math.floor(rank_ratio * full + 0.5)))


@dataclass
class SVDFactors:
    """Full-rank factors, ordered by importance: W ~= left[:, :k] @ right[:k]."""

    left: torch.Tensor  # (out, r)
    right: torch.Tensor  # (r, in)

    def truncate(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.left[:, :k].contiguous(), self.right[:k].contiguous()

    @property
    def nbytes(self) -> int:
        return self.left.nbytes + self.right.nbytes


def svd(w: torch.Tensor, gram: torch.Tensor | None = None, damp: float = 0.01) -> SVDFactors:
    """Plain truncated SVD at full rank (float64 algebra, float32 factors)."""
    with single_threaded():
        U, S, Vh = torch.linalg.svd(w.double(), full_matrices=False)
        root = S.sqrt()
        return SVDFactors((U * root).float(), (root[:, None] * Vh).float())


def asvd(w: torch.Tensor, gram: torch.Tensor | None = None, damp: float = 0.01) -> SVDFactors:
    """Activation-aware SVD (whitened by the input Gram matrix) at full rank."""
    if gram is None:
        raise ValueError("activation-aware SVD needs calibration activation statistics (a Gram matrix)")
    with single_threaded():
        return _asvd(w.double(), gram, damp)


def _asvd(w64: torch.Tensor, gram: torch.Tensor, damp: float) -> SVDFactors:
    L = _cholesky(gram.double(), damp)
    U, S, Vh = torch.linalg.svd(w64 @ L, full_matrices=False)
    root = S.sqrt()
    right = torch.linalg.solve_triangular(L, root[:, None] * Vh, upper=False, left=False)  # (S V^T) L^-1
    return SVDFactors((U * root).float(), right.float())


def _cholesky(gram: torch.Tensor, damp: float) -> torch.Tensor:
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    mean_diag = torch.diagonal(gram).mean().clamp(min=1e-12)
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(gram + damp * mean_diag * eye)
        if int(info) == 0:
            return L
        damp *= 10
    raise ValueError("activation-aware SVD: the Gram matrix is not positive definite even with damping")


class LowRankLinear(torch.nn.Module):
    """A linear layer stored as two factors: y = A (B x) + bias, two smaller matmuls.

    Replaces a Linear or GPT-2 Conv1D of the same input and output size when a compressed
    artifact is loaded; `down` holds B (k, in), `up` holds A (out, k) and the bias.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = torch.nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.up = torch.nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))
