"""Measured errors: what each option of each group does, bought with few model evaluations.

Two measurements, kept in the run directory (sensitivity.json) and the study:

* the *output error* of every option of every group, from the calibration statistics alone
  (no forward pass): for a module y = W x with input Gram matrix G = E[x x^T], quantising,
  pruning or factorising W to W' perturbs its output by E||(W' - W) x||^2 = tr(dW G dW^T);
  relative to the output's energy tr(W G W^T) and summed over the group's modules, this is
  `error[g][o]` (for round-to-nearest options, whose errors are independent across inputs, the
  diagonal part sum_i G_ii ||dW[:, i]||^2: PlanApplier.output_error). It ranks a group's options, and it adds across groups the way small
  perturbations of a network roughly do;
* one *probe* per group: a full evaluation (on the profiling prompts) with only that group
  compressed at one well-chosen option, which turns output error into each property's
  robustness drop: coef[p][g] = drop_p / error[g][probe].

The additive model then predicts every plan: robustness_p(x) = r0_p - sum_g coef[p][g] *
error[g][x_g]. It is the prior of the BO surrogate and the loss of the measured-error allocator
(`allocation_path`), the exllamav3-style baseline: from the untouched model, repeatedly take the
one-group move that saves the most bytes per unit of predicted margin consumed.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..compress.linalg import single_threaded
from .costs import CostTable
from .objective import Objective
from .space import SearchSpace, setting_of
from ..files import robustness_from_json, robustness_to_json
from .profile import KNOBS

PROBE_QUANTILE = 0.75  # the probe option: this quantile of a group's option errors (log scale)
SATURATED = 10.0  # a probe that could not be scored counts as a drop of this many margins


@dataclass
class Measured:
    key: str
    baseline: dict[str, float]  # robustness of the untouched model on the profiling prompts
    errors: list[list[float]]  # per group, per option (CostTable.combos order): relative output error
    probes: list[dict] = field(default_factory=list)  # {group, option, robustness, reason}
    seconds: float = 0.0
    evaluations: int = 0

    def to_dict(self) -> dict:
        return {"kind": "measured", "key": self.key, "baseline": self.baseline, "errors": self.errors,
                "probes": self.probes, "seconds": self.seconds, "evaluations": self.evaluations}

    @classmethod
    def from_dict(cls, d: dict) -> "Measured":
        return cls(key=d["key"], baseline=d["baseline"], errors=d["errors"], probes=list(d.get("probes", [])),
                   seconds=d.get("seconds", 0.0), evaluations=d.get("evaluations", 0))


class AdditiveModel:
    """Per property, per group, per option: the predicted robustness drop (coef * error)."""

    def __init__(self, space: SearchSpace, costs: CostTable, measured: Measured):
        self.space, self.costs = space, costs
        self.names = list(measured.baseline)
        base = np.array([robustness_from_json(measured.baseline[p]) for p in self.names])
        # +inf: vacuously true on the profiling prompts (e.g. no prompt there has a gold answer), so
        # a probe cannot show a drop; -inf: the base model could not be scored. Neither has a margin.
        vacuous = np.isposinf(base)
        self.base = np.where(np.isfinite(base), base, 0.0)
        self.scale = np.maximum(np.abs(self.base), 1e-3)  # a property's margin: what a drop is measured against
        errors = [np.asarray(e, dtype=float) for e in measured.errors]
        probes = {(p["group"], p["option"]): p for p in measured.probes}
        self.drops: list[np.ndarray] = []  # per group: (options, properties)
        for gi, g in enumerate(space.groups):
            e = errors[gi]
            probe = next((v for (name, _), v in probes.items() if name == g.name), None)
            coef = np.zeros(len(self.names))
            if probe is not None and e[probe["option"]] > 0:
                for j, p in enumerate(self.names):
                    r = robustness_from_json(probe["robustness"].get(p))
                    if probe.get("reason") or r == -math.inf:
                        drop = SATURATED * self.scale[j]
                    elif r == math.inf or vacuous[j]:  # nothing measured against: only a violation counts
                        drop = 0.0 if r >= 0 else SATURATED * self.scale[j]
                    else:
                        drop = self.base[j] - r
                    coef[j] = max(drop, 0.0) / e[probe["option"]]
            elif probe is None and e.max() > 0:
                coef[:] = np.nan  # not probed: unknown, never free
            self.drops.append(np.outer(e, np.nan_to_num(coef, nan=0.0)) if not np.isnan(coef).any()
                              else np.where(e[:, None] > 0, np.inf, 0.0) * np.ones((1, len(self.names))))

    def predict(self, index: np.ndarray) -> np.ndarray:
        """(N, properties): predicted robustness of each row of an index matrix."""
        combos = self.costs.combo_ids(index)
        out = np.tile(self.base, (combos.shape[0], 1))
        for gi, d in enumerate(self.drops):
            out -= d[combos[:, gi]]
        return out

    __call__ = predict  # the BO surrogate calls its prior

    def loss(self, index: np.ndarray) -> np.ndarray:
        """(N,): the largest share of any property's margin the plan is predicted to consume."""
        return np.max((self.base - self.predict(index)) / self.scale, axis=1)

    def zone_loss(self, index: np.ndarray, zones: list[int], n_zones: int) -> np.ndarray:
        """(N, zones): predicted margin consumed per zone of groups (the BO surrogate's features)."""
        combos = self.costs.combo_ids(index)
        out = np.zeros((combos.shape[0], n_zones))
        for gi, d in enumerate(self.drops):
            share = np.max(np.minimum(d / self.scale, 1e6), axis=1)
            out[:, zones[gi]] += share[combos[:, gi]]
        return out


