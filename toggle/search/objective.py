"""What the search engine needs from the rest of toggle: score a plan, and cost a plan.

The engine (sampler, baselines, study) only talks to an `Objective`; the real one,
`ModelObjective`, scores a plan with an Evaluator (a model, its trace, the specs) and costs it
with a CostModel (toggle.api.search builds it); a synthetic one lives in toggle.search.synthetic
for tests and benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..modules import ModuleRef
from ..plan import Plan


@dataclass(frozen=True)
class PlanCost:
    bytes: int  # exact bytes of the stored artifact
    flops_per_token: float


@dataclass
class Outcome:
    """The verdict on one plan: robustness per property (min over prompts; >= 0 holds; +inf when
    no prompt constrains it, vacuously true; -inf when the plan could not be scored)."""

    robustness: dict[str, float]
    reason: str | None = None  # why the plan is unusable regardless of margins (e.g. NaN logits)
    per_prompt: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    partial: bool = False  # evaluation stopped early: robustness values are upper bounds
    prompts_evaluated: int = 0

    @property
    def feasible(self) -> bool:
        # +inf: the property is vacuously true (no prompt constrains it): it holds; NaN does not
        return self.reason is None and all(r >= 0 for r in self.robustness.values())

    @property
    def min_margin(self) -> float:
        values = [-math.inf if math.isnan(r) else r for r in self.robustness.values()]
        return min(values) if values else math.inf


class Objective(Protocol):
    model_id: str
    refs: list[ModuleRef]  # compressible modules
    properties: list[str]  # property names, in spec order
    base16_bytes: int  # the 16-bit dense model
    base_flops_per_token: float

    def evaluate(self, plan: Plan, stop_below: float | None = None) -> Outcome:
        """Robustness of `plan`; with `stop_below`, the evaluation may stop as soon as some property
        is sure to be below it (Outcome.partial)."""
        ...

    def cost(self, plan: Plan) -> PlanCost: ...

    def output_error(self, modules, setting, methods) -> float:
        """How much `setting` perturbs the outputs of `modules` (relative; 0 for untouched), without a
        model evaluation: what measured-error profiling ranks options by."""
        ...


@dataclass
class ModelObjective:
    """An Objective over a loaded model: the evaluator scores a plan, the cost model costs it."""

    model_id: str
    refs: list
    properties: list[str]
    evaluator: object  # toggle.evaluate.Evaluator
    cost_model: object  # toggle.cost.CostModel
    cache_key: str = ""
    prompts: list[str] | None = None  # evaluate on these prompt ids only (the profiling subset)
    loaded_bytes: int | None = None  # the weights file the model was loaded from (a GGUF file may be 4-bit already)
    loaded_format: str | None = None  # e.g. 'Q4_1' for the built-in model's GGUF file
    # reuse block outputs of earlier evaluations under the same weights (Evaluator.evaluate): for
    # profiling, whose plans each change one group of the untouched model
    replay: bool = False

    @property
    def base16_bytes(self) -> int:
        return int(self.cost_model.base16_bytes)

    @property
    def base_flops_per_token(self) -> float:
        return float(self.cost_model.base_flops_per_token)

    @property
    def prompt_count(self) -> int:
        return len(self.prompts) if self.prompts is not None else len(self.evaluator.trace.paths)

    def evaluate(self, plan: Plan, stop_below: float | None = None) -> Outcome:
        try:
            replay = {"replay": True} if self.replay else {}  # an evaluator without replay is asked nothing of it
            ev = self.evaluator.evaluate(plan, prompts=self.prompts, stop_below=stop_below, **replay)
        except (torch.linalg.LinAlgError, FloatingPointError) as e:
            # A numerical fault of this candidate (an SVD that does not converge on its weights):
            # the plan is infeasible with the reason recorded; the search goes on.
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            return Outcome({name: -math.inf for name in self.properties}, reason=f"numerical failure: {first}")
        return Outcome(robustness=dict(ev.robustness), reason=ev.reason, per_prompt=dict(ev.per_prompt or {}),
                       timings=dict(ev.timings or {}), partial=ev.partial, prompts_evaluated=ev.prompts_evaluated)

    def cost(self, plan: Plan) -> PlanCost:
        c = self.cost_model.of(plan)
        return PlanCost(bytes=int(c.bytes), flops_per_token=float(c.flops_per_token))

    def output_error(self, modules, setting, methods) -> float:
        """Summed relative output error of `modules` under `setting` (toggle.search.measure)."""
        applier = self.evaluator.applier
        return sum(applier.output_error(name, setting, methods) for name in modules)
