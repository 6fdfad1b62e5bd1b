"""Evaluate a compression plan: apply it, one teacher-forced pass over the base model's
paths, signals, and every property's robustness (rtamt) on every prompt.

    specs = load_specs()                                  # checked before any model work
    loaded = load_model("smollm2-135m")
    trace = build_trace(loaded, load_prompts(), specs)    # base work, cached
    evaluator = Evaluator(loaded, specs, trace, applier=PlanApplier(loaded.model))
    result = evaluator.evaluate(plan)                     # evaluate(None): the base model itself
    result.robustness, result.feasible, result.reason, result.timings

After `evaluate(plan)` the model holds the plan's weights until the next evaluate or
`applier.restore()` (an applier only swaps the modules that change between plans).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidInput, ToggleError
from .signals import ANSWER, SIGNALS, compute_signals
from .trace import Trace, check_outputs, resolve_options, score_paths


@dataclass
class Evaluation:
    robustness: dict[str, float]  # property -> min over prompts (-inf when infeasible)
    per_prompt: dict[str, dict[str, float]]  # property -> prompt id -> robustness
    feasible: bool
    reason: str | None = None  # why the candidate could not be scored (NaN logits, ...)
    signals: dict[str, dict[str, float]] = field(default_factory=dict)  # signal -> min / mean / max
    timings: dict[str, float] = field(default_factory=dict)  # apply, forward, signals, rtamt, total (s)

    @property
    def satisfied(self) -> bool:
        return self.feasible and all(v >= 0 for v in self.robustness.values())

    @property
    def margin(self) -> float:
        """The smallest robustness over properties: >= 0 means every property holds."""
        return min(self.robustness.values(), default=math.inf)

    def to_dict(self) -> dict:
        return {"robustness": self.robustness, "per_prompt": self.per_prompt, "feasible": self.feasible,
                "reason": self.reason, "satisfied": self.satisfied, "signals": self.signals,
                "timings": self.timings}


class Evaluator:
    """Scores candidates of one model against one trace with one set of specs."""

    def __init__(self, loaded, specs, trace: Trace, applier=None):
        missing = specs.needs - trace.needs
        if missing:
            raise InvalidInput(f"the trace was built without {', '.join(sorted(missing))}, which the specs need; "
                               f"build it with these specs")
        if resolve_options(loaded.model, specs.options) != trace.options:
            raise InvalidInput("the trace was built with other signal options (hidden_layer / attn_layers / "
                               "attn_span) than the specs declare; build it with these specs")
        gold = [p.name for p in specs.properties if p.axis == ANSWER]
        if gold and not any(p.answer for p in trace.paths):
            raise InvalidInput(f"propert{'ies' if len(gold) > 1 else 'y'} {', '.join(gold)} need gold answers, "
                               f"but no prompt of the trace has one")
        self.loaded, self.specs, self.trace, self.applier = loaded, specs, trace, applier
        self._subsets: dict[tuple[str, ...], Trace] = {}

    def evaluate(self, plan=None, prompts=None) -> Evaluation:
        """Robustness of every property for `plan` (None: the base model).

        `prompts`: optional prompt ids to evaluate on (e.g. a quick subset for profiling);
        properties with no prompt in the subset (gold properties) are vacuously +inf.
        """
        trace = self._trace_for(prompts)
        clock = time.perf_counter
        start = clock()
        if self.applier is not None:
            if plan is None:
                self.applier.restore()
            else:
                self.applier.apply(plan)
        elif plan is not None:
            raise ToggleError("evaluate(plan) needs an applier to put the plan's weights into the model")
        t_apply = clock()
        cand = score_paths(self.loaded.model, trace.paths, self.specs.needs, trace.options,
                           batch_tokens=trace.batch_tokens)
        t_forward = clock()
        timings = {"apply": t_apply - start, "forward": t_forward - t_apply}
        problem = check_outputs(cand, trace.options)
        if problem:
            return self._infeasible(problem, timings, clock() - start)

        values = compute_signals(self.specs.signals, cand, trace.base)
        t_signals = clock()
        timings["signals"] = t_signals - t_forward
        for name, v in values.items():
            if v.size and not np.isfinite(v).all():
                return self._infeasible(f"signal {name} is not finite at {int((~np.isfinite(v)).sum())} steps",
                                        timings, clock() - start)

        step_traces, answer_traces = _per_prompt(values, trace)
        per_prompt = self.specs.evaluate(step_traces, answer_traces)
        robustness = self.specs.over_suite(per_prompt)
        timings["rtamt"] = clock() - t_signals
        timings["total"] = clock() - start
        summary = {name: {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())}
                   for name, v in values.items() if v.size}
        return Evaluation(robustness, per_prompt, True, None, summary, timings)

    def _trace_for(self, prompts) -> Trace:
        if prompts is None:
            return self.trace
        key = tuple(prompts)
        if key not in self._subsets:
            self._subsets[key] = self.trace.subset(key)
        return self._subsets[key]

    def _infeasible(self, reason: str, timings: dict, total: float) -> Evaluation:
        timings = {**timings, "total": total}
        return Evaluation({p: -math.inf for p in self.specs.names}, {}, False, reason, {}, timings)


def _per_prompt(values: dict[str, np.ndarray], trace: Trace):
    """Split concatenated signal values into prompt id -> {signal -> values}, per time axis."""
    steps = [len(p.tokens) for p in trace.paths]
    answers = [len(p.answer) if p.answer else 0 for p in trace.paths]
    step_out: dict[str, dict] = {p.prompt_id: {} for p in trace.paths}
    answer_out: dict[str, dict] = {p.prompt_id: {} for p, n in zip(trace.paths, answers) if n}
    for name, v in values.items():
        axis_answer = SIGNALS[name].axis == ANSWER
        counts = answers if axis_answer else steps
        at = 0
        for p, n in zip(trace.paths, counts):
            if n:
                (answer_out if axis_answer else step_out)[p.prompt_id][name] = v[at:at + n]
            at += n
    return step_out, answer_out
