"""What a report is made of, read from a run directory's files alone (no model, no study needed):
summary.json, trials.csv, plan.yaml, heldout.json, calibration.json, space.json,
sensitivity.json, and the other studies kept in the same study.db (baselines run with the
same --out)."""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import InvalidInput
from ..winner import CALIBRATION, HELDOUT, SPACE, read_json

FIXED_COLUMNS = ("number", "state", "source", "value", "bytes", "flops_per_token", "feasible", "min_margin")
TIMING_COLUMNS = ("reason", "eval_seconds", "sampler_seconds")
log = logging.getLogger(__name__)


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
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InvalidInput(f"{run_dir}: no such run directory; expected the --out directory of `toggle search`")
    summary = read_json(run_dir / "summary.json")
    if summary is None:
        raise InvalidInput(f"{run_dir}: not a toggle run directory (no summary.json); expected the --out "
                           f"directory of `toggle search`")
    if not isinstance(summary, dict) or "base_size_bytes" not in summary:
        raise InvalidInput(f"{run_dir / 'summary.json'}: base_size_bytes: missing; not a toggle search summary")
    trials, properties = read_trials(run_dir / "trials.csv")
    plan = None
    if (run_dir / "plan.yaml").is_file():
        try:
            plan = yaml.safe_load((run_dir / "plan.yaml").read_text())
        except yaml.YAMLError as e:
            raise InvalidInput(f"{run_dir / 'plan.yaml'}: not valid YAML: {e}") from None
    data = RunData(run_dir, summary, trials, properties or list((summary.get("robustness") or {})), plan,
                   read_json(run_dir / HELDOUT), read_json(run_dir / CALIBRATION), read_json(run_dir / SPACE),
                   read_json(run_dir / "sensitivity.json"))
    data.siblings = sibling_series(run_dir / "study.db", exclude=summary.get("study"))
    return data


def read_trials(path: Path) -> tuple[list[dict], list[str]]:
    """trials.csv as dicts (numbers parsed, empty cells None) and the property names."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        head = next(reader, None)
        if not head or head[: len(FIXED_COLUMNS)] != list(FIXED_COLUMNS):
            raise InvalidInput(f"{path}: line 1: expected the columns {', '.join(FIXED_COLUMNS)}, ...; "
                               f"not a toggle trials file")
        properties = [h.split(":", 1)[1] for h in head if h.startswith("robustness:")]
        end = len(FIXED_COLUMNS) + len(properties)
        params = head[end + len(TIMING_COLUMNS):]
        rows = []
        for lineno, cells in enumerate(reader, 2):
            if len(cells) != len(head):
                raise InvalidInput(f"{path}: line {lineno}: {len(cells)} cells, the header has {len(head)}")
            try:
                rows.append({
                    "number": int(cells[0]), "state": cells[1], "source": cells[2],
                    "bytes": _num(cells[4]), "flops_per_token": _num(cells[5]), "feasible": cells[6] == "True",
                    "min_margin": _num(cells[7]),
                    "robustness": {p: _num(v) for p, v in zip(properties, cells[len(FIXED_COLUMNS):end])},
                    "reason": cells[end] or None,
                    "params": {p: _num(v) for p, v in zip(params, cells[end + len(TIMING_COLUMNS):])},
                })
            except ValueError as e:
                raise InvalidInput(f"{path}: line {lineno}: {e}") from None
    return rows, properties


def sibling_series(db: Path, exclude: str | None) -> list[Series]:
    """Every other study in the run directory's study.db (e.g. a random-search baseline run with
    the same --out), as convergence series. Read only; nothing when there is no study.db."""
    if not db.is_file():
        return []
    import optuna
    from optuna.trial import TrialState

    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}", skip_table_creation=True)
        studies = optuna.get_all_study_names(storage=storage)
    except Exception as e:  # a locked or foreign database: the report goes on without the siblings
        log.warning("%s: cannot read the other studies: %s", db, str(e).splitlines()[0] if str(e) else e)
        return []
    out = []
    for name in studies:
        if name == exclude:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        rows = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            rob = t.user_attrs.get("robustness") or {}
            margins = [v if v is not None else -math.inf for v in rob.values()]
            rows.append({"number": t.number, "bytes": t.user_attrs.get("bytes"),
                         "flops_per_token": t.user_attrs.get("flops_per_token"),
                         "feasible": (t.state == TrialState.COMPLETE and bool(rob)
                                      and all(c <= 0 for c in (t.constraints or {}).values())),
                         "min_margin": min(margins) if margins else None})
        if rows:
            sampler = (study.user_attrs.get("toggle") or {}).get("sampler", name)
            out.append(Series(f"{sampler} (study {name})", rows))
    return out


def _num(text: str):
    if text == "":
        return None
    if text in ("inf", "-inf"):
        return float(text)
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
