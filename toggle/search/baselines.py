"""The uniform and greedy baselines, as Optuna samplers like random search and BO.

Both bisect along a *ladder*: a list of points ordered from most to least expensive, all within
the budget, along which feasibility is expected to be monotone (more compression, less margin).
Bisection finds the cheapest feasible rung in about log2(len) evaluations; the trials left after
that test the cheaper rungs one by one, in case the ladder is not quite monotone.

  uniform   every uniform setting of the block groups (the best single setting for every group)
  greedy    the greedy sensitivity allocation's path (toggle.search.sensitivity.greedy_path)

The bisection is toggle.search.ladder's; the sampler keeps no state of its own.
"""
from __future__ import annotations

import numpy as np

from .ladder import Ladder, ladder_state
from .sampler import SpaceSampler


class LadderSampler(SpaceSampler):
    def __init__(self, name: str, ladder: list[np.ndarray], space, costs, budget_bytes, *, objective="size", seed=0):
        super().__init__(space, costs, budget_bytes, objective=objective, seed=seed)
        self.name = name
        self.ladder = Ladder(ladder, objective)

    def propose(self, study, trial) -> np.ndarray:
        point = self.ladder.next_rung(*ladder_state(self.space, study, trial))
        if point is None:  # the run loop stops before this happens (see `exhausted`)
            return self.random_point(study, trial)
        return point

    def exhausted(self, study) -> bool:
        """Every rung of the ladder within the budget has been evaluated or is being evaluated."""
        return self.ladder.next_rung(*ladder_state(self.space, study)) is None

    def next_rung(self, results, pending=frozenset()):
        return self.ladder.next_rung(results, pending)


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
    value = flops if objective == "flops" else size
    order = [i for i in np.lexsort((size, -value)) if size[i] <= budget_bytes]
    return [matrix[i] for i in order]
