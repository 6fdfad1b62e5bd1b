"""The method registry: every compression method declared once.

A plan names one method per family (plan.Methods: quantizer, pruner, lowrank); the family's
knob in a module's setting decides whether it acts (bits < 16, sparsity > 0, rank_ratio < 1).
Each entry says what the rest of toggle needs to know about a method, so plan validation, the
applier, the cost model and the writers read it here instead of testing method names:

  needs_stats   it reads calibration statistics (the module's input Gram matrix); a module
                without statistics (an untied embedding is a lookup, not a matmul) uses the
                family's statistics-free method instead (FALLBACK)
  input_scales  the artifact stores float16 per-input-channel scales beside the codes (AWQ)
  gguf          its result fits GGUF blocks exactly (no extra tensors)
  ggml          its result is llama.cpp's own GGML blocks (compress/ggml.py's GGMLMatrix): only the
                GGUF format stores it
  fallback      the method used on a module without statistics (None: the family's FALLBACK)
  and the functions that do the work (signatures per family below).

Adding a method: write its function in the family's file (quant.py, prune.py, lowrank.py or a
new file) and add one entry to METHODS (docs/architecture.md has a worked example).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import ggml, lowrank, prune, quant

FAMILIES = ("quantizer", "pruner", "lowrank")
FALLBACK = {"quantizer": "rtn", "pruner": "magnitude", "lowrank": "svd"}


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # one of FAMILIES
    summary: str
    needs_stats: bool = False
    input_scales: bool = False
    gguf: bool = True
    ggml: bool = False
    fallback: str | None = None
    # quantizer: quantize(w, cfg, gram, mask, prepared) -> QuantizedMatrix; prepare(w, cfg, gram)
    #            -> state computed once per unpruned matrix and reused for its pruned versions
    #            (None: quantize prepares it from the matrix it is given)
    # pruner:    score(w, channel_norm) -> importance of each weight (higher is kept longer)
    # lowrank:   factor(w, gram) -> SVDFactors at full rank (any rank is a prefix)
    quantize: Callable | None = None
    prepare: Callable | None = None
    score: Callable | None = None
    factor: Callable | None = None


def _rtn(w, cfg, gram=None, mask=None, prepared=None):
    return quant.quantize_rtn(w, cfg)


def _awq(w, cfg, gram=None, mask=None, prepared=None):
    return quant.quantize_awq(w, cfg, gram, mask=mask, scales=prepared)


def _gptq(w, cfg, gram=None, mask=None, prepared=None):
    return quant.quantize_gptq(w, cfg, gram, mask=mask)


METHODS: dict[str, dict[str, Method]] = {
    "quantizer": {
        "rtn": Method("rtn", "quantizer", "group-wise round-to-nearest (llama.cpp's rules)", quantize=_rtn),
        "awq": Method("awq", "quantizer", "AWQ-style activation-aware input scaling, then RTN", needs_stats=True,
                      input_scales=True, gguf=False, quantize=_awq,
                      prepare=lambda w, cfg, gram: quant.awq_search(w, cfg, gram)),
        "gptq": Method("gptq", "quantizer", "GPTQ: RTN rules, error spread through the inverse Hessian",
                       needs_stats=True, quantize=_gptq),
        # llama.cpp's quantisers through ctypes (needs tools/build_llama_cpp.sh); the importance
        # matrix is the diagonal of the input Gram matrix, none on a module without statistics
        "ggml": Method("ggml", "quantizer", "llama.cpp's own K-quants with an importance matrix: bits 2-6 -> "
                       "Q2_K..Q6_K, 8 -> Q8_0; rows not a multiple of 256 take llama.cpp's fallback "
                       "(Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0)", needs_stats=True,
                       ggml=True, fallback="ggml", quantize=ggml.quantize),
        "ggml_iq": Method("ggml_iq", "quantizer", "llama.cpp's own i-quants with an importance matrix: bits 2 -> "
                          "IQ2_S, 3 -> IQ3_S, 4 -> IQ4_XS; rows not a multiple of 256 take IQ4_NL",
                          needs_stats=True, ggml=True, fallback="ggml_iq", quantize=ggml.quantize),
    },
    "pruner": {
        "magnitude": Method("magnitude", "pruner", "unstructured magnitude |W| per row", score=prune.magnitude_score),
        "wanda": Method("wanda", "pruner", "Wanda |W| * ||x||_2 per row", needs_stats=True, score=prune.wanda_score),
    },
    "lowrank": {
        "svd": Method("svd", "lowrank", "truncated SVD", factor=lowrank.svd),
        "asvd": Method("asvd", "lowrank", "activation-aware (whitened) SVD", needs_stats=True, factor=lowrank.asvd),
    },
}
# Which knob of a ModuleSetting puts each family to work.
_ACTS = {"quantizer": lambda s: s.bits < 16, "pruner": lambda s: s.sparsity > 0, "lowrank": lambda s: s.rank_ratio < 1}


def names(family: str) -> tuple[str, ...]:
    return tuple(METHODS[family])


def method(family: str, name: str) -> Method:
    try:
        return METHODS[family][name]
    except KeyError:
        raise ValueError(f"{family} must be one of {', '.join(METHODS.get(family, {}))}, got {name!r}") from None


def acts(family: str, setting) -> bool:
    """Whether this family's method does anything to a module with `setting`."""
    return _ACTS[family](setting)


