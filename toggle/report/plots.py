"""The report's PNG plots (matplotlib, Agg backend: no display needed). Each function draws one
figure from RunData, saves it and returns its path (None when there is nothing to draw)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..rundir import pareto_front  # noqa: E402
from ..units import format_bytes, format_reduction  # noqa: E402
from .data import RunData, Series  # noqa: E402

DPI = 110
GREEN, RED, GREY, BLUE = "#2e7d32", "#c62828", "#9e9e9e", "#1565c0"
_BLOCK = re.compile(r"\.(\d+)\.")


def _unit(largest: float) -> tuple[str, float]:
    """A decimal byte unit that keeps the axis numbers readable."""
    for name, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if largest >= scale:
            return name, scale
    return "B", 1.0


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def pareto(run: RunData, path: Path) -> Path | None:
    """Size vs the minimum robustness margin: every evaluated trial, the front, the budget."""
    s = run.summary
    evaluated = [t for t in run.trials if t["bytes"] is not None and t["min_margin"] is not None]
    if not evaluated:
        return None
    finite = [t for t in evaluated if math.isfinite(t["min_margin"])]
    floor = min((t["min_margin"] for t in finite), default=-1.0)
    floor = min(floor, -0.01) * 1.5  # where failed evaluations (NaN logits) are drawn
    unit, scale = _unit(max(t["bytes"] for t in evaluated))
    fig, ax = plt.subplots(figsize=(8, 5))
    groups = [("satisfies every property", GREEN, "o", [t for t in finite if t["feasible"]]),
              ("violates a property", RED, "x", [t for t in finite if not t["feasible"]]),
              ("could not be scored (NaN / inf)", GREY, "v", [t for t in evaluated if not math.isfinite(t["min_margin"])])]
    for label, colour, marker, rows in groups:
        if rows:
            y = [t["min_margin"] if math.isfinite(t["min_margin"]) else floor for t in rows]
            ax.scatter([t["bytes"] / scale for t in rows], y, c=colour, marker=marker, s=28, label=f"{label} ({len(rows)})",
                       alpha=0.8)
    front = pareto_front(finite)
    if front:
        ax.step([t["bytes"] / scale for t in front], [t["min_margin"] for t in front], where="post", color=BLUE, lw=1.2,
                label="Pareto front")
    pruned = [t for t in run.trials if t["min_margin"] is None and t["bytes"] is not None]
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(s["budget_bytes"] / scale, color="black", ls="--", lw=1, label=f"budget {format_bytes(s['budget_bytes'])}")
    best = run.trial(s.get("best_trial"))
    if best is not None and best["min_margin"] is not None and math.isfinite(best["min_margin"]):
        ax.scatter([best["bytes"] / scale], [best["min_margin"]], marker="*", s=260, c="gold", edgecolors="black",
                   zorder=5, label=f"chosen plan (trial {best['number']})")
    ax.set_yscale("symlog", linthresh=_linthresh(finite))
    ax.set_xlabel(f"size of the compressed artifact ({unit})")
    ax.set_ylabel("minimum robustness margin over properties\n(>= 0: every property holds; symlog)")
    title = f"{s.get('model')}: size vs robustness, {len(evaluated)} evaluated trials"
    if pruned:
        title += f" ({len(pruned)} over budget, not evaluated)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _linthresh(rows: list[dict]) -> float:
    values = sorted(abs(t["min_margin"]) for t in rows if t["min_margin"] != 0)
    return max(values[len(values) // 4], 1e-4) if values else 1e-2


def plan_heatmap(run: RunData, path: Path) -> Path | None:
    """Bits, sparsity and rank of the chosen plan per block (columns) and module (rows)."""
    if not run.plan:
        return None
    settings = run.plan.get("modules") or {}
    names = [m for g in (run.space or {}).get("groups", []) for m in g["modules"]] or list(settings)
    cells, other = {}, []
    for name in names:
        m = _BLOCK.search(name)
        if not m:
            other.append(name)
            continue
        row = name[m.end():]
        cells[(row, int(m.group(1)))] = settings.get(name, {})
    if not cells:
        return None
    rows = list(dict.fromkeys(r for r, _ in cells))
    blocks = sorted({b for _, b in cells})
    knobs = [("bits", 16, "bits (16 = untouched)", "viridis", (2, 16)),
             ("sparsity", 0.0, "sparsity (share of weights pruned)", "magma_r", (0, 1)),
             ("rank_ratio", 1.0, "rank ratio (1 = full rank)", "viridis", (0, 1))]
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.34 * len(blocks) + 2.5), 3 * (0.32 * len(rows) + 1.1)))
    for ax, (knob, default, title, cmap, (lo, hi)) in zip(axes, knobs):
        grid = np.full((len(rows), len(blocks)), np.nan)
        for (r, b), s in cells.items():
            grid[rows.index(r), blocks.index(b)] = s.get(knob, default)
        im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
        for i in range(len(rows)):
            for j in range(len(blocks)):
                v = grid[i, j]
                if not np.isnan(v):
                    text = f"{int(v)}" if knob == "bits" else f"{v:.2g}".lstrip("0") if v else "0"
                    r, g, b_, _ = im.cmap(im.norm(v))
                    ax.text(j, i, text, ha="center", va="center", fontsize=6,
                            color="white" if 0.299 * r + 0.587 * g + 0.114 * b_ < 0.5 else "black")
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    axes[-1].set_xlabel("transformer block")
    extra = "; ".join(f"{n}: {_describe(settings.get(n, {}))}" for n in other)
    fig.suptitle(f"chosen plan (trial {run.summary.get('best_trial')})" + (f"\n{extra}" if extra else ""), fontsize=10)
    return _save(fig, path)


def _describe(setting: dict) -> str:
    if not setting:
        return "untouched (16-bit)"
    return f"{setting.get('bits', 16)} bits, sparsity {setting.get('sparsity', 0):g}, rank {setting.get('rank_ratio', 1):g}"


def robustness(run: RunData, path: Path) -> Path | None:
    """Per property: the chosen plan's robustness on every calibration and held-out prompt."""
    props = run.properties
    if not props or run.plan is None:
        return None
    cal = (run.calibration or {}).get("per_prompt") or {}
    held = {p["id"]: p["robustness"] for p in (run.heldout or {}).get("prompts", [])}
    fig, axes = plt.subplots(1, len(props), figsize=(3.1 * len(props), 4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, p in zip(axes[0], props):
        columns = [("calibration", [v for v in (cal.get(p) or {}).values() if v is not None]
                    or [v for v in [run.summary.get("robustness", {}).get(p)] if v is not None]),
                   ("held-out", [r[p] for r in held.values() if r.get(p) is not None])]
        for x, (label, values) in enumerate(columns):
            if not values:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8, color=GREY)
                continue
            values = np.asarray(values, dtype=float)
            colours = [GREEN if v >= 0 else RED for v in values]
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, c=colours, s=14, alpha=0.75)
            ax.hlines(values.min(), x - 0.3, x + 0.3, color="black", lw=1.5)
            ax.hlines(np.median(values), x - 0.3, x + 0.3, color=BLUE, lw=1, ls=":")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks([0, 1], [f"calibration\n({len(columns[0][1])})", f"held-out\n({len(columns[1][1])})"], fontsize=8)
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(p, fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("robustness per prompt (>= 0 holds)\nblack: minimum, blue: median")
    fig.suptitle(f"chosen plan (trial {run.summary.get('best_trial')}): robustness per property and prompt", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def convergence(series: list[Series], key: str, budget: float, base16: float, path: Path) -> Path | None:
    """Best feasible size (or FLOPs) found after each trial, one line per study."""
    drawn = False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    unit, scale = _unit(max(budget, base16)) if key == "bytes" else ("MFLOPs per token", 1e6)
    for s in series:
        rows = sorted(s.trials, key=lambda t: t["number"])
        best, xs, ys = math.inf, [], []
        for i, t in enumerate(rows, 1):
            if t["feasible"] and t.get(key) is not None:
                best = min(best, t[key])
            if math.isfinite(best):
                xs.append(i)
                ys.append(best / scale)
        first = next((i for i, t in enumerate(rows, 1) if t["feasible"]), None)
        label = f"{s.label}: {len(rows)} trials" + ("" if first else ", none feasible")
        if xs:
            ax.step(xs, ys, where="post", lw=1.6, label=label)
            drawn = True
        else:
            ax.plot([], [], label=label)
    if key == "bytes":
        ax.axhline(budget / scale, color="black", ls="--", lw=1, label=f"budget {format_bytes(budget)}")
    ax.set_xlabel("trials finished")
    ax.set_ylabel(f"best feasible {'size' if key == 'bytes' else 'cost'} so far ({unit})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax.set_title(f"convergence (16-bit dense model: {format_bytes(base16)})" if key == "bytes" else "convergence",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no trial satisfied every property yet", transform=ax.transAxes, ha="center", color=RED)
    return _save(fig, path)


def headline(run: RunData, path: Path) -> Path | None:
    """Size and FLOPs per token of the chosen plan against the 16-bit dense model."""
    s = run.summary
    if s.get("compressed_size_bytes") is None:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    colour = GREEN if s.get("satisfied") else RED
    unit, scale = _unit(s["base_size_bytes"])
    bars = [("16-bit dense", s["base_size_bytes"], GREY), ("budget", s["budget_bytes"], "#cfd8dc"),
            ("compressed", s["compressed_size_bytes"], colour)]
    a.barh([x[0] for x in bars], [x[1] / scale for x in bars], color=[x[2] for x in bars])
    for i, (_, v, _) in enumerate(bars):
        a.text(v / scale, i, f" {format_bytes(v)}", va="center", fontsize=8)
    a.set_xlabel(unit)
    a.set_title(f"size: {format_reduction(s['size_reduction'])}", fontsize=10)
    flops = [("16-bit dense", s["base_flops_per_token"] / 1e6, GREY),
             ("compressed", (s.get("compressed_flops_per_token") or 0) / 1e6, colour)]
    b.barh([x[0] for x in flops], [x[1] for x in flops], color=[x[2] for x in flops])
    for i, (_, v, _) in enumerate(flops):
        b.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    b.set_xlabel("MFLOPs per token")
    b.set_title(f"FLOPs: {s.get('flops_reduction') or 0:.2f}x fewer", fontsize=10)
    for ax in (a, b):
        ax.margins(x=0.25)
    fig.tight_layout()
    return _save(fig, path)