def measure_key(space: SearchSpace, objective: Objective) -> str:
    base = getattr(objective, "cache_key", objective.model_id)
    # v3: round-to-nearest options are priced by the Gram matrix's diagonal (PlanApplier.output_error)
    return (f"measured|v3|{base}|{space.profile.granularity}|{space.methods}|prompts={space.profile.sensitivity.prompts}"
            f"|groups={len(space.groups)}|knobs={[g.choices for g in space.groups[:2]]}")


def run_measurement(space: SearchSpace, costs: CostTable, objective: Objective, profiling: Objective, store=None, *,
                    study=None, on_step=None) -> Measured:
    """Output errors of every option (from `objective`), then one probe evaluation per group
    (on `profiling`, the prompt subset); resumes a partial measurement from `store` / the study."""
    key = measure_key(space, objective)
    m = _load(key, store, study)
    t0 = time.perf_counter()
    if m is None:
        base = profiling.evaluate(space.plan({}))
        m = Measured(key=key, baseline={k: robustness_to_json(v) for k, v in base.robustness.items()},
                     errors=[], evaluations=1)
    if len(m.errors) < len(space.groups):
        m.errors = all_group_errors(space, costs, objective)
        _save(m, store)
    done = {p["group"] for p in m.probes}
    for gi, g in enumerate(space.groups):
        if on_step:
            on_step(gi, len(space.groups))
        if g.name in done:
            continue
        option = probe_option(m.errors[gi])
        if option is None:
            continue  # nothing to compress in this group
        out = profiling.evaluate(space.plan(space.to_params(costs.with_combo(space.untouched(), gi, option))))
        m.probes.append({"group": g.name, "option": option, "reason": out.reason,
                         "robustness": {k: robustness_to_json(v) for k, v in out.robustness.items()}})
        m.evaluations += 1
        m.seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        _save(m, store)  # a Ctrl-C loses at most one evaluation
    m.seconds += time.perf_counter() - t0
    if on_step:
        on_step(len(space.groups), len(space.groups))
    _save(m, store)
    if study is not None:
        study.set_user_attr("measured", m.to_dict())
    return m


def all_group_errors(space: SearchSpace, costs: CostTable, objective: Objective) -> list[list[float]]:
    """group_errors of every group, groups shared among as many threads as torch has, each running
    torch single-threaded: one option's quantisation of a few hundred rows is too small to split
    across threads, several run side by side (SmolLM2-135M's default profile on an AMD EPYC, 2 cores:
    20.7-22.9 s one group at a time, 13.7-14.9 s two at once)."""
    groups = range(len(space.groups))
    workers = min(torch.get_num_threads(), len(groups))
    with single_threaded():
        if workers < 2:
            return [group_errors(space, costs, objective, gi) for gi in groups]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="toggle-errors")
        try:
            return list(pool.map(lambda gi: group_errors(space, costs, objective, gi), groups))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a Ctrl-C drops the groups not started


def group_errors(space: SearchSpace, costs: CostTable, objective: Objective, gi: int) -> list[float]:
    """The relative output error of every option of group gi (0 for the untouched option and for
    options the format cannot store)."""
    g = space.groups[gi]
    out = []
    for combo, usable in zip(costs.combos(gi), costs.usable(gi)):
        setting = setting_of(dict(zip(KNOBS, combo)))
        # An option the format cannot store is never chosen (infinite cost): not worth measuring.
        skip = setting.untouched or not usable
        out.append(0.0 if skip else float(objective.output_error(g.modules, setting, space.methods)))
    return out


