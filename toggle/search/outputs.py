"""What a search leaves in its run directory: plan.yaml, summary.json, trials.csv, pareto.csv.

Everything is derived from the study's trials (so a resumed run or another worker rewrites the
same files) and written atomically.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from optuna.trial import TrialState

from ..atomic import atomic_write_json, atomic_write_text
from ..plan import Plan


def trial_rows(study, space) -> list[dict]:
    """One dict per finished trial (complete or pruned), in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        rob = t.user_attrs.get("robustness") or {}
        margins = [v if v is not None else -math.inf for v in rob.values()]
        feasible = (t.state == TrialState.COMPLETE and bool(rob) and all(c <= 0 for c in t.constraints.values()))
        rows.append({
            "number": t.number,
            "state": t.state.name.lower(),
            "source": t.user_attrs.get("source", ""),
            "value": t.value,
            "bytes": t.user_attrs.get("bytes"),
            "flops_per_token": t.user_attrs.get("flops_per_token"),
            "feasible": feasible,
            "min_margin": min(margins) if margins else None,
            "robustness": rob,
            "reason": t.user_attrs.get("reason"),
            "eval_seconds": t.user_attrs.get("eval_seconds", 0.0),
            "sampler_seconds": t.user_attrs.get("sampler_seconds", 0.0),
            "params": {p: t.params.get(p) for p in space.params},
        })
    return rows


def best_row(rows: list[dict], objective: str) -> dict | None:
    key = "bytes" if objective == "size" else "flops_per_token"
    feasible = [r for r in rows if r["feasible"]]
    return min(feasible, key=lambda r: (r[key], r["number"])) if feasible else None


def closest_row(rows: list[dict], budget_bytes: float) -> dict | None:
    """The evaluated plan within the budget that came closest to satisfying every property."""
    fits = [r for r in rows if r["robustness"] and r["bytes"] is not None and r["bytes"] <= budget_bytes]
    return max(fits, key=lambda r: (r["min_margin"], -r["bytes"])) if fits else None


def pareto_rows(rows: list[dict]) -> list[dict]:
    """Evaluated plans not dominated in (smaller bytes, larger minimum margin)."""
    evaluated = sorted((r for r in rows if r["robustness"] and r["min_margin"] is not None),
                       key=lambda r: (r["bytes"], -r["min_margin"]))
    front, best = [], -math.inf
    for r in evaluated:
        if r["min_margin"] > best:
            front.append(r)
            best = r["min_margin"]
    return front


def write_trials_csv(path: Path, rows: list[dict], properties: list[str], params: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["number", "state", "source", "value", "bytes", "flops_per_token", "feasible", "min_margin"]
    w.writerow(head + [f"robustness:{p}" for p in properties] + ["reason", "eval_seconds", "sampler_seconds"] + params)
    for r in rows:
        w.writerow([_fmt(r[k]) for k in head] + [_fmt(r["robustness"].get(p)) for p in properties]
                   + [r["reason"] or "", _fmt(r["eval_seconds"]), _fmt(r["sampler_seconds"])]
                   + [_fmt(r["params"][p]) for p in params])
    atomic_write_text(path, buf.getvalue())


def write_pareto_csv(path: Path, rows: list[dict], properties: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "bytes", "flops_per_token", "min_margin", "feasible"] + [f"robustness:{p}" for p in properties])
    for r in pareto_rows(rows):
        w.writerow([r["number"], _fmt(r["bytes"]), _fmt(r["flops_per_token"]), _fmt(r["min_margin"]), r["feasible"]]
                   + [_fmt(r["robustness"].get(p)) for p in properties])
    atomic_write_text(path, buf.getvalue())


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("-inf" if v < 0 else "inf")
    return str(v)


def summarise(rows, *, objective_fn, space, budget_bytes: float, objective: str, sampler: str, seed: int,
              wall_seconds: float, extra: dict | None = None) -> tuple[dict, Plan | None]:
    """summary.json's content and the best feasible plan (None when nothing satisfies)."""
    best = best_row(rows, objective)
    chosen = best or closest_row(rows, budget_bytes)
    base_bytes, base_flops = objective_fn.base16_bytes, objective_fn.base_flops_per_token
    summary = {
        "model": objective_fn.model_id,
        "budget_bytes": int(budget_bytes),
        "base_size_bytes": int(base_bytes),
        "compressed_size_bytes": chosen["bytes"] if chosen else None,
        "size_reduction": (1.0 - chosen["bytes"] / base_bytes) if chosen else None,
        "base_flops_per_token": base_flops,
        "compressed_flops_per_token": chosen["flops_per_token"] if chosen else None,
        "flops_reduction": (base_flops / chosen["flops_per_token"]) if chosen and chosen["flops_per_token"] else None,
        # the same size against the file the model was loaded from (a GGUF may be 4-bit already)
        "loaded_size_bytes": getattr(objective_fn, "loaded_bytes", None),
        "loaded_format": getattr(objective_fn, "loaded_format", None),
        "robustness": {k: (v if v is None or math.isfinite(v) else None) for k, v in (chosen["robustness"] if chosen else {}).items()},
        "satisfied": best is not None,
        "trials": len(rows),
        "feasible_trials": sum(r["feasible"] for r in rows),
        "wall_seconds": round(wall_seconds, 2),
        "sampler": sampler,
        "seed": seed,
        "profile": space.profile.name,
        "objective": objective,
        "best_trial": chosen["number"] if chosen else None,
        "min_margin": chosen["min_margin"] if chosen and math.isfinite(chosen["min_margin"]) else None,
        "evaluation_seconds": round(sum(r["eval_seconds"] or 0.0 for r in rows), 2),
        "sampler_seconds": round(sum(r["sampler_seconds"] or 0.0 for r in rows), 2),
        **(extra or {}),
    }
    plan = None
    if best is not None:
        plan = space.plan(best["params"], trial=best["number"], robustness=best["robustness"],
                          bytes=best["bytes"], flops_per_token=best["flops_per_token"])
    return summary, plan


def write_outputs(run_dir: Path, rows, summary: dict, plan: Plan | None, properties, params) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        plan.save(run_dir / "plan.yaml")
    atomic_write_json(run_dir / "summary.json", summary)
    write_trials_csv(run_dir / "trials.csv", rows, properties, params)
    write_pareto_csv(run_dir / "pareto.csv", rows, properties)
