"""Compression operators and their application to a model.

Each method family is a small frozen config plus a function over one weight matrix
(out, in): quant.py (RTN, AWQ, GPTQ), prune.py (magnitude, Wanda, 2:4), lowrank.py (SVD,
activation-aware SVD). calibrate.py gathers the activation statistics the aware methods
use; apply.py composes them per module (low-rank, then pruning, then quantisation) and
swaps plans into a model; packing.py is the byte layout shared by the cost model and the
artifact writer.
"""
from .apply import PlanApplier, StoredMatrix, StoredModule, setting_problem, validate_plan
from .calibrate import ActivationStats, collect_stats
from .lowrank import LowRankConfig, LowRankLinear, low_rank, rank_for, svd_factors
from .prune import PruneConfig, keep_mask, kept_per_row, prune, prune_order
from .quant import QuantConfig, QuantizedMatrix, quantize, quantize_awq, quantize_gptq, quantize_rtn

__all__ = [
    "ActivationStats", "LowRankConfig", "LowRankLinear", "PlanApplier", "PruneConfig", "QuantConfig",
    "QuantizedMatrix", "StoredMatrix", "StoredModule", "collect_stats", "keep_mask", "kept_per_row",
    "low_rank", "prune", "prune_order", "quantize", "quantize_awq", "quantize_gptq", "quantize_rtn",
    "rank_for", "setting_problem", "svd_factors", "validate_plan",
]
