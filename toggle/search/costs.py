"""Vectorised cost of many candidate points at once.

The artifact's bytes and FLOPs are sums over modules, so a plan's cost is the untouched model's
cost plus one delta per group that depends only on that group's setting. Deltas are computed
with the exact cost function once per (group signature, setting): groups with the same module
shapes (every block's attention, every block's MLP) share them. A candidate pool of thousands
of points is then costed with a few numpy gathers; the chosen point is costed exactly again.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import InvalidInput
from ..plan import Plan
from .profile import KNOBS
from .space import SearchSpace, setting_of


class CostTable:
    def __init__(self, space: SearchSpace, cost_fn):
        self.space = space
        base = cost_fn(space.plan({}))
        self.base_bytes, self.base_flops = float(base.bytes), float(base.flops_per_token)
        self._combos: list[list[tuple]] = []  # per group: every (bits, sparsity, rank_ratio)
        self._delta: list[np.ndarray] = []  # per group: (n_combos, 2) bytes, flops
        cache: dict[tuple, tuple[float, float]] = {}
        why: dict[tuple, str] = {}  # (signature, combo) -> why the format cannot store it
        for g in space.groups:
            combos = list(itertools.product(*(g.choices[k] for k in KNOBS)))
            deltas = np.zeros((len(combos), 2))
            for ci, combo in enumerate(combos):
                key = (g.signature, combo)
                if key not in cache:
                    s = setting_of(dict(zip(KNOBS, combo)))
                    plan = Plan(model=space.model_id, modules={} if s.untouched else {m: s for m in g.modules},
                                methods=space.methods)
                    try:
                        c = cost_fn(plan)
                        cache[key] = (c.bytes - self.base_bytes, c.flops_per_token - self.base_flops)
                    except InvalidInput as e:
                        # A knob combination the format cannot store (a mixed GGUF menu's rtn at 3
                        # bits): an infinite cost keeps it out of every budget, path and pool.
                        cache[key] = (math.inf, math.inf)
                        why.setdefault(key, e.message)
                deltas[ci] = cache[key]
            _check_every_value_usable(space, g, combos, deltas, why)
            self._combos.append(combos)
            self._delta.append(deltas)
        self.cost_calls = len(cache) + 1
        # For each group: which column of an index vector drives each knob (None: fixed value).
        self._columns = [[space.dim_of(g.name, k) for k in KNOBS] for g in space.groups]
        self._strides = [[int(np.prod([len(g.choices[k2]) for k2 in KNOBS[ki + 1:]])) for ki in range(len(KNOBS))]
                         for g in space.groups]
        # For each group: the columns it drives, and each option's values there (options, columns).
        self._driven = [[c for c in cols if c is not None] for cols in self._columns]
        self._option_index = [np.array([[space.dims[c].choices.index(combo[ki]) for ki, c in enumerate(cols) if c is not None]
                                        for combo in combos], dtype=np.int64).reshape(len(combos), len(driven))
                              for cols, combos, driven in zip(self._columns, self._combos, self._driven)]

    @property
    def flops_vary(self) -> bool:
        """Whether any option changes the FLOPs per token (pruning, low rank): quantisation alone does not."""
        return any(np.any(d[np.isfinite(d[:, 1]), 1] != 0) for d in self._delta)

    def of(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, flops) for each row of an (N, dims) index matrix (or one vector)."""
        index = np.atleast_2d(index)
        total = np.tile([self.base_bytes, self.base_flops], (index.shape[0], 1))
        combos = self.combo_ids(index)
        for gi, deltas in enumerate(self._delta):
            total += deltas[combos[:, gi]]
        return total[:, 0], total[:, 1]

    # --- a point as one option per group ---------------------------------------------------------
    # A group's *options* are the combinations of its knob values (group.choices, least compressed
    # first); an index vector picks one per group.
    def combos(self, gi: int) -> list[tuple]:
        """Group gi's options, as (bits, group_size, quantizer, sparsity, rank_ratio) tuples."""
        return self._combos[gi]

    def usable(self, gi: int) -> np.ndarray:
        """(options,): whether the format can store each option of group gi."""
        return np.isfinite(self._delta[gi][:, 0])

    def bytes_delta(self, gi: int) -> np.ndarray:
        """Bytes each option of group gi adds to the untouched model's (negative: saves)."""
        return self._delta[gi][:, 0]

    def combo_ids(self, index: np.ndarray) -> np.ndarray:
        """(N, groups): the option of every group in each row of an index matrix."""
        index = np.atleast_2d(index)
        out = np.zeros((index.shape[0], len(self._delta)), dtype=np.int64)
        for gi in range(len(self._delta)):
            for col, stride in zip(self._columns[gi], self._strides[gi]):
                if col is not None:
                    out[:, gi] += index[:, col] * stride
        return out

    def with_combo(self, index: np.ndarray, gi: int, ci: int) -> np.ndarray:
        """A copy of `index` with group gi at its option ci."""
        out = np.array(index, dtype=np.int64, copy=True)
        out[self._driven[gi]] = self._option_index[gi][ci]
        return out

    def options_within(self, gi: int, limit: np.ndarray) -> np.ndarray:
        """(options,): whether each option of group gi stays within `limit` (a maximum index per
        dimension, e.g. what sensitivity profiling allows)."""
        return np.all(self._option_index[gi] <= np.asarray(limit)[self._driven[gi]], axis=1)

    def index_of(self, combo_ids) -> np.ndarray:
        """The index vector with each group at the given option."""
        index = self.space.untouched()
        for gi, ci in enumerate(combo_ids):
            index = self.with_combo(index, gi, int(ci))
        return index

    def min_bytes(self, limit: np.ndarray | None = None) -> float:
        """The smallest artifact the space allows (every group at its cheapest setting), within
        `limit` (a maximum index per dimension, e.g. what sensitivity profiling allows) if given."""
        return self.base_bytes + sum(float(self._group_deltas(gi, limit).min()) for gi in range(len(self._delta)))

    def min_bytes_index(self, limit: np.ndarray | None = None) -> np.ndarray:
        return self.index_of([int(np.argmin(self._group_deltas(gi, limit))) for gi in range(len(self._delta))])

    def _group_deltas(self, gi: int, limit: np.ndarray | None) -> np.ndarray:
        """Group gi's byte change per option; options outside `limit` count as +inf."""
        d = self._delta[gi][:, 0]
        return d if limit is None else np.where(self.options_within(gi, limit), d, np.inf)


def _check_every_value_usable(space: SearchSpace, g, combos: list[tuple], deltas: np.ndarray, why: dict) -> None:
    """A knob value the format cannot store with any of the group's other values is a mistake in
    the profile (GGUF has no 3-bit legacy type and the profile offers no other quantiser): say so
    rather than search without it."""
    compressed = [not setting_of(dict(zip(KNOBS, combo))).untouched for combo in combos]
    for ki, knob in enumerate(KNOBS):
        for value in g.choices[knob]:
            # the 16-bit option ignores the other knobs: a value counts as usable only with compression
            rows = [ci for ci, combo in enumerate(combos) if combo[ki] == value and compressed[ci]]
            if rows and not np.isfinite(deltas[rows, 0]).any():
                reason = why.get((g.signature, combos[rows[0]]), "")
                raise InvalidInput(f"{space.profile.source or space.profile.name}: {knob} {value} (group {g.name}): no "
                                   f"setting with it can be stored: {reason}")
