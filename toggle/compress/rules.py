"""What a module setting may be: the rules shared by plan validation, the applier and the cost model.

`setting_problem` says why a setting cannot be applied to a module (or None); `methods_key` is
the part of a plan's methods that changes a module's stored form under a setting, so results
can be cached and reused when other method fields change.
"""
from __future__ import annotations

from ..modules import ModuleRef

# ModuleSetting and Methods (toggle.plan) appear in annotations only: plan.py imports this package.
from .lowrank import rank_for
from .prune import pattern_problem


def setting_problem(ref: ModuleRef, setting: ModuleSetting, methods: Methods) -> str | None:
    """Why `setting` cannot be applied to this module, or None."""
    methods_here = methods.for_setting(setting)
    if setting.bits < 16 and methods_here.scale_bits < 16:
        from . import registry  # registry imports the quantisers; rules stays importable from plan.py
        if registry.method("quantizer", methods_here.quantizer).ggml:
            return (f"scale_bits {methods_here.scale_bits} needs a quantizer whose group parameters toggle chooses "
                    f"(rtn, awq or gptq); {methods_here.quantizer} stores llama.cpp's own block scales: use scale_bits 16")
    if setting.rank_ratio < 1 and ref.part == "embed":
        return ("rank_ratio < 1 is not supported for the token embedding (it is a lookup table); "
                "use bits and sparsity for it")
    if setting.sparsity > 0:
        in_f = ref.in_features
        if setting.rank_ratio < 1:
            in_f = rank_for(setting.rank_ratio, ref.out_features, ref.in_features)  # factor A's inputs
        for size in {ref.in_features, in_f}:
            problem = pattern_problem(methods.prune_pattern, size, setting.sparsity)
            if problem:
                return problem
    return None


def methods_key(setting: ModuleSetting, methods: Methods) -> tuple:
    """The method fields that affect this setting (others may change without recomputing)."""
    methods = methods.for_setting(setting)
    key: tuple = ()
    if setting.bits < 16:
        key += (methods.quantizer, methods.group_size, methods.symmetric_for(setting.bits), methods.scale_bits)
    if setting.sparsity > 0:
        key += (methods.pruner, methods.prune_pattern)
    if setting.rank_ratio < 1:
        key += (methods.lowrank,)
    return key


def stored_shapes(ref: ModuleRef, setting: ModuleSetting) -> list[tuple[int, int]]:
    """(out, in) of each stored matrix: the weight, or its two low-rank factors A and B."""
    if setting.rank_ratio < 1:
        k = rank_for(setting.rank_ratio, ref.out_features, ref.in_features)
        return [(ref.out_features, k), (k, ref.in_features)]
    return [(ref.out_features, ref.in_features)]
