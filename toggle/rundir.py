"""The run directory of a search: this module owns its file names, writers and readers.

    plan.yaml          the best plan (absent when nothing satisfies every property)
    summary.json       the search's figures, written once, after the held-out audit
    trials.csv         one row per finished trial (columns below)
    pareto.csv         the trials not dominated in (smaller size, larger minimum margin)
    study.db           the Optuna study (sqlite; any Optuna storage with --storage)
    sensitivity.json   single-group profiling, reused by a resumed run
    measured.json      measured-error profiling (output errors, one probe per group), likewise
    space.json         the search groups, so any trial's parameters become a plan without the model
    calibration.json   the winner's robustness per property and calibration prompt
    heldout.json       the winner's held-out audit, as `toggle audit --json` writes it
    model/             the winner's compressed model in the profile's format (not with --no-apply)
    calibration_stats.safetensors   activation statistics of aware methods (Wanda, AWQ, GPTQ, ASVD)
    report.md, report.html, *.png, operating_points/   the report (`toggle report RUN_DIR`)
    .toggle-run        marks the folder as a run directory: a search refuses any other non-empty one

A search into a run directory first removes the previous run's results (RESULTS), keeping the
caches keyed by their inputs, so a run stopped half way never mixes two runs' files.

Trial rows are one dict shape whether they come from the study (`trial_rows`) or from
trials.csv (`RunDir.read_trials`), and the Pareto front is computed in one place.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .errors import InvalidInput
from .files import atomic_write_json, atomic_write_text, finite_or_none, read_json, read_yaml

PLAN = "plan.yaml"
SUMMARY = "summary.json"
TRIALS = "trials.csv"
PARETO = "pareto.csv"
STUDY = "study.db"
SENSITIVITY = "sensitivity.json"
MEASURED = "measured.json"
ARTIFACT = "model"  # the winner's compressed model (toggle search without --no-apply)
SPACE = "space.json"
CALIBRATION = "calibration.json"
HELDOUT = "heldout.json"
STATS = "calibration_stats.safetensors"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
POINTS = "operating_points"
MARKER = ".toggle-run"  # written when a search first uses the directory: a run directory, not someone's folder
# What one search's end result is made of: a rerun into the same directory removes them before it
# starts, so a run stopped half way never shows another run's winner, audit or model beside its own
# study's trials (caches keyed by their inputs -- study.db, measured.json, sensitivity.json,
# calibration statistics -- stay).
RESULTS = (PLAN, SUMMARY, TRIALS, PARETO, CALIBRATION, HELDOUT, ARTIFACT, POINTS, REPORT_MD, REPORT_HTML)

FIXED_COLUMNS = ("number", "state", "source", "value", "bytes", "flops_per_token", "feasible", "min_margin")
TIMING_COLUMNS = ("reason", "eval_seconds", "sampler_seconds")
# After TIMING_COLUMNS: how many prompts an early-stopped trial was scored on (empty: all of them).
# trials.csv files written before it existed have no such column.
PARTIAL_COLUMN = "prompts_evaluated"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
log = logging.getLogger(__name__)


# --- trial rows ----------------------------------------------------------------------------------

def trial_rows(study, params: list[str] | None = None) -> list[dict]:
    """One dict per finished trial (complete or pruned), in trial order. `params`: the search
    space's parameter names (None: a row without parameters, e.g. for another study's series)."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        rob = t.user_attrs.get("robustness") or {}
        margins = [v if v is not None else -math.inf for v in rob.values()]
        # a trial stopped early holds upper bounds of its margins: not known to satisfy anything
        # (under --objective margin it stops on a margin below the best so far, which may be positive)
        feasible = (t.state == TrialState.COMPLETE and bool(rob) and not t.user_attrs.get("partial")
                    and all(c <= 0 for c in (t.constraints or {}).values()))
        rows.append({
            "number": t.number,
            "state": t.state.name.lower(),
            "source": t.user_attrs.get("source", ""),
            "strategy": (t.user_attrs.get("sampler_info") or {}).get("strategy"),  # how the sampler chose it
            "value": t.value,
            "bytes": t.user_attrs.get("bytes"),
            "flops_per_token": t.user_attrs.get("flops_per_token"),
            "feasible": feasible,
            "min_margin": min(margins) if margins else None,
            "robustness": rob,
            "reason": t.user_attrs.get("reason"),
            "eval_seconds": t.user_attrs.get("eval_seconds", 0.0),
            "sampler_seconds": t.user_attrs.get("sampler_seconds", 0.0),
            "partial": bool(t.user_attrs.get("partial")),
            "prompts_evaluated": t.user_attrs.get("prompts_evaluated"),
            # True / False: the trial would have led and was checked on the confirmation prompts
            "confirmed": (t.user_attrs.get("confirmation") or {}).get("passed"),
            "params": {p: t.params.get(p) for p in params or ()},
        })
    return rows


