"""Sensitivity profiling: compress one group at a time, at a few levels, on a prompt subset.

What it buys the search:
- a *shrunk space*: a level that violates a property when its group alone is compressed is
  dropped for that group, with every more compressed value (robustness is a min over prompts,
  so a violation on the subset is a violation on the full calibration suite; compressing other
  groups as well is assumed not to help);
- a *loss estimate* per group and knob value (the fraction of the untouched model's margin it
  consumes), from which a greedy allocation builds a path of ever smaller plans: the greedy
  baseline bisects along it, and BO starts from its best-looking points;
- a table for the user.

Results are cached in the run directory (sensitivity.json, through a `store` the run directory
gives) and in the study's user attributes, keyed by the objective and the profile, so a resumed
run or another worker does not redo them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..files import robustness_from_json, robustness_to_json
from .objective import Objective
from .space import SearchSpace, _compression_rank


@dataclass
class SensitivityProfile:
    key: str
    baseline: dict[str, float]  # robustness of the untouched model on the subset
    entries: list[dict] = field(default_factory=list)  # {group, knob, value, robustness, reason}
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"key": self.key, "baseline": self.baseline, "entries": self.entries, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityProfile":
        return cls(key=d["key"], baseline=d["baseline"], entries=list(d["entries"]), seconds=d.get("seconds", 0.0))

    def margin(self, entry: dict) -> float:
        if entry.get("reason"):
            return -math.inf
        values = [robustness_from_json(v) for v in entry["robustness"].values()]
        return min(values) if values else math.inf


def spread(items: list, n: int) -> list:
    """n items spread evenly over the list: the profiling subset of the calibration prompts covers
    every domain of the suite."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def profiling_points(space: SearchSpace) -> list[tuple[str, str, object, np.ndarray]]:
    """(group, knob, value, index) for every group x profiled level the group allows."""
    points = []
    for gi, g in enumerate(space.groups):
        for knob, levels in space.profile.sensitivity.levels.items():
            col = space.dim_of(g.name, knob)
            if col is None:
                continue
            for value in dict.fromkeys(_nearest_choice(g.choices[knob], v) for v in levels):
                if value is not None:
                    index = space.untouched()
                    index[col] = g.choices[knob].index(value)
                    points.append((g.name, knob, value, index))
    return points


def _nearest_choice(choices: list, level):
    """The group's own value closest to a profiled level. A group whose choices stop short of
    the level (the embedding's bits end at 4 when blocks are profiled at 3) is profiled at its
    most compressed value instead of not at all: an unprofiled group would look free to
    compress to the greedy path and the BO prior."""
    compressing = choices[1:]  # choices[0] is the untouched value
    if not compressing:
        return None
    if level in compressing or not all(isinstance(c, (int, float)) for c in compressing):
        return level if level in compressing else None
    return min(compressing, key=lambda c: (abs(float(c) - float(level)), -compressing.index(c)))


def profile_key(space: SearchSpace, objective: Objective) -> str:
    """What makes entries comparable: model, trace, properties, prompt subset, grouping and
    methods. The levels are not part of it: entries are facts about one group at one value, so
    adding a level to a profile reuses every entry already measured."""
    s = space.profile.sensitivity
    base = getattr(objective, "cache_key", objective.model_id)
    # v2: vacuously true robustness stored as "inf" (it read as a violation before)
    return f"v2|{base}|{space.profile.granularity}|{space.methods}|prompts={s.prompts}|groups={len(space.groups)}"


