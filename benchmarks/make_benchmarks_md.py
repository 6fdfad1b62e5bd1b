"""Rebuild BENCHMARKS.md from the latest results in benchmarks/results/*.json.

    PYTHONPATH=$PWD python benchmarks/make_benchmarks_md.py [--notes benchmarks/notes.md]

Each section: the command, date, machine and load averages of the run that produced it, its
table, and its verdicts against the issue-8 targets. Hand-written notes (what was reduced and
why, caveats) come from --notes and are placed after the summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def provenance(d: dict) -> str:
    m = d["machine"]
    return (f"`{d['command']}`  \n{d['date']}; {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
            f"torch {m['torch']}, Python {m['python']}, device {m['device']}; load average (1/5/15 min) at start "
            f"{d['load_average']['start']}, at end {d['load_average']['end']}")


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def quality(d: dict) -> list[str]:
    rows = d["rows"]
    out = ["## 1. Quality per byte (bench_quality.py)", "", provenance(d), "",
           f"Held-out text: {d['eval_tokens']} scored tokens of the pydoc topics' evaluation part; base perplexity "
           f"{d['base_ppl']:.3f}. Sizes: exact artifact bytes / 16-bit dense model.", "",
           table(rows, [("plan", "plan", ""), ("size_fraction", "size / 16-bit", ".3f"), ("kl", "KL per token", ".4f"),
                        ("ppl", "perplexity", ".2f"), ("heldout_pass_rate", "held-out STL pass rate", ".3f"),
                        ("flops_reduction", "FLOP reduction", ".2f")]), ""]
    out += [f"- {v['text']}" for v in d.get("verdicts", [])]
    if d.get("reused_runs"):
        out += ["", "Baseline rows were measured by these earlier runs (same text, specs and prompts) and reused:", ""]
        out += [f"- `{r['command']}` ({r['date']}, load average {r['load_average']['start']} -> {r['load_average']['end']}"
                f"{'' if r.get('complete', True) else ', stopped before the end of its grid'})" for r in d["reused_runs"]]
    return out + [""]


def search(d: dict, title: str = "## 2. Search efficiency (bench_search.py)") -> list[str]:
    relax = any("relax" in r for r in d["summary"])
    columns = [("relax", "--relax", "g")] if relax else []
    columns += [("sampler", "sampler", ""), ("trials", "trial budget", "d"),
                ("trials_run", "trials run", ".0f"), ("seeds", "seeds", "d"),
                ("found", "seeds with a satisfying plan", "d"), ("median_best", "smallest satisfying", ""),
                ("median_best_fraction", "size / 16-bit", ".3f"), ("wall_s", "wall s", ".0f"),
                ("eval_s", "model evaluation s", ".0f"), ("sampler_s", "sampler s", ".1f"),
                ("profiling_s", "profiling s", ".0f")]
    if relax:
        columns += [("profiling_evaluations", "profiling evaluations", ".0f"), ("heldout", "held-out pass rate", ".2f"),
                    ("infeasible_cost", "early-stopped / full evaluation s", ".2f")]
    out = [title, "", provenance(d), "",
           f"Budget {d['budget']}; trial budgets {d['trials']}; seeds {d['seeds']}"
           f"{'; --relax ' + str(d['relax']) if relax else ''}. {d.get('note', '')}", "",
           table(d["summary"], columns), ""]
    return out


def evaluation(d: dict) -> list[str]:
    rows = d["rows"]
    if not d.get("complete", True):  # stopped after some repeats: the raw seconds it measured
        peak = max(d["peak_rss_bytes"].values())
        return ["## 3. Candidate evaluation cost (bench_evaluation.py, stopped early)", "", provenance(d), "",
                table(rows, [(k, k, "" if k == "repeat" else ".2f") for k in rows[0]]), "",
                f"Peak resident memory so far {peak / 2**20:.0f} MiB ({peak / d['fp32_bytes']:.2f}x the fp32 model).", ""]
    cols = [("statistic", "statistic", "")] + [(k, k, ".2f") for k in rows[0] if k != "statistic"]
    peaks = ", ".join(f"{k} {v / 2**20:.0f} MiB ({d['peak_over_fp32'][k]:.2f}x)" for k, v in d["peak_rss_bytes"].items())
    return ["## 3. Candidate evaluation cost (bench_evaluation.py)", "", provenance(d), "",
            f"{d['repeats']} interleaved repeats.", "", table(rows, cols), "",
            f"Peak resident memory (ru_maxrss, cumulative) vs the fp32 model ({d['fp32_bytes'] / 2**20:.0f} MiB): {peaks}.",
            "", f"Evaluation breakdown, median s: " + ", ".join(f"{k} {v:.2f}" for k, v in d["evaluation_breakdown_median_s"].items()),
            ""]


def paper(d: dict) -> list[str]:
    return ["## 4. The TOGGLE paper's claims (bench_paper.py)", "", provenance(d), "",
            table(d["rows"], [("source", "", ""), ("size_reduction_16", "size reduction vs 16-bit", ".3f"),
                              ("size_reduction_32", "vs fp32", ".3f"), ("flops_reduction", "FLOP reduction", ".2f"),
                              ("bitops_reduction", "bit-op reduction", ".2f"),
                              ("calibration_satisfied", "all properties (calibration)", ""),
                              ("heldout_pass_rate", "held-out pass rate", ".3f")]), ""] + [f"- {v}" for v in d["verdicts"]] + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--notes", default=str(Path(__file__).resolve().parent / "notes.md"))
    args = ap.parse_args(argv)
    parts = ["# Benchmarks", "",
             "Generated by `benchmarks/make_benchmarks_md.py` from `benchmarks/results/*.json` (the raw rows, CSV "
             "beside them). Every number below was produced by the command shown with it. The machine is shared with "
             "other work: absolute seconds are noisy, ratios measured side by side in one run are what to compare.", ""]
    notes = Path(args.notes)
    if notes.exists():
        parts += [notes.read_text().strip(), ""]
    grid = lambda d: search(d, "## 2b. Search against its baselines (issue 13 grid, bench_search.py --relax)")  # noqa: E731
    for name, fn in (("bench_quality", quality), ("bench_search", search), ("bench_search_grid", grid),
                     ("bench_evaluation", evaluation), ("bench_paper", paper)):
        d = load(name)
        parts += fn(d) if d else [f"## {name}.py", "", "No finished run in the latest session: see the notes above.", ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
