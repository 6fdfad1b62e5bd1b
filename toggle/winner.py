"""After a search: audit the winning plan on the held-out prompts and leave in the run directory
what the report needs, so `toggle report RUN_DIR` can rebuild it from files alone.

Written next to plan.yaml / summary.json:
  heldout.json      the audit of the winner on the held-out split (teacher mode, the same
                    simulated weights the artifact decodes to), as `toggle audit --json` writes it
  calibration.json  the winner's robustness per property and per calibration prompt
  space.json        the search groups (group -> modules, allowed values, methods), so any
                    trial's parameters become a plan without the model (operating points)
and summary.json gains `heldout` (pass_rate, satisfied, robustness per property) and `specs`
(files, consts, relax, overrides).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .atomic import atomic_write_json
from .errors import InvalidInput

HELDOUT = "heldout.json"
CALIBRATION = "calibration.json"
SPACE = "space.json"


def finish_search(result, *, loaded, specs, suite, evaluator, space, relax: float = 0.0,
                  overrides: dict | None = None) -> None:
    """Audit `result.plan` on the held-out split, record it, and write the report."""
    run_dir = Path(result.run_dir)
    summary = result.summary
    summary["specs"] = {"files": list(specs.files), "relax": relax, "overrides": dict(overrides or {}),
                        "consts": {n: c.value for consts in specs.consts.values() for n, c in consts.items()}}
    write_space(run_dir / SPACE, space)
    for name in (HELDOUT, CALIBRATION):  # a previous run's winner is not this one's
        (run_dir / name).unlink(missing_ok=True)
    if result.plan is not None:
        calibration = evaluator.evaluate(result.plan)
        evaluator.applier.restore()
        atomic_write_json(run_dir / CALIBRATION, {
            "trial": result.plan.meta.get("trial"), "split": "calibration",
            "robustness": {k: _finite(v) for k, v in calibration.robustness.items()},
            "per_prompt": {p: {i: _finite(v) for i, v in d.items()} for p, d in calibration.per_prompt.items()},
        })
        summary["heldout"] = audit_winner(result.plan, loaded, specs, suite, evaluator.applier, run_dir)
    else:
        summary["heldout"] = {"skipped": "no plan satisfies every property within the budget"}
    atomic_write_json(run_dir / "summary.json", summary)

    from .report import write_report

    write_report(run_dir)


def audit_winner(plan, loaded, specs, suite, applier, run_dir: Path) -> dict:
    """The held-out audit of `plan` (teacher mode, in process): summary.json's `heldout` block."""
    from .audit import audit_models, check_split

    try:
        check_split(suite, "heldout", specs)
    except InvalidInput as e:  # the search itself was fine: say why there is no held-out check
        return {"skipped": e.message}
    result = audit_models(loaded, loaded, specs, suite, split="heldout", mode="teacher", applier=applier, plan=plan,
                          artifact=f"{run_dir / 'plan.yaml'} (simulated)")
    atomic_write_json(run_dir / HELDOUT, result.to_dict())
    return {"pass_rate": result.pass_rate, "satisfied": result.satisfied, "prompts": len(result.prompts),
            "mode": result.mode, "robustness": {k: _finite(v) for k, v in result.robustness.items()},
            "share": {k: p.share for k, p in result.properties.items()}, "reason": result.reason}


def write_space(path: Path, space) -> None:
    atomic_write_json(path, {
        "model": space.model_id, "profile": space.profile.name, "granularity": space.profile.granularity,
        "methods": asdict(space.methods),
        "groups": [{"name": g.name, "modules": list(g.modules), "choices": {k: list(v) for k, v in g.choices.items()}}
                   for g in space.groups],
    })


def read_json(path: Path):
    """A run-directory JSON file, or None when absent; a damaged one is a clear error."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{path}: not valid JSON ({e}); rerun the search to rewrite it") from None


def _finite(v):
    import math

    return float(v) if v is not None and math.isfinite(v) else None