def probe_option(errors: list[float]) -> int | None:
    """The option probed for a group: the PROBE_QUANTILE of its options' errors on a log scale,
    strong enough for the drop to stand out of the noise of a few prompts, short of breaking
    the model (where drops saturate and stop being proportional)."""
    nonzero = [(e, i) for i, e in enumerate(errors) if e > 0 and math.isfinite(e)]
    if not nonzero:
        return None
    logs = np.log([e for e, _ in nonzero])
    target = np.quantile(logs, PROBE_QUANTILE)
    return min(nonzero, key=lambda ei: (abs(math.log(ei[0]) - target), ei[1]))[1]


def _option_tables(model: AdditiveModel, costs: CostTable, limit: np.ndarray | None, column: int,
                   exclude=()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every group's options side by side (padded options are never allowed), so one step scores
    every move of every group in a few array operations: (groups, options, properties) predicted
    drops, (groups, options) cost deltas, and which options may be taken (`exclude`: (group,
    option) pairs that may not)."""
    n_groups, n_props = len(model.drops), len(model.names)
    width = max(len(costs.combos(gi)) for gi in range(n_groups))
    drops = np.zeros((n_groups, width, n_props))
    cost = np.zeros((n_groups, width))
    allowed = np.zeros((n_groups, width), dtype=bool)
    for gi in range(n_groups):
        n = len(costs.combos(gi))
        drops[gi, :n] = model.drops[gi]
        cost[gi, :n] = costs._delta[gi][:, column]
        allowed[gi, :n] = True if limit is None else costs.options_within(gi, limit)
    for gi, ci in exclude:
        allowed[gi, ci] = False
    return drops, cost, allowed


def allocation_path(model: AdditiveModel, costs: CostTable, limit: np.ndarray | None = None,
                    objective: str = "size", start: np.ndarray | None = None,
                    floor: float | None = None, exclude=()) -> tuple[list[np.ndarray], list[float]]:
    """The measured-error allocator: from the untouched model (or the plan `start`, an index
    vector), repeatedly move one group to the option that saves the most bytes (or FLOPs) per unit
    of predicted margin consumed (the largest share of any property's margin), until no move saves
    anything, or (with `floor`) once a plan costs at most `floor`. `exclude`: (group, option) pairs
    never moved to. Returns the index vectors along the way, each cheaper than the last (the first
    is the start), and their predicted losses."""
    column = 1 if objective == "flops" else 0
    n_groups, n_props = len(model.drops), len(model.names)
    drops, saving, allowed = _option_tables(model, costs, limit, column, exclude)
    # Per step only the moved group's row changes: keep each group's move deltas (per property,
    # laid out property-first so the max over properties is a few elementwise maxima).
    rows = np.arange(n_groups)
    current = np.zeros(n_groups, dtype=np.int64) if start is None else costs.combo_ids(start)[0]
    at = drops[rows, current]  # (groups, properties): each group's drop at its current option
    delta = np.moveaxis(drops - at[:, None, :], 2, 0).copy()  # (properties, groups, options): drop added by each move
    gain = saving[rows, current][:, None] - saving  # bytes saved by each move from the current option
    open_moves = (gain > 0) & allowed
    totals = at.sum(axis=0)  # predicted drop per property
    index = costs.index_of(current) if start is None else np.array(start, dtype=np.int64)
    value = float(costs.of(index)[column][0]) if floor is not None else 0.0
    path = [index]
    with np.errstate(invalid="ignore"):  # inf - inf for a move away from an unprobed option: never taken
        loss = float(np.max(totals / model.scale))  # 0 from the untouched model
        losses = [loss]
        while True:
            new_loss = (totals[0] + delta[0]) / model.scale[0]
            for p in range(1, n_props):
                np.maximum(new_loss, (totals[p] + delta[p]) / model.scale[p], out=new_loss)
            worse = np.maximum(new_loss - loss, 1e-9)
            score = np.where(open_moves & np.isfinite(new_loss), gain / worse, -np.inf)
            # Row-major argmax: the best move, ties to the first group and its first option.
            gi, ci = np.unravel_index(int(np.argmax(score)), score.shape)
            if not np.isfinite(score[gi, ci]):
                break
            loss = float(new_loss[gi, ci])
            value -= float(gain[gi, ci])
            totals = totals + drops[gi, ci] - drops[gi, current[gi]]
            current[gi] = ci
            delta[:, gi] = (drops[gi] - drops[gi, ci]).T
            gain[gi] = saving[gi, ci] - saving[gi]
            open_moves[gi] = (gain[gi] > 0) & allowed[gi]
            index = costs.with_combo(index, int(gi), int(ci))
            path.append(index)
            losses.append(loss)
            if floor is not None and value <= floor:
                break
    return path, losses


def refill(model: AdditiveModel, costs: CostTable, index: np.ndarray, budget: float,
           limit: np.ndarray | None = None) -> np.ndarray:
    """Spend what the budget leaves: from the plan `index` (within `budget` bytes), repeatedly
    move one group to the option that lowers the predicted loss most per byte added, while the
    plan stays within the budget. The allocator's path gets cheaper one move at a time, so its
    first plan within a budget can lie well below it."""
    drops, cost, allowed = _option_tables(model, costs, limit, 0)
    rows = np.arange(len(drops))
    current = costs.combo_ids(index)[0].copy()
    index = np.array(index, dtype=np.int64)
    size = float(costs.of(index)[0][0])
    with np.errstate(invalid="ignore"):  # inf - inf for an unprobed group's options: never taken
        for _ in range(4 * len(rows)):  # every move lowers the loss; the cap guards against float ties
            at = drops[rows, current]  # (groups, properties)
            totals = at.sum(axis=0)
            loss = float(np.max(totals / model.scale))
            new_loss = ((totals - at)[:, None, :] + drops) / model.scale
            new_loss = new_loss.max(axis=2)  # (groups, options)
            added = cost - cost[rows, current][:, None]
            ok = allowed & np.isfinite(new_loss) & (new_loss < loss - 1e-12) & (size + added <= budget)
            if not ok.any():
                break
            score = np.where(ok, (loss - new_loss) / np.maximum(added, 1.0), -np.inf)
            gi, ci = np.unravel_index(int(np.argmax(score)), score.shape)
            size += float(added[gi, ci])
            current[gi] = ci
            index = costs.with_combo(index, int(gi), int(ci))
    return index


def budget_plan(model: AdditiveModel, costs: CostTable, budget: float, limit: np.ndarray | None = None,
                alternatives: int = 3) -> np.ndarray | None:
    """The measured-error allocator's answer to --objective margin: the plan within `budget` bytes
    with the least predicted loss (ties: the larger) among the allocator path's first plan within
    the budget and `alternatives` more, each the path continued from the last plan above the budget
    with the group whose move crossed it left where it was (one large move, say the embedding from
    8 to 5 bits, can land far below a budget that a few small moves elsewhere would have met), each
    then refilled up to the budget (`refill`). None when no plan fits."""
    untouched = costs.space.untouched()
    if costs.of(untouched)[0][0] <= budget:
        return untouched
    candidates, start, exclude = [], None, []
    for _ in range(alternatives + 1):
        path, _ = allocation_path(model, costs, limit, start=start, floor=budget, exclude=exclude)
        if costs.of(path[-1])[0][0] > budget:
            break  # no move left saves anything: nothing within the budget this way
        candidates.append(refill(model, costs, path[-1], budget, limit))
        if len(path) < 2:
            break
        before, after = costs.combo_ids(np.stack(path[-2:]))
        gi = int(np.flatnonzero(before != after)[0])  # the group whose move crossed: it stays where it was
        start = path[-2]
        exclude = exclude + [(gi, ci) for ci in range(len(costs.combos(gi))) if ci != before[gi]]
    if not candidates:
        return None
    matrix = np.stack(candidates)
    losses, sizes = model.loss(matrix), costs.of(matrix)[0]
    return matrix[min(range(len(candidates)), key=lambda i: (losses[i], -sizes[i]))]


def zones_of(space: SearchSpace, thirds: int = 3) -> tuple[list[int], int]:
    """Each group's zone for the BO surrogate's features: the embedding, then (part, depth third)."""
    blocks = sorted({int(g.name[1:3]) for g in space.groups if g.name.startswith("b")})
    parts = sorted({g.name.split(".", 1)[1] if "." in g.name else "block" for g in space.groups if g.name != "embed"})
    zone = []
    for g in space.groups:
        if g.name == "embed" or not g.name.startswith("b"):
            zone.append(0)
            continue
        block = int(g.name[1:3])
        third = min(thirds - 1, blocks.index(block) * thirds // max(len(blocks), 1))
        part = g.name.split(".", 1)[1] if "." in g.name else "block"
        zone.append(1 + parts.index(part) * thirds + third)
    return zone, 1 + len(parts) * thirds


def _load(key: str, store, study) -> Measured | None:
    candidates = []
    if study is not None and isinstance(study.user_attrs.get("measured"), dict):
        candidates.append(study.user_attrs["measured"])
    if store is not None:
        cached = store.load()
        if isinstance(cached, dict):
            candidates.append(cached)
    matching = [Measured.from_dict(c) for c in candidates if c.get("kind") == "measured" and c.get("key") == key]
    return max(matching, key=lambda m: (len(m.errors), len(m.probes))) if matching else None


def _save(m: Measured, store) -> None:
    if store is not None:
        store.save(m.to_dict())
