"""Compression operators, the method registry, and their application to a model.

Each method family is a small frozen config plus functions over one weight matrix (out, in):
quant.py (RTN, AWQ, GPTQ), prune.py (magnitude, Wanda, 2:4), lowrank.py (SVD, activation-aware
SVD); registry.py declares every method once (what it needs, what it stores, which function
does the work). calibrate.py gathers the activation statistics the aware methods use;
packing.py is the byte layout shared by the cost model and the artifact writer; apply.py
(`toggle.compress.apply.PlanApplier`) composes the operators per module (low-rank, then pruning,
then quantisation) and swaps plans into a model.
"""
from .calibrate import ActivationStats, collect_stats
from .lowrank import LowRankLinear, rank_for
from .prune import PruneConfig, keep_mask, kept_per_row
from .quant import QuantConfig, QuantizedMatrix, quantize_awq, quantize_gptq, quantize_rtn
from .registry import METHODS, Method, factorise, low_rank, prune_matrix, prune_order, quantize

__all__ = [
    "METHODS", "ActivationStats", "LowRankLinear", "Method", "PruneConfig", "QuantConfig", "QuantizedMatrix",
    "collect_stats", "factorise", "keep_mask", "kept_per_row", "low_rank", "prune_matrix", "prune_order", "quantize",
    "quantize_awq", "quantize_gptq", "quantize_rtn", "rank_for",
]
