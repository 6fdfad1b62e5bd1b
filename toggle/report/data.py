"""What a report is made of, read from a run directory's files alone (no model, no study needed),
through toggle.rundir: summary.json, trials.csv, plan.yaml, heldout.json, calibration.json,
space.json, sensitivity.json (or measured.json), and the other studies kept in the same study.db (baselines run with
the same --out)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..rundir import CALIBRATION, HELDOUT, MEASURED, SENSITIVITY, SPACE, RunDir


@dataclass
class Series:
    """One study's trials in order, for the convergence plot."""

    label: str
    trials: list[dict]  # number, bytes, flops_per_token, feasible, min_margin


@dataclass
class RunData:
    run_dir: Path
    summary: dict
    trials: list[dict]  # trials.csv rows: number, state, source, bytes, flops_per_token, feasible,
    #                     min_margin, robustness {property: value}, reason, params {name: value}
    properties: list[str]
    plan: dict | None = None  # plan.yaml as written
    heldout: dict | None = None  # the winner's held-out audit
    calibration: dict | None = None  # the winner's per-prompt calibration robustness
    space: dict | None = None  # search groups, for plans from trial parameters
    sensitivity: dict | None = None
    siblings: list[Series] = field(default_factory=list)  # other studies in the same study.db

    @property
    def label(self) -> str:
        relax = (self.summary.get("specs") or {}).get("relax") or 0
        return f"{self.summary.get('sampler', '?')}{f' relax {relax:g}' if relax else ''} ({self.run_dir.name})"

    @property
    def objective_key(self) -> str:
        return "flops_per_token" if self.summary.get("objective") == "flops" else "bytes"

    def series(self) -> Series:
        return Series(self.label, self.trials)

    def trial(self, number) -> dict | None:
        return next((t for t in self.trials if t["number"] == number), None)


def load_run(run_dir: str | Path) -> RunData:
    run = RunDir(run_dir)
    summary = run.read_summary()
    trials, properties = run.read_trials()
    data = RunData(run.path, summary, trials, properties or list((summary.get("robustness") or {})), run.read_plan(),
                   run.read_json(HELDOUT), run.read_json(CALIBRATION), run.read_json(SPACE),
                   run.read_json(SENSITIVITY) or run.read_json(MEASURED))
    data.siblings = [Series(label, rows) for label, rows in run.other_studies(exclude=summary.get("study"))]
    return data