def chosen(family: str, methods, *, has_stats: bool = True) -> Method:
    """The method a plan's `methods` use for `family`, on a module with or without statistics."""
    m = method(family, getattr(methods, family))
    return m if has_stats or not m.needs_stats else method(family, m.fallback or FALLBACK[family])


def needs_stats(setting, methods) -> bool:
    """Whether any method acting on a module with this setting reads calibration statistics."""
    return any(acts(f, setting) and chosen(f, methods).needs_stats for f in FAMILIES)


def stats_families(methods) -> list[str]:
    """The families whose chosen method reads calibration statistics."""
    return [f for f in FAMILIES if chosen(f, methods).needs_stats]


# --- one-off conveniences (the applier caches these results per module) -----------------------

def quantize(w: torch.Tensor, cfg: quant.QuantConfig, *, gram: torch.Tensor | None = None,
             mask: torch.Tensor | None = None) -> quant.QuantizedMatrix:
    """Quantise with cfg.method; methods that need statistics need the input Gram matrix.
    `mask` (kept positions) is only used by error-aware methods; the caller zeroes pruned weights."""
    m = method("quantizer", cfg.method)
    if m.needs_stats and gram is None:
        raise ValueError(f"quantizer {cfg.method} needs calibration activation statistics (a Gram matrix)")
    return m.quantize(w, cfg, gram, mask, None)  # no prepared state: prepared from w (and mask) here


def prune_order(w: torch.Tensor, cfg: prune.PruneConfig, channel_norm: torch.Tensor | None = None) -> torch.Tensor:
    return prune.prune_order(method("pruner", cfg.method).score(w, channel_norm), cfg.pattern)


def prune_matrix(w: torch.Tensor, cfg: prune.PruneConfig, sparsity: float,
                 channel_norm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One-off pruning: (pruned weights, keep mask)."""
    mask = prune.keep_mask(prune_order(w, cfg, channel_norm), sparsity, cfg.pattern)
    return w * mask, mask


def factorise(w: torch.Tensor, name: str = "svd", gram: torch.Tensor | None = None) -> lowrank.SVDFactors:
    return method("lowrank", name).factor(w, gram)


def low_rank(w: torch.Tensor, name: str, rank_ratio: float, gram: torch.Tensor | None = None):
    """One-off factorisation: (A, B) with A @ B ~= w at rank `rank_ratio`."""
    return factorise(w, name, gram).truncate(lowrank.rank_for(rank_ratio, *w.shape))