def run_profiling(space: SearchSpace, objective: Objective, store=None, *, study=None,
                  on_step=None) -> SensitivityProfile:
    """Profile every group (resuming a partial cache); `store` (load() -> dict or None, save(dict))
    keeps the profile, e.g. RunDir.store(SENSITIVITY); `on_step(done, total)` reports progress."""
    key = profile_key(space, objective)
    prof = _load_cached(key, store, study)
    if prof is None:
        t0 = time.perf_counter()
        base = objective.evaluate(space.plan({})).robustness
        prof = SensitivityProfile(key=key, baseline={k: robustness_to_json(v) for k, v in base.items()})
        prof.seconds = time.perf_counter() - t0
    done = {(e["group"], e["knob"], _num(e["value"])) for e in prof.entries}
    points = profiling_points(space)
    for i, (group, knob, value, index) in enumerate(points):
        if on_step:
            on_step(i, len(points))
        if (group, knob, _num(value)) in done:
            continue
        t0 = time.perf_counter()
        out = objective.evaluate(space.plan(space.to_params(index)))
        prof.seconds += time.perf_counter() - t0
        prof.entries.append({"group": group, "knob": knob, "value": value,
                             "robustness": {k: robustness_to_json(v) for k, v in out.robustness.items()},
                             "reason": out.reason})
        if store is not None:
            store.save(prof.to_dict())  # a Ctrl-C loses at most one evaluation
    if on_step:
        on_step(len(points), len(points))
    if store is not None:
        store.save(prof.to_dict())
    if study is not None:
        study.set_user_attr("sensitivity", prof.to_dict())
    return prof


def _load_cached(key: str, store, study) -> SensitivityProfile | None:
    candidates = []
    if study is not None and "sensitivity" in study.user_attrs:
        candidates.append(study.user_attrs["sensitivity"])
    if store is not None:
        cached = store.load()
        if cached is not None:
            candidates.append(cached)
    matching = [SensitivityProfile.from_dict(c) for c in candidates if isinstance(c, dict) and c.get("key") == key]
    return max(matching, key=lambda p: len(p.entries)) if matching else None


def _num(v) -> float:
    return float(v)


# --- what the profile tells ---------------------------------------------------------------

def allowed_max(space: SearchSpace, prof: SensitivityProfile) -> np.ndarray:
    """Per dimension, the most compressed index still allowed: below the first violating level."""
    limit = space.sizes - 1
    for e in prof.entries:
        col = space.dim_of(e["group"], e["knob"])
        if col is None or prof.margin(e) >= 0:
            continue
        idx = space.dims[col].choices.index(e["value"]) if e["value"] in space.dims[col].choices else None
        if idx is not None:
            limit[col] = min(limit[col], max(idx - 1, 0))
    return limit


def drop_tables(space: SearchSpace, prof: SensitivityProfile) -> dict[str, list[np.ndarray]]:
    """Per property, per dimension, per choice: the estimated drop in robustness when that one
    knob of that one group takes that value.

    Measured levels are used as is; bits between or above them are extrapolated as quantisation
    noise (x4 per bit less), other knobs linearly in the ordinal index. A failed evaluation
    (NaN logits) counts as a drop of 10x the baseline margin."""
    tables: dict[str, list[np.ndarray]] = {}
    for p, r0 in prof.baseline.items():
        r0 = robustness_from_json(r0)
        r0 = r0 if math.isfinite(r0) else 0.0  # vacuous (+inf) or unscored base: no margin to drop from
        worst = 10.0 * max(abs(r0), 1e-3)
        measured: dict[tuple[int, int], float] = {}
        for e in prof.entries:
            col = space.dim_of(e["group"], e["knob"])
            if col is None or e["value"] not in space.dims[col].choices:
                continue
            r = robustness_from_json(e["robustness"].get(p))
            if e.get("reason") or r == -math.inf:
                drop = worst
            else:  # vacuously true (+inf) on the subset: no drop seen
                drop = 0.0 if r == math.inf else min(r0 - r, worst)
            measured[(col, space.dims[col].choices.index(e["value"]))] = drop
        tables[p] = [_interpolate(d, {i: v for (c, i), v in measured.items() if c == col})
                     for col, d in enumerate(space.dims)]
    return tables


def _interpolate(dim, measured: dict[int, float]) -> np.ndarray:
    known = {0: 0.0, **measured}
    xs = sorted(known)
    row = np.zeros(len(dim.choices))
    for i in range(len(row)):
        if i in known:
            row[i] = known[i]
        elif dim.knob == "bits" and len(xs) > 1:
            ref = min((x for x in xs if x > 0), key=lambda x: abs(x - i))
            row[i] = known[ref] * 4.0 ** (dim.choices[ref] - dim.choices[i])
        else:
            lo = max(x for x in xs if x < i)
            hi = min((x for x in xs if x > i), default=None)
            if hi is None:
                prev = max((x for x in xs if x < lo), default=None)
                slope = (known[lo] - known[prev]) / (lo - prev) if prev is not None else known[lo]
                row[i] = known[lo] + max(slope, 0.0) * (i - lo)
            else:
                row[i] = known[lo] + (known[hi] - known[lo]) * (i - lo) / (hi - lo)
    return np.maximum.accumulate(np.maximum(row, 0.0))  # more compression is assumed never to help


