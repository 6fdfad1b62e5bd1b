"""What the search engine needs from the rest of toggle: score a plan, and cost a plan.

The engine (sampler, baselines, study) only talks to an `Objective`; the real one is built by
toggle.search.pipeline from a model, specs and prompts, a synthetic one lives in
toggle.search.synthetic for tests and benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from ..modules import ModuleRef
from ..plan import Plan


@dataclass(frozen=True)
class PlanCost:
    bytes: int  # exact bytes of the stored artifact
    flops_per_token: float


@dataclass
class Outcome:
    """The verdict on one plan: robustness per property (min over prompts; >= 0 holds)."""

    robustness: dict[str, float]
    reason: str | None = None  # why the plan is unusable regardless of margins (e.g. NaN logits)
    per_prompt: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.reason is None and all(math.isfinite(r) and r >= 0 for r in self.robustness.values())

    @property
    def min_margin(self) -> float:
        values = [r if math.isfinite(r) else -math.inf for r in self.robustness.values()]
        return min(values) if values else math.inf


class Objective(Protocol):
    model_id: str
    refs: list[ModuleRef]  # compressible modules
    properties: list[str]  # property names, in spec order
    base16_bytes: int  # the 16-bit dense model
    base_flops_per_token: float

    def evaluate(self, plan: Plan) -> Outcome: ...

    def cost(self, plan: Plan) -> PlanCost: ...
