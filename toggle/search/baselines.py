"""The uniform and greedy baselines, as Optuna samplers like random search and BO.

Both bisect along a *ladder*: a list of points ordered from most to least expensive, all within
the budget, along which feasibility is expected to be monotone (more compression, less margin).
Bisection finds the cheapest feasible rung in about log2(len) evaluations; the trials left after
that test the cheaper rungs one by one, in case the ladder is not quite monotone.

  uniform   every uniform setting of the block groups (the best single setting for every group)
  greedy    the greedy sensitivity allocation's path (toggle.search.sensitivity.greedy_path)

The sampler keeps no state of its own: it reads the finished trials of the study, so a resumed
run, or several workers, carry on where the study is.
"""
from __future__ import annotations

import numpy as np
from optuna.trial import TrialState

from ..rundir import FINISHED
from .sampler import SpaceSampler


class LadderSampler(SpaceSampler):
    def __init__(self, name: str, ladder: list[np.ndarray], space, costs, budget_bytes, *, objective="size", seed=0):
        super().__init__(space, costs, budget_bytes, objective=objective, seed=seed)
        self.name = name
        self.ladder = [np.asarray(x) for x in ladder]
        self._pos = {tuple(x.tolist()): i for i, x in enumerate(self.ladder)}

    def propose(self, study, trial) -> np.ndarray:
        point = self.next_rung(*self._state(study, trial))
        if point is None:  # the run loop stops before this happens (see `exhausted`)
            return self.random_point(study, trial)
        return point

    def exhausted(self, study) -> bool:
        """Every rung of the ladder within the budget has been evaluated or is being evaluated."""
        return self.next_rung(*self._state(study, None)) is None

    def next_rung(self, results: dict[tuple, bool], pending: set[tuple] = frozenset()) -> np.ndarray | None:
        """The next rung to evaluate given results (index tuple -> feasible), or None when done."""
        known = {self._pos[k]: ok for k, ok in results.items() if k in self._pos}
        busy = {self._pos[k] for k in pending if k in self._pos}
        lo = max((i for i, ok in known.items() if ok), default=-1)  # cheapest known feasible
        hi = min((i for i, ok in known.items() if not ok and i > lo), default=len(self.ladder))
        open_rungs = [i for i in range(lo + 1, hi) if i not in known and i not in busy]
        if open_rungs:
            mid = (lo + hi) / 2
            return self.ladder[min(open_rungs, key=lambda i: (abs(i - mid), i))]
        # Past the frontier, only rungs that do not compress at least as much as a known failure
        # everywhere can still hold (more compression is assumed never to help).
        failed = [self.ladder[i] for i, ok in known.items() if not ok]
        cheaper = [i for i in range(hi + 1, len(self.ladder)) if i not in known and i not in busy
                   and not any(np.all(self.ladder[i] >= f) for f in failed)]
        return self.ladder[cheaper[0]] if cheaper else None

    def _state(self, study, trial) -> tuple[dict[tuple, bool], set[tuple]]:
        results, pending = {}, set()
        for t in study.get_trials(deepcopy=False):
            if trial is not None and t.number == trial.number:
                continue
            if not all(p in t.params for p in self.space.params):
                # A queued point (a recovered trial another worker will take) has no params yet; Optuna
                # keeps it under the system attribute "fixed_params", its own convention for enqueue_trial.
                if t.state == TrialState.WAITING and "fixed_params" in t.system_attrs:
                    pending.add(tuple(self.space.to_index(t.system_attrs["fixed_params"]).tolist()))
                continue
            key = tuple(self.space.to_index(t.params).tolist())
            if t.state in FINISHED:
                results[key] = t.state == TrialState.COMPLETE and all(c <= 0 for c in t.constraints.values())
            elif t.state == TrialState.RUNNING:
                pending.add(key)
        return results, pending


def uniform_ladder(space, costs, budget_bytes: float, objective: str = "size") -> list[np.ndarray]:
    """Every uniform setting within the budget, most expensive first (duplicates dropped)."""
    points = {tuple(space.uniform(s).tolist()) for s in space.uniform_ladder()}
    return _sorted_in_budget([np.array(p) for p in points], costs, budget_bytes, objective)


def path_ladder(path: list[np.ndarray], costs, budget_bytes: float, objective: str = "size") -> list[np.ndarray]:
    """The greedy path's rungs within the budget (already ordered by decreasing cost)."""
    unique = list({tuple(p.tolist()): p for p in path}.values())
    return _sorted_in_budget(unique, costs, budget_bytes, objective)


def _sorted_in_budget(points, costs, budget_bytes, objective):
    if not points:
        return []
    matrix = np.stack(points)
    size, flops = costs.of(matrix)
    value = size if objective == "size" else flops
    order = [i for i in np.lexsort((size, -value)) if size[i] <= budget_bytes]
    return [matrix[i] for i in order]
