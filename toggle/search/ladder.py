"""Bisection along a ladder: a list of points ordered from most to least expensive, all within
the budget, along which feasibility is expected to be monotone (more compression, less margin).

Bisection finds the cheapest feasible rung in about log2(len) evaluations; the trials left after
that test the cheaper rungs one by one, in case the ladder is not quite monotone. It keeps no
state of its own: `ladder_state` reads the study, so a resumed run, or several workers, carry on
where the study is. Used by the uniform, greedy and allocator baselines and by BO's start.
"""
from __future__ import annotations

import numpy as np
from optuna.trial import TrialState

from ..rundir import FINISHED


class Ladder:
    def __init__(self, points: list[np.ndarray], objective: str = "size", head: int = 1):
        self.points = [np.asarray(x) for x in points]
        self.objective = objective
        self.head = head  # under --objective margin with bisect_only: the rungs evaluated before BO takes over
        self._pos = {tuple(x.tolist()): i for i, x in enumerate(self.points)}

    def __len__(self) -> int:
        return len(self.points)

    def next_rung(self, results: dict[tuple, bool], pending: set[tuple] = frozenset(), *,
                  bisect_only: bool = False) -> np.ndarray | None:
        """The next rung to evaluate given results (index tuple -> feasible), or None when done.
        `bisect_only`: None once bisection has found the frontier. Under --objective margin: the
        first rung not yet evaluated (a margin ladder lists the plans expected most robust first:
        the allocator's plan for the budget, then the most expensive rungs); with `bisect_only`,
        only among the first `head` rungs."""
        known = {self._pos[k]: ok for k, ok in results.items() if k in self._pos}
        busy = {self._pos[k] for k in pending if k in self._pos}
        if self.objective == "margin":
            rest = [i for i in range(len(self.points)) if i not in known and i not in busy]
            if bisect_only:  # BO takes over once the plans expected most robust are known
                rest = [i for i in rest if i < self.head]
            return self.points[rest[0]] if rest else None
        lo = max((i for i, ok in known.items() if ok), default=-1)  # cheapest known feasible
        hi = min((i for i, ok in known.items() if not ok and i > lo), default=len(self.points))
        open_rungs = [i for i in range(lo + 1, hi) if i not in known and i not in busy]
        if open_rungs:
            mid = (lo + hi) / 2
            return self.points[min(open_rungs, key=lambda i: (abs(i - mid), i))]
        if bisect_only:
            return None
        # Past the frontier, only rungs that do not compress at least as much as a known failure
        # everywhere can still hold (more compression is assumed never to help).
        failed = [self.points[i] for i, ok in known.items() if not ok]
        cheaper = [i for i in range(hi + 1, len(self.points)) if i not in known and i not in busy
                   and not any(np.all(self.points[i] >= f) for f in failed)]
        return self.points[cheaper[0]] if cheaper else None



def ladder_state(space, study, trial=None) -> tuple[dict[tuple, bool], set[tuple]]:
    """(index tuple -> feasible) of the study's finished trials, and the points being evaluated."""
    results, pending = {}, set()
    for t in study.get_trials(deepcopy=False):
        if trial is not None and t.number == trial.number:
            continue
        if not all(p in t.params for p in space.params):
            # A queued point (a recovered trial another worker will take) has no params yet; Optuna
            # keeps it under the system attribute "fixed_params", its own convention for enqueue_trial.
            if t.state == TrialState.WAITING and "fixed_params" in t.system_attrs:
                pending.add(tuple(space.to_index(t.system_attrs["fixed_params"]).tolist()))
            continue
        key = tuple(space.to_index(t.params).tolist())
        if t.state in FINISHED:
            results[key] = t.state == TrialState.COMPLETE and all(c <= 0 for c in t.constraints.values())
        elif t.state == TrialState.RUNNING:
            pending.add(key)
    return results, pending
