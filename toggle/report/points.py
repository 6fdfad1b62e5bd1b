"""Operating points: a few plans from the Pareto front a device can switch between.

  most_compressed   the smallest plan that satisfies every property (the search's winner)
  safety_margin     the smallest plan that keeps at least SAFETY of the untouched model's slack
                    on every property: robustness_p >= SAFETY * robustness_p(untouched)
                    (the untouched model's robustness comes from sensitivity.json; without it,
                    from the largest margin any trial reached)
  relaxed           the smallest plan that satisfies the properties under --relax'ed thresholds,
                    from a compared run directory that was searched with --relax

Each is written as a plan file (operating_points/NAME.yaml) that `toggle apply` takes. Plans
are rebuilt from a trial's parameters with space.json (the search groups), so no model is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..files import robustness_from_json
from ..plan import Plan
from ..rundir import POINTS, STATS, RunDir
from ..search.space import plan_from_groups
from ..search.study import IDENTITY_LABELS
from .data import RunData

SAFETY = 0.5


@dataclass
class OperatingPoint:
    name: str
    meaning: str
    trial: int | None
    bytes: int | None
    flops_per_token: float | None
    min_margin: float | None
    path: Path | None  # the plan file, None when it could not be written
    source: str  # the run directory it comes from
    note: str = ""


def operating_points(run: RunData, compare: list[RunData]) -> list[OperatingPoint]:
    """Choose the points and write their plan files under run_dir/operating_points/."""
    out_dir = run.run_dir / POINTS
    points = []
    key = run.objective_key
    # "smallest" under --objective size; under flops the points are the plans of fewest FLOPs per token
    least = "smallest plan" if key == "bytes" else "plan of fewest FLOPs per token"
    feasible = sorted((t for t in run.trials if t["feasible"]), key=lambda t: (t[key], t["number"]))
    if feasible:
        points.append(_point(run, feasible[0], "most_compressed", f"{least} satisfying every property", out_dir))
        reference = _reference(run)
        safe = [t for t in feasible if all(
            (t["robustness"].get(p) if t["robustness"].get(p) is not None else -math.inf) >= SAFETY * r
            for p, r in reference.items())]
        meaning = (f"{least} keeping >= {SAFETY:.0%} of the untouched model's margin on every property "
                   f"({', '.join(f'{p} >= {SAFETY * r:.4g}' for p, r in reference.items())})")
        if safe:
            points.append(_point(run, safe[0], "safety_margin", meaning, out_dir))
        else:
            points.append(OperatingPoint("safety_margin", meaning, None, None, None, None, None, str(run.run_dir),
                                         "no trial reached this margin; run more trials"))
    refused = None  # a --relax run searched with other inputs: said so when no other run gives the point
    for other in compare:
        relax = (other.summary.get("specs") or {}).get("relax") or 0
        if not relax:
            continue
        changed = _other_inputs(run, other)
        if changed:
            refused = refused or OperatingPoint(
                "relaxed", f"--relax {relax:g} run {other.run_dir}", None, None, None, None, None, str(other.run_dir),
                f"not taken: that run has other {changed} (only its thresholds may differ)")
            continue
        ok = sorted((t for t in other.trials if t["feasible"]), key=lambda t: (t[key], t["number"]))
        if ok:
            points.append(_point(other, ok[0], "relaxed", f"{least} satisfying every property with every "
                                 f"threshold relaxed by {relax:.0%} (--relax {relax:g})", out_dir))
            return points
    return points + ([refused] if refused else [])


def _other_inputs(run: RunData, other: RunData) -> str:
    """What, besides the spec constants (--relax), `other` was searched with that `run` was not
    (its identity entries, toggle.api.study_identity; runs without one are taken as they are)."""
    mine, theirs = run.summary.get("identity") or {}, other.summary.get("identity") or {}
    if not mine or not theirs:
        return ""
    return ", ".join(IDENTITY_LABELS.get(k, k) for k in sorted(set(mine) | set(theirs))
                     if k != "consts" and mine.get(k) != theirs.get(k))


def _reference(run: RunData) -> dict[str, float]:
    """Each property's robustness for the untouched model (its full slack)."""
    baseline = (run.sensitivity or {}).get("baseline") or {}
    decoded = {p: robustness_from_json(v) for p, v in baseline.items()}
    ref = {p: v for p, v in decoded.items() if math.isfinite(v) and v > 0}
    if len(ref) == len(run.properties):
        return ref
    best = {}
    for p in run.properties:
        values = [t["robustness"].get(p) for t in run.trials]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if values and max(values) > 0:
            best[p] = max(values)
    return best


def _point(run: RunData, trial: dict, name: str, meaning: str, out_dir: Path) -> OperatingPoint:
    plan = plan_for(run, trial)
    path, note = None, ""
    if plan is None:
        note = "space.json is missing from the run directory: rerun the search to write it"
    else:
        plan.meta.update(operating_point=name, trial=trial["number"], bytes=trial["bytes"],
                         flops_per_token=trial["flops_per_token"], robustness=trial["robustness"],
                         run=str(run.run_dir))
        # into the reported run's folder (out_dir), never into a compared run's
        path = RunDir(out_dir.parent).write_point(name, plan, stats_from=run.run_dir / STATS)
    return OperatingPoint(name, meaning, trial["number"], trial["bytes"], trial["flops_per_token"],
                          trial["min_margin"], path, str(run.run_dir), note)


def plan_for(run: RunData, trial: dict) -> Plan | None:
    """The plan of a trial, from its parameters and the run's space.json."""
    space = run.space
    if not space:
        best = run.summary.get("best_trial")
        if run.plan and trial["number"] == best:
            return Plan.from_dict(run.plan, source=str(run.run_dir / "plan.yaml"))
        return None
    return plan_from_groups(space, trial["params"])