def best_row(rows: list[dict], objective: str, budget_bytes: float | None = None) -> dict | None:
    """size / flops: the cheapest trial that satisfies every property; margin: the trial within the
    budget with the largest minimum margin, fully evaluated (the earliest among equals)."""
    if objective == "margin":
        scored = [r for r in rows if r["robustness"] and not r.get("partial") and r["min_margin"] is not None
                  and math.isfinite(r["min_margin"]) and (budget_bytes is None or r["bytes"] <= budget_bytes)]
        return max(scored, key=lambda r: (r["min_margin"], -r["number"])) if scored else None
    key = "bytes" if objective == "size" else "flops_per_token"
    feasible = [r for r in rows if r["feasible"]]
    return min(feasible, key=lambda r: (r[key], r["number"])) if feasible else None


def closest_row(rows: list[dict], budget_bytes: float) -> dict | None:
    """The evaluated plan within the budget that came closest to satisfying every property."""
    fits = [r for r in rows if r["robustness"] and r["bytes"] is not None and r["bytes"] <= budget_bytes]
    # a fully scored plan's margin before an early-stopped one's, whose margin is only an upper bound
    return max(fits, key=lambda r: (not r.get("partial"), r["min_margin"], -r["bytes"])) if fits else None


def pareto_front(rows: list[dict]) -> list[dict]:
    """Fully evaluated plans not dominated in (smaller bytes, larger minimum margin), by size (an
    early-stopped trial's margin is an upper bound, not a point of the front)."""
    evaluated = sorted((r for r in rows if r["robustness"] and r["min_margin"] is not None and not r.get("partial")),
                       key=lambda r: (r["bytes"], -r["min_margin"]))
    front, best = [], -math.inf
    for r in evaluated:
        if r["min_margin"] > best:
            front.append(r)
            best = r["min_margin"]
    return front


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("-inf" if v < 0 else "inf")
    return str(v)


def _param(text: str):
    """A trial parameter: a number, or a name (a quantiser), or None (empty)."""
    try:
        return _number(text)
    except ValueError:
        return text


def _number(text: str):
    if text == "":
        return None
    if text in ("inf", "-inf"):
        return float(text)
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


# --- the directory -------------------------------------------------------------------------------

