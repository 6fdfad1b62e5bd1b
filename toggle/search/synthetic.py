"""A synthetic compression problem with a known structure, for tests and benchmarks.

A fake Llama-like model (a tied embedding and `blocks` blocks of q/k/v/o and gate/up/down
matrices) whose "robustness" falls as groups are compressed: each group has a sensitivity
(log-normal, so a few groups matter much more than the rest, as in real models) and each
setting a damage (quantisation noise ~ 4^-bits, pruning ~ sparsity^2, rank cut ~ lost rank).
Per property p: robustness = 1 - D_p - D_p^2 / 2 with D_p = sum_g sens[g, p] * damage(setting_g).
`profiling_view()` is the same problem with every sensitivity perturbed, as a prompt subset
perturbs a real model's. Uniform 4-bit is infeasible and uniform 5-bit feasible; mixing precisions does much better.
Costs follow the packed-storage accounting of toggle.cost (values, scales, bitmask, factors).
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np

from ..modules import ModuleRef
from ..plan import ModuleSetting, Plan
from .objective import Outcome, PlanCost

_ATTN = (("self_attn.q_proj", 1.0, 1.0), ("self_attn.k_proj", 0.5, 1.0), ("self_attn.v_proj", 0.5, 1.0),
         ("self_attn.o_proj", 1.0, 1.0))
_MLP = (("mlp.gate_proj", 2.5, 1.0), ("mlp.up_proj", 2.5, 1.0), ("mlp.down_proj", 1.0, 2.5))


def fake_refs(blocks: int = 8, hidden: int = 64, vocab: int = 512) -> list[ModuleRef]:
    refs = [ModuleRef("model.embed_tokens", None, "embed", "embed", vocab, hidden, False, False, tied=True)]
    for b in range(blocks):
        for comp, out_mult, in_mult in _ATTN + _MLP:
            refs.append(ModuleRef(f"model.layers.{b}.{comp}", b, comp, "attn" if "attn" in comp else "mlp",
                                  int(hidden * out_mult), int(hidden * in_mult), False, False))
    return refs


def module_cost(ref: ModuleRef, s: ModuleSetting, group_size: int = 64) -> tuple[float, float]:
    """(bytes, flops per token) of one matrix stored with setting s."""
    m, n = ref.out_features, ref.in_features
    params, flops = m * n, 2.0 * m * n
    if s.rank_ratio < 1.0:
        k = max(1, math.ceil(s.rank_ratio * min(m, n)))
        params, flops = k * (m + n), 2.0 * k * (m + n)
    kept = params * (1.0 - s.sparsity)
    mask = params / 8 if s.sparsity > 0 else 0.0
    if s.bits >= 16:
        data = 2.0 * kept
    else:
        data = math.ceil(kept * s.bits / 8) + 4.0 * math.ceil(kept / group_size)
    if ref.part == "embed" and not ref.tied:
        flops = 0.0
    return data + mask, flops


class SyntheticObjective:
    def __init__(self, blocks: int = 8, properties: int = 2, seed: int = 0, *, eval_seconds: float = 0.0,
                 hidden: int = 64, vocab: int = 512, nan_below_bits: int | None = None):
        rng = np.random.default_rng(seed)
        self.model_id = f"synthetic-{blocks}"
        self.refs = fake_refs(blocks, hidden, vocab)
        self.properties = ["coherence", "factual", "format", "long_range"][:properties]
        self.eval_seconds = eval_seconds
        self.nan_below_bits = nan_below_bits
        self.evaluations = 0
        keys = sorted({self._group(r) for r in self.refs})
        weights = np.exp(rng.normal(0.0, 1.2, size=(len(keys), properties)))
        self.sensitivity = {k: w / weights.mean(axis=0) * 24.0 / len(keys) for k, w in zip(keys, weights)}
        self._untouched = {r.name: ModuleSetting() for r in self.refs}
        self.base16_bytes = int(self.cost(Plan(model=self.model_id)).bytes)
        self.base_flops_per_token = self.cost(Plan(model=self.model_id)).flops_per_token

    def profiling_view(self, noise: float = 0.6, seed: int = 1) -> "SyntheticObjective":
        """The same problem seen through a few prompts: every sensitivity off by a log-normal factor
        (what a profiling subset does to a real model), so single-group profiling ranks groups
        imperfectly and only full evaluations tell the truth."""
        rng = np.random.default_rng(seed)
        view = copy.copy(self)
        view.sensitivity = {k: v * np.exp(rng.normal(0.0, noise, size=v.shape)) for k, v in self.sensitivity.items()}
        view.cache_key = f"{self.model_id}-profiling-{noise}-{seed}"
        return view

    @staticmethod
    def _group(ref: ModuleRef) -> str:
        """Sensitivity is per block x part; finer search granularities share it."""
        return "embed" if ref.block is None else f"b{ref.block:02d}.{ref.part}"

    @staticmethod
    def damage(s: ModuleSetting) -> float:
        d = 0.0 if s.bits >= 16 else 0.05 * 4.0 ** (4 - s.bits) * math.sqrt((s.group_size or 64) / 64)
        return d + 0.6 * s.sparsity**2 + 0.4 * (1.0 - s.rank_ratio)

    def robustness(self, plan: Plan) -> dict[str, float]:
        total = np.zeros(len(self.properties))
        for ref in self.refs:
            s = plan.setting(ref.name)
            if not s.untouched:
                share = ref.numel / self._group_numel(self._group(ref))
                total += self.sensitivity[self._group(ref)] * self.damage(s) * share
        return {p: float(1.0 - d - d * d / 2) for p, d in zip(self.properties, total)}

    def _group_numel(self, key: str) -> int:
        if not hasattr(self, "_numel"):
            self._numel: dict[str, int] = {}
            for r in self.refs:
                self._numel[self._group(r)] = self._numel.get(self._group(r), 0) + r.numel
        return self._numel[key]

    def evaluate(self, plan: Plan, stop_below: float | None = None) -> Outcome:
        self.evaluations += 1
        if self.eval_seconds:
            time.sleep(self.eval_seconds)
        rob = self.robustness(plan)
        if self.nan_below_bits is not None and any(s.bits < self.nan_below_bits for s in plan.modules.values()):
            return Outcome({p: -math.inf for p in rob}, reason="NaN logits")
        return Outcome(rob)

    def output_error(self, modules, setting, methods) -> float:
        """The damage of a setting, the same for every group: the per-group sensitivities stay hidden
        from measured-error profiling, as a real model's propagation does."""
        return 0.0 if setting.untouched else self.damage(setting)

    def cost(self, plan: Plan) -> PlanCost:
        total_b = total_f = 0.0
        for ref in self.refs:
            s = plan.setting(ref.name)
            b, f = module_cost(ref, s, s.group_size or plan.methods.group_size)
            total_b, total_f = total_b + b, total_f + f
        return PlanCost(bytes=int(total_b), flops_per_token=total_f)