class AdditivePrior:
    """Robustness predicted from single-group profiling, assuming drops add up:
    r_p(x) ~ r0_p - sum_d drop_p[d][x_d]. BO uses it (rescaled by a fitted a + b * prior) as the
    GP's prior mean, greedy as its loss estimate."""

    def __init__(self, space: SearchSpace, prof: SensitivityProfile):
        self.names = list(prof.baseline)
        base = np.array([robustness_from_json(v) for v in prof.baseline.values()])
        self.base = np.where(np.isfinite(base), base, 0.0)
        self.drops = drop_tables(space, prof)
        # Dimensions no profiling entry measured (a knob the profile's levels leave out): their
        # drop is unknown, not zero, so the greedy path must not treat them as free.
        measured = {space.dim_of(e["group"], e["knob"]) for e in prof.entries}
        self.unmeasured = np.array([col not in measured for col in range(len(space.dims))], dtype=bool)

    def __call__(self, index: np.ndarray) -> np.ndarray:
        index = np.atleast_2d(index)
        out = np.tile(self.base, (index.shape[0], 1))
        for j, p in enumerate(self.names):
            for col, row in enumerate(self.drops[p]):
                out[:, j] -= row[index[:, col]]
        return out

    def loss(self) -> list[np.ndarray]:
        """Per dimension, per choice: the largest fraction of any property's margin consumed."""
        scale = np.maximum(np.abs(self.base), 1e-3)
        out = [np.max(np.stack([self.drops[p][col] / scale[j] for j, p in enumerate(self.names)]), axis=0)
               if self.names else np.zeros(1) for col in range(len(next(iter(self.drops.values()), [])))]
        for col in np.nonzero(self.unmeasured[:len(out)])[0]:
            out[col] = np.where(np.arange(len(out[col])) == 0, 0.0, np.inf)  # unknown: never a greedy move
        return out


def greedy_path(space: SearchSpace, costs, losses: list[np.ndarray], limit: np.ndarray, *, objective: str = "size"):
    """Greedy allocation: from the untouched model, repeatedly take the one-step compression with
    the best saving per unit of estimated loss, until nothing saves more. Returns the index
    vectors along the way (each cheaper than the last) and their estimated total loss."""
    column = 0 if objective == "size" else 1
    index = space.untouched()
    path, est = [index.copy()], [0.0]
    total = 0.0
    while True:
        cols = np.nonzero(index < limit)[0]
        if len(cols) == 0:
            break
        moves = np.repeat(index[None, :], len(cols), axis=0)
        moves[np.arange(len(cols)), cols] += 1
        current = costs.of(index)[column][0]
        saving = current - costs.of(moves)[column]
        dloss = np.array([losses[c][index[c] + 1] - losses[c][index[c]] for c in cols])
        with np.errstate(invalid="ignore"):
            score = np.where((saving > 0) & np.isfinite(dloss), saving / np.maximum(dloss, 1e-6), -np.inf)
        best = int(np.argmax(score))
        if not np.isfinite(score[best]):
            break
        index = moves[best]
        total += float(dloss[best])
        path.append(index.copy())
        est.append(total)
    return path, est


def table_rows(space: SearchSpace, prof: SensitivityProfile) -> tuple[list[str], list[list[str]]]:
    """Columns 'knob=value' and one row per group: the minimum margin with that group compressed."""
    cols = sorted({(e["knob"], e["value"]) for e in prof.entries}, key=lambda kv: (kv[0], _rank(kv)))
    cell = {(e["group"], e["knob"], e["value"]): prof.margin(e) for e in prof.entries}
    rows = []
    for g in space.groups:
        row = [g.name]
        for knob, value in cols:
            m = cell.get((g.name, knob, value))
            row.append("" if m is None else ("NaN" if m == -math.inf else f"{m:+.3f}"))
        rows.append(row)
    return ["group"] + [f"{k}={v}" for k, v in cols], rows


def _rank(kv) -> float:
    return _compression_rank(*kv)
