"""Stage 10b, report: report.md and a self-contained report.html for a search run directory.

    from toggle.report import write_report
    report = write_report("runs/smollm2-100MB", compare=["runs/smollm2-100MB-random"])
    report.markdown, report.html, report.plots, report.headline

Rebuilt from the run directory's files alone (`toggle report RUN_DIR`): no model is loaded.
Plots (PNG, also saved in the run directory): the Pareto front (size vs minimum robustness
margin), the chosen plan's bits / sparsity / rank per layer, robustness per property on
calibration and held-out prompts, convergence of the search and of any baselines (other
studies in the same study.db, or other run directories given with `compare`), and the
headline size and FLOP reduction against the 16-bit dense model. Operating points (plans a
device can switch between) are written to operating_points/.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..confidence import describe as describe_confidence
from ..errors import InvalidInput
from ..files import robustness_from_json
from ..rundir import REPORT_HTML, REPORT_MD, RunDir
from ..units import format_bytes, format_reduction
from . import plots
from .data import RunData, load_run
from .points import OperatingPoint, operating_points
from .render import Heading, Image, Paragraph, Table, html_page, markdown

__all__ = ["Report", "load_run", "write_report"]


@dataclass
class Report:
    run_dir: Path
    markdown: Path
    html: Path
    plots: dict[str, Path]
    headline: dict
    operating_points: list[OperatingPoint] = field(default_factory=list)


def write_report(run_dir: str | Path, compare=()) -> Report:
    run = load_run(run_dir)
    others = [load_run(c) for c in compare]
    for other in others:
        _check_same_model(run, other)
    d = run.run_dir
    series = [run.series()] + run.siblings + [s for o in others for s in [o.series()] + o.siblings]
    made = {
        "headline": plots.headline(run, d / "headline.png"),
        "pareto": plots.pareto(run, d / "pareto.png"),
        "plan": plots.plan_heatmap(run, d / "plan_heatmap.png"),
        "robustness": plots.robustness(run, d / "robustness.png"),
        "convergence": plots.convergence(series, run.objective_key, run.summary["budget_bytes"],
                                         run.summary["base_size_bytes"], d / "convergence.png"),
    }
    made = {k: v for k, v in made.items() if v is not None}
    points = operating_points(run, others)
    blocks = _blocks(run, others, made, points)
    title = f"toggle report: {run.summary.get('model')} within {format_bytes(run.summary['budget_bytes'])}"
    out = RunDir(d)
    md_path = out.write_text(REPORT_MD, markdown(blocks))
    html_path = out.write_text(REPORT_HTML, html_page(title, blocks))
    return Report(d, md_path, html_path, made, headline(run), points)


def headline(run: RunData) -> dict:
    s = run.summary
    held = s.get("heldout") or {}
    return {"satisfied": bool(s.get("satisfied")), "size_reduction": s.get("size_reduction"),
            "flops_reduction": s.get("flops_reduction"), "compressed_size_bytes": s.get("compressed_size_bytes"),
            "base_size_bytes": s.get("base_size_bytes"), "calibration_min_margin": s.get("min_margin"),
            "heldout_pass_rate": held.get("pass_rate"), "heldout_satisfied": held.get("satisfied")}


def _check_same_model(run: RunData, other: RunData) -> None:
    """A compared run must be a search of the same model: its plans name that model's modules, and
    its sizes and margins are on the same scale. (Runs written before summary.json kept the
    identity are told apart by the model's name.)"""
    mine, theirs = (run.summary.get("identity") or {}).get("model"), (other.summary.get("identity") or {}).get("model")
    same = mine == theirs if mine and theirs else run.summary.get("model") == other.summary.get("model")
    if not same:
        raise InvalidInput(f"--compare: {other.run_dir} is a search of other model weights ({other.summary.get('model')}) "
                           f"than {run.run_dir} ({run.summary.get('model')}); compare runs of the same model")


# --- content ---------------------------------------------------------------------------------

def _blocks(run: RunData, others: list[RunData], made: dict, points: list[OperatingPoint]) -> list:
    s = run.summary
    held = s.get("heldout") or {}
    b: list = [Heading(f"toggle report: {s.get('model')} within {format_bytes(s['budget_bytes'])}", 1)]
    b.append(Paragraph(_verdict(s)))
    if s.get("interrupted"):
        b.append(Paragraph(f"Note: the search was interrupted (Ctrl-C) after {s.get('trials')} trials"
                           f"{'' if held else ', before the held-out audit'}: this is what those trials hold; "
                           f"rerun the same command to resume it (finished trials are kept)."))
    if s.get("base_failures"):
        b.append(Paragraph(f"Note: {s['base_failures']['note']}."))
    if "pass_rate" in held:
        word = "PASS" if held["satisfied"] else "VIOLATED"
        b.append(Paragraph(f"Held-out audit ({held.get('mode', 'teacher')} mode, {held['prompts']} prompts the search "
                           f"never saw): **{word}**, {100 * held['pass_rate']:.1f}% of the prompts satisfy every "
                           f"property."))
        if held.get("confidence"):
            b.append(Paragraph(f"All properties together: {describe_confidence(held['confidence'])}."))
        for name, why in (held.get("unchecked") or {}).items():
            b.append(Paragraph(f"Not checked on the held-out prompts: {name} ({why})."))
    elif held.get("skipped"):
        b.append(Paragraph(f"Held-out audit: skipped ({held['skipped']})."))

    b.append(Heading("Headline"))
    rows = [["size (bytes of the artifact)", _bytes(s["base_size_bytes"]), _bytes(s.get("compressed_size_bytes")),
             format_reduction(s["size_reduction"]) if s.get("size_reduction") is not None else "-"],
            ["FLOPs per token", f"{s['base_flops_per_token']:.4g}", _g(s.get("compressed_flops_per_token")),
             f"{s['flops_reduction']:.2f}x fewer" if s.get("flops_reduction") else "-"]]
    b.append(Table(["", "16-bit dense", f"plan (trial {s.get('best_trial')})", "reduction"], rows))
    b.append(Paragraph(f"Budget {_bytes(s['budget_bytes'])}; {s.get('trials')} trials ({s.get('feasible_trials')} "
                       f"satisfied every property) with the {s.get('sampler')} sampler, profile {s.get('profile')}, "
                       f"seed {s.get('seed')}; {s.get('wall_seconds', 0):.0f} s wall time "
                       f"({s.get('profiling_seconds', 0):.0f} s sensitivity profiling, "
                       f"{s.get('evaluation_seconds', 0):.0f} s evaluating plans, {s.get('sampler_seconds', 0):.0f} s "
                       f"in the sampler)."))
    if "headline" in made:
        b.append(Image(made["headline"], "size and FLOPs per token against the 16-bit dense model"))

    b.append(Heading("Robustness per property"))
    b.append(Table(*_robustness_table(run)))
    specs = s.get("specs") or {}
    if specs:
        consts = ", ".join(f"{k} = {v:g}" for k, v in (specs.get("consts") or {}).items())
        relax = f"; thresholds relaxed by {specs['relax']:.0%}" if specs.get("relax") else ""
        b.append(Paragraph(f"Specs: {', '.join(Path(f).name for f in specs.get('files', []))} ({consts}{relax})."))
    if "robustness" in made:
        b.append(Image(made["robustness"], "robustness of the chosen plan on every calibration and held-out prompt"))
    worst = _worst_prompts(run)
    if worst:
        b.append(Heading("Worst held-out prompts", 3))
        b.append(Table(["prompt", "margin", "base model", "compressed model"], worst))

    b.append(Heading("Search"))
    if "pareto" in made:
        b.append(Image(made["pareto"], "every evaluated plan: size against its minimum robustness margin"))
    if "convergence" in made:
        b.append(Image(made["convergence"], "best feasible plan found after each trial, per study"))
    comparison = _comparison(run, others)
    if len(comparison) > 1:
        b.append(Table(["run", "trials", "satisfied", "best size", "size reduction", "FLOP reduction"], comparison))
    if "plan" in made:
        b.append(Heading("Chosen plan"))
        b.append(Image(made["plan"], "bits, sparsity and rank ratio per block and module of the chosen plan"))
        methods = (run.plan or {}).get("methods") or {}
        b.append(Paragraph("Methods: " + ", ".join(f"{k} {v}" for k, v in methods.items()) + "."))

    if points:
        b.append(Heading("Operating points"))
        b.append(Paragraph("Plans a device can switch between (`toggle apply PLAN MODEL --out DIR`)."))
        b.append(Table(["point", "meaning", "trial", "size", "FLOPs per token", "min margin", "plan file"],
                       [[p.name, p.meaning, _g(p.trial), _bytes(p.bytes), _g(p.flops_per_token), _margin(p.min_margin),
                         str(p.path.relative_to(run.run_dir)) if p.path and p.path.is_relative_to(run.run_dir)
                         else (str(p.path) if p.path else p.note)] for p in points]))
    b.append(Heading("Files"))
    present = [f"{name}{f' ({what})' if what else ''}" for name, what in RUN_FILES if (run.run_dir / name).exists()]
    b.append(Paragraph(f"{', '.join(present) or 'none of the run files yet'}; rebuild this report with "
                       f"`toggle report {run.run_dir}`."))
    return b


# What a run directory can hold, in the order the report lists those it has.
RUN_FILES = (("plan.yaml", "best plan"), ("summary.json", ""), ("trials.csv", ""), ("pareto.csv", ""),
             ("heldout.json", "held-out audit"), ("calibration.json", ""), ("space.json", ""),
             ("measured.json", "measured-error profiling"), ("sensitivity.json", "sensitivity profiling"),
             ("study.db", ""), ("model", "the compressed model"))


def _verdict(s: dict) -> str:
    if s.get("satisfied"):
        confirmed = s.get("best_confirmed")
        where = "the calibration prompts and the confirmation prompts it was also scored on" if confirmed \
            else "the calibration prompts"
        return (f"**PASS**: trial {s['best_trial']} satisfies every property on {where} within the budget (minimum "
                f"margin{' over both' if confirmed else ''} {_margin(s.get('min_margin'))}).")
    if s.get("best_trial") is not None:
        return (f"**VIOLATED**: no plan satisfies every property within {_bytes(s['budget_bytes'])}; the closest, "
                f"trial {s['best_trial']}, misses by {_margin(s.get('min_margin'))}.")
    if s.get("stopped"):
        return f"**VIOLATED**: no plan within the budget was evaluated: {s['stopped']}."
    return "**VIOLATED**: no plan within the budget was evaluated."


def _robustness_table(run: RunData):
    s = run.summary
    cal = (run.calibration or {}).get("per_prompt") or {}
    # the calibration prompts' own minimum (summary.json's is also over the confirmation prompts
    # when the plan was confirmed); a run without calibration.json has only the summary's
    cal_min = (run.calibration or {}).get("robustness") or s.get("robustness") or {}
    held = (run.heldout or {}).get("properties") or {}
    rows = []
    for p in run.properties:
        values = [v for v in (cal.get(p) or {}).values() if v is not None]
        h = held.get(p) or {}
        rows.append([p, h.get("formula", ""), _margin(cal_min.get(p)),
                     _margin(_median(values)) if values else "-",
                     f"{sum(v >= 0 for v in values)}/{len(values)}" if values else "-",
                     _margin(h.get("min")), _margin(h.get("median")),
                     f"{h['holds']}/{h['prompts']}" if h.get("prompts") else "-", _bound(h.get("confidence"))])
    level = next((h["confidence"]["level"] for h in held.values() if h.get("confidence")), None)
    head = ["property", "formula", "calibration min", "calibration median", "calibration holds", "held-out min",
            "held-out median", "held-out holds",
            f"held-out violation rate (at most, {100 * level:g}% confidence)" if level else "held-out violation rate"]
    return head, rows


def _worst_prompts(run: RunData, n: int = 5) -> list[list[str]]:
    audit = run.heldout or {}
    by_id = {p["id"]: p for p in audit.get("prompts", [])}
    rows = []
    for pid in audit.get("worst", [])[:n]:
        p = by_id.get(pid)
        if p is None:
            continue
        worst = min(p["robustness"], key=lambda k: p["robustness"][k] if p["robustness"][k] is not None else -math.inf,
                    default="")
        rows.append([f"{pid}: {_short(p['prompt'], 140)}", f"{_margin(p.get('margin'))} ({worst})",
                     _short(p.get("base_text") or "", 300), _short(p.get("compressed_text") or "", 300)])
    return rows


def _comparison(run: RunData, others: list[RunData]) -> list[list[str]]:
    rows = []
    for r in [run] + others:
        s = r.summary
        rows.append([r.label, str(s.get("trials")), "yes" if s.get("satisfied") else "no",
                     _bytes(s.get("compressed_size_bytes")) if s.get("satisfied") else "-",
                     _pct(s.get("size_reduction")) if s.get("satisfied") else "-",
                     f"{s['flops_reduction']:.2f}x" if s.get("satisfied") and s.get("flops_reduction") else "-"])
    return rows


def _bound(c: dict | None) -> str:
    """'0/30, at most 9.5%': the violation rate and its one-sided Clopper-Pearson upper bound."""
    if not c or not c.get("prompts"):
        return "-"
    return f"{c['violations']}/{c['prompts']}, at most {100 * c['upper_bound']:.1f}%"


def _median(values):
    return statistics.median(values)


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _bytes(v) -> str:
    return "-" if v is None else f"{format_bytes(v)} ({int(v):,} B)"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _g(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _margin(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):  # summary.json stores a vacuous +inf as VACUOUS ("inf")
        v = robustness_from_json(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "-inf" if v < 0 else "n/a"
    return f"{v:+.4f}"
