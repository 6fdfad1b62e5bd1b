"""What a search's trials add up to: summary.json's figures and the best plan.

Everything is derived from the study's trial rows (toggle.rundir.trial_rows), so a resumed run
or another worker computes the same summary.
"""
from __future__ import annotations

import math

from ..files import robustness_to_json
from ..plan import Plan
from ..rundir import best_row, closest_row


def summarise(rows, *, objective_fn, space, budget_bytes: float, objective: str, sampler: str, seed: int,
              wall_seconds: float, extra: dict | None = None) -> tuple[dict, Plan | None]:
    """summary.json's content and the best feasible plan (None when nothing satisfies)."""
    best = best_row(rows, objective, budget_bytes)
    if objective == "margin" and best is not None and not best["feasible"]:
        best = None  # the most robust plan within the budget still violates a property
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
        "robustness": {k: robustness_to_json(v) for k, v in (chosen["robustness"] if chosen else {}).items()},
        "satisfied": best is not None,
        "trials": len(rows),
        "feasible_trials": sum(r["feasible"] for r in rows),
        # a sampler may propose a plan again (its repeat is not re-evaluated): the distinct ones
        "feasible_plans": len({tuple(sorted(r["params"].items())) for r in rows if r["feasible"]}),
        "wall_seconds": round(wall_seconds, 2),
        "sampler": sampler,
        "seed": seed,
        "profile": space.profile.name,
        "objective": objective,
        "best_trial": chosen["number"] if chosen else None,
        "min_margin": chosen["min_margin"] if chosen and math.isfinite(chosen["min_margin"]) else None,
        # the chosen plan was also scored on the confirmation prompts: its robustness and min_margin
        # are the lower of the two splits' (calibration.json holds the calibration prompts' own)
        "best_confirmed": bool(chosen and chosen.get("confirmed") is not None),
        "evaluation_seconds": round(sum(r["eval_seconds"] or 0.0 for r in rows), 2),
        # trials whose evaluation stopped early on their hardest prompts (their margins are upper bounds)
        "early_stopped_trials": sum(bool(r.get("partial")) for r in rows),
        "sampler_seconds": round(sum(r["sampler_seconds"] or 0.0 for r in rows), 2),
        # would-be best plans checked on the confirmation prompts, and those that failed there
        "confirmations": sum(r.get("confirmed") is not None for r in rows),
        "confirmation_rejections": sum(r.get("confirmed") is False for r in rows),
        # how the winner was chosen (e.g. BO's "allocator path" phase or its GP "bo" proposals),
        # and what each way of choosing gave: whether the model-guided search earned the winner
        "winner_strategy": _strategy(chosen) if chosen else None,
        "trials_by_strategy": _by_strategy(rows),
        **(extra or {}),
    }
    plan = None
    if best is not None:
        plan = space.plan(best["params"], trial=best["number"], robustness=best["robustness"],
                          bytes=best["bytes"], flops_per_token=best["flops_per_token"])
    return summary, plan


def _strategy(row: dict) -> str:
    """How the sampler chose a trial (its sampler_info), else the sampler that ran it."""
    return row.get("strategy") or row.get("source") or "unknown"


def _by_strategy(rows: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = out.setdefault(_strategy(r), {"trials": 0, "feasible": 0})
        counts["trials"] += 1
        counts["feasible"] += bool(r["feasible"])
    return out