class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def mkdir(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def check_claimable(self) -> None:
        """Raise InvalidInput unless a search may write here: a new or empty directory, or a run
        directory (its marker, its study.db or profiling caches, or the summary.json of a search)."""
        if self.path.exists() and not self.path.is_dir():
            raise InvalidInput(f"--out {self.path}: exists and is a file; a run directory is a folder")
        if not self.path.is_dir() or not any(self.path.iterdir()) or self._is_run():
            return
        raise InvalidInput(f"--out {self.path}: the directory exists and is not a toggle run directory (no {MARKER}); "
                           f"a search writes plan.yaml, summary.json and model/ there, replacing what they name: "
                           f"choose a new or empty directory")

    def claim(self) -> "RunDir":
        """Make the directory a run directory for a new search (check_claimable first) and remove a
        previous run's end results (RESULTS): they are rewritten from the study at the end."""
        self.check_claimable()
        self.mkdir()
        if not (self.path / MARKER).is_file():
            atomic_write_text(self.path / MARKER, "a toggle search run directory (toggle search --out)\n")
        self.clear(*RESULTS)
        for png in self.path.glob("*.png"):
            png.unlink()
        return self

    def _is_run(self) -> bool:
        # a profiling cache copied in to seed a run (benchmarks/bench_search.py does) also marks one
        if any((self.path / name).is_file() for name in (MARKER, STUDY, MEASURED, SENSITIVITY)):
            return True
        try:
            summary = read_json(self.path / SUMMARY)
        except InvalidInput:
            return False
        return isinstance(summary, dict) and {"budget_bytes", "trials", "sampler"} <= set(summary)

    @property
    def study_url(self) -> str:
        return f"sqlite:///{(self.path / STUDY).resolve()}"

    # --- writers ---------------------------------------------------------------------------
    def write_results(self, rows: list[dict], plan, properties: list[str], params: list[str]) -> None:
        """plan.yaml (when there is a plan), trials.csv and pareto.csv, all from the study's rows."""
        self.mkdir()
        if plan is not None:
            plan.save(self.path / PLAN)
        else:  # never an earlier best plan beside these trials
            self.clear(PLAN)
        self._write_trials(rows, properties, params)
        self._write_pareto(rows, properties)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / SUMMARY, summary)

    def write_json(self, name: str, obj) -> Path:
        atomic_write_json(self.path / name, obj)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def write_point(self, name: str, plan, *, stats_from: Path | None = None) -> Path:
        """operating_points/NAME.yaml, with its own link (or copy) of the calibration statistics
        when `stats_from` exists: a plan may only name a statistics file beside itself (a plan from
        someone else must not read outside its directory, toggle.api.plan_stats)."""
        folder = self.path / POINTS
        if stats_from is not None and stats_from.is_file():
            beside = folder / f"{name}.{STATS}"
            _link_or_copy(stats_from, beside)
            plan.meta["calibration_stats"] = beside.name
        return plan.save(folder / f"{name}.yaml")

    def store(self, name: str) -> "JsonStore":
        """A JSON file of the run that a stage keeps its own state in (sensitivity.json)."""
        return JsonStore(self.path / name)

    def clear(self, *names: str) -> None:
        """Remove files a previous run wrote that this one has not (yet) rewritten."""
        for name in names:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _write_trials(self, rows: list[dict], properties: list[str], params: list[str]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(list(FIXED_COLUMNS) + [f"robustness:{p}" for p in properties] + list(TIMING_COLUMNS)
                   + [PARTIAL_COLUMN] + params)
        for r in rows:
            w.writerow([_cell(r[k]) for k in FIXED_COLUMNS] + [_cell(r["robustness"].get(p)) for p in properties]
                       + [r["reason"] or "", _cell(r["eval_seconds"]), _cell(r["sampler_seconds"])]
                       + [_cell(r.get("prompts_evaluated") if r.get("partial") else None)]
                       + [_cell(r["params"][p]) for p in params])
        atomic_write_text(self.path / TRIALS, buf.getvalue())

    def _write_pareto(self, rows: list[dict], properties: list[str]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["number", "bytes", "flops_per_token", "min_margin", "feasible"] + [f"robustness:{p}" for p in properties])
        for r in pareto_front(rows):
            w.writerow([r["number"], _cell(r["bytes"]), _cell(r["flops_per_token"]), _cell(r["min_margin"]), r["feasible"]]
                       + [_cell(r["robustness"].get(p)) for p in properties])
        atomic_write_text(self.path / PARETO, buf.getvalue())

    # --- readers ---------------------------------------------------------------------------
    def read_json(self, name: str):
        """A JSON file of the run, or None when absent; a damaged one is a clear error."""
        return read_json(self.path / name)

    def read_summary(self) -> dict:
        if not self.path.is_dir():
            raise InvalidInput(f"{self.path}: no such run directory; expected the --out directory of `toggle search`")
        summary = self.read_json(SUMMARY)
        if summary is None:
            raise InvalidInput(f"{self.path}: not a toggle run directory (no summary.json); expected the --out "
                               f"directory of `toggle search`")
        if not isinstance(summary, dict) or "base_size_bytes" not in summary:
            raise InvalidInput(f"{self.path / SUMMARY}: base_size_bytes: missing; not a toggle search summary")
        return summary

    def read_plan(self) -> dict | None:
        """plan.yaml as written (a mapping), or None when there is none."""
        return read_yaml(self.path / PLAN, what="plan file") if (self.path / PLAN).is_file() else None

    def read_trials(self) -> tuple[list[dict], list[str]]:
        """trials.csv as trial rows (numbers parsed, empty cells None) and the property names."""
        path = self.path / TRIALS
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
            first_param = end + len(TIMING_COLUMNS)
            has_partial = len(head) > first_param and head[first_param] == PARTIAL_COLUMN
            first_param += has_partial
            params = head[first_param:]
            rows = []
            for lineno, cells in enumerate(reader, 2):
                if len(cells) != len(head):
                    raise InvalidInput(f"{path}: line {lineno}: {len(cells)} cells, the header has {len(head)}")
                try:
                    rows.append({
                        "number": int(cells[0]), "state": cells[1], "source": cells[2], "value": _number(cells[3]),
                        "strategy": None,  # the study keeps it (sampler_info); trials.csv does not
                        "bytes": _number(cells[4]), "flops_per_token": _number(cells[5]),
                        "feasible": cells[6] == "True", "min_margin": _number(cells[7]),
                        "robustness": {p: _number(v) for p, v in zip(properties, cells[len(FIXED_COLUMNS):end])},
                        "reason": cells[end] or None,
                        "eval_seconds": _number(cells[end + 1]), "sampler_seconds": _number(cells[end + 2]),
                        "partial": has_partial and cells[end + 3] != "",
                        "prompts_evaluated": _number(cells[end + 3]) if has_partial else None,
                        "params": {p: _param(v) for p, v in zip(params, cells[first_param:])},
                    })
                except ValueError as e:
                    raise InvalidInput(f"{path}: line {lineno}: {e}") from None
        return rows, properties

    def other_studies(self, exclude: str | None) -> list[tuple[str, list[dict]]]:
        """(label, trial rows) of every other study in study.db (e.g. a random-search baseline run
        with the same --out). Read only; nothing when there is no study.db."""
        db = self.path / STUDY
        if not db.is_file():
            return []
        try:
            storage = optuna.storages.RDBStorage(self.study_url, skip_table_creation=True)
            names = optuna.get_all_study_names(storage=storage)
        except Exception as e:  # a locked or foreign database: the report goes on without the others
            log.warning("%s: cannot read the other studies: %s", db, str(e).splitlines()[0] if str(e) else e)
            return []
        out = []
        for name in names:
            if name == exclude:
                continue
            study = optuna.load_study(study_name=name, storage=storage)
            rows = trial_rows(study)
            if rows:
                sampler = (study.user_attrs.get("toggle") or {}).get("sampler", name)
                out.append((f"{sampler} (study {name})", rows))
        return out


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)  # free on one file system
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class JsonStore:
    """load() -> the file's content or None (absent or damaged: the owner recomputes it); save(obj)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self):
        try:
            return read_json(self.path)
        except InvalidInput:
            return None  # a damaged cache is recomputed

    def save(self, obj) -> None:
        atomic_write_json(self.path, obj)


def robustness_cells(values: dict) -> dict:
    """Robustness values as a run-directory file stores them (non-finite: null)."""
    return {k: finite_or_none(v) for k, v in values.items()}
