"""Quality per byte: toggle's searched plans against uniform compression of the same model.

    PYTHONPATH=$PWD python benchmarks/bench_quality.py                       # baselines + 2 searches
    PYTHONPATH=$PWD python benchmarks/bench_quality.py --budgets none --runs runs/a runs/b
    PYTHONPATH=$PWD python benchmarks/bench_quality.py --model DIR --device cuda --budgets 4GB,3GB

Every plan is swapped into the base model (PlanApplier: the weights `toggle apply` would write)
and measured on
  * KL(base || plan) per token and perplexity on held-out text: the evaluation part of Python's
    pydoc topics (textdata.py; never the prompt suite the search used);
  * the STL pass rate on the held-out prompts: share of the suite's `heldout` prompts on which
    every property of the specs holds (teacher-mode audit, toggle.audit).
Plans: the base model; uniform round-to-nearest at 8/6/5/4/3 bits, group 128 (every compressible
module, the tied embedding / LM head included; with --embedding-8bit, <= 5 bits also with the
embedding kept at 8; --group-sizes 32 for the search profile's quantiser);
uniform 4-bit AWQ (the outlier-aware quantiser, statistics from the calibration part of the
pydoc text); uniform magnitude pruning (16-bit weights + bitmask); and toggle's best plan from a
search at each --budgets value (default profile) and from each --runs directory.
Sizes are the exact artifact bytes (toggle.cost) as a fraction of the 16-bit dense model.

Target (issue 8): toggle's winner at least 15% smaller than the smallest uniform plan with an
equal or higher held-out pass rate. Not a test; results in benchmarks/results/bench_quality.*
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Run, table  # noqa: E402
from quality import TextScorer, heldout_pass_rate  # noqa: E402
from textdata import text_windows  # noqa: E402

from toggle.compress import collect_stats
from toggle.compress.apply import PlanApplier  # noqa: E402
from toggle.cost import CostModel  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.specs import load_specs  # noqa: E402

RTN_BITS = (8, 6, 5, 4, 3)
SPARSITIES = (0.3, 0.5, 0.7)


def baseline_plans(model_id: str, refs, rtn_bits, sparsities, awq: bool, embedding_8bit: bool = False,
                   group_sizes=(128,)) -> list[tuple[str, str, Plan]]:
    """(name, family, plan) of the uniform baselines."""
    names = [r.name for r in refs]
    embed = [r.name for r in refs if r.block is None]
    plans = []
    for g in group_sizes:
        rtn = Methods(quantizer="rtn", group_size=g, symmetric="auto")
        for b in rtn_bits:
            plans.append((f"rtn {b}-bit g{g}", "uniform rtn", Plan.uniform(model_id, names, ModuleSetting(bits=b), rtn)))
            if embedding_8bit and b <= 5 and embed:
                p = Plan.uniform(model_id, names, ModuleSetting(bits=b), rtn)
                for n in embed:
                    p = p.with_setting(n, ModuleSetting(bits=8))
                plans.append((f"rtn {b}-bit g{g}, embedding 8-bit", "uniform rtn", p))
    if awq:
        methods = Methods(quantizer="awq", group_size=128, symmetric="auto")
        plans.append(("awq 4-bit g128", "uniform awq", Plan.uniform(model_id, names, ModuleSetting(bits=4), methods)))
    prune = Methods(pruner="magnitude")
    for s in sparsities:
        plans.append((f"magnitude {int(100 * s)}% sparse", "uniform pruning",
                      Plan.uniform(model_id, names, ModuleSetting(sparsity=s), prune)))
    return plans


def search_runs(model: str, budgets: list[str], trials: int, out: Path, device: str, seed: int) -> list[Path]:
    """Run the default search at each budget (sensitivity profiling shared between them)."""
    from toggle.api import search as run_search

    dirs = []
    profiled = None
    for budget in budgets:
        run_dir = out / f"search-{budget}"
        if profiled is not None and not (run_dir / "sensitivity.json").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(profiled, run_dir / "sensitivity.json")  # the same profile: keyed by model, trace, specs
        t0 = time.perf_counter()
        result = run_search(model, budget, trials=trials, out=run_dir, device=device, seed=seed, progress=False,
                            write_model=False)
        s = result.summary
        print(f"search {budget}: {'satisfied' if s['satisfied'] else 'NOT satisfied'}, "
              f"{s.get('compressed_size_bytes')} bytes, {s['trials']} trials, {time.perf_counter() - t0:.0f} s", flush=True)
        if (run_dir / "sensitivity.json").exists():
            profiled = run_dir / "sensitivity.json"
        dirs.append(run_dir)
    return dirs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budgets", default="160MB,120MB", help="comma-separated search budgets, or 'none'")
    ap.add_argument("--trials", type=int, default=12, help="trials per search (default 12; the profile's 60 is the full run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", nargs="*", default=[], help="existing search run directories to include")
    ap.add_argument("--out", default="benchmarks/results/quality-runs", help="where new search runs go")
    ap.add_argument("--rtn-bits", default=",".join(map(str, RTN_BITS)))
    ap.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    ap.add_argument("--no-awq", action="store_true")
    ap.add_argument("--embedding-8bit", action="store_true", help="also rtn at <= 5 bits with the embedding at 8 bits")
    ap.add_argument("--group-sizes", default="128", help="rtn group sizes (the issue's grid: 128; the search profile: 32)")
    ap.add_argument("--eval-windows", type=int, default=12, help="128-token windows of evaluation text (default 12)")
    ap.add_argument("--calib-windows", type=int, default=32, help="128-token windows of calibration text for AWQ")
    ap.add_argument("--reuse", nargs="*", default=[], help="previous results JSON files of this script: take their "
                    "non-toggle rows (same text and specs) instead of measuring the baselines again")
    ap.add_argument("--only", help="measure only the baseline plans whose label contains this text")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--name", default="bench_quality")
    args = ap.parse_args(argv)
    run = Run(args.name, args.device, args.threads)

    budgets = [] if args.budgets in ("", "none") else args.budgets.split(",")
    run_dirs = [Path(d) for d in args.runs]
    if budgets:
        run_dirs += search_runs(args.model, budgets, args.trials, Path(args.out), args.device, args.seed)

    loaded = load_model(args.model, device=args.device)
    refs = compressible_modules(loaded.model)
    specs = load_specs()
    suite = load_prompts()
    cost_model = CostModel(loaded.model, refs)
    calib, evaluation = text_windows(loaded.tokenizer, evaluation=args.eval_windows, calibration=args.calib_windows)
    t0 = time.perf_counter()
    scorer = TextScorer(loaded.model, evaluation)
    print(f"held-out text: {scorer.tokens} scored tokens (pydoc topics, evaluation part); base perplexity "
          f"{scorer.base_ppl:.3f} ({time.perf_counter() - t0:.1f} s for the base pass)", flush=True)

    reused, reused_runs = [], []
    for source in args.reuse:
        import json

        previous = json.loads(Path(source).read_text())
        if previous["eval_tokens"] != scorer.tokens:
            raise SystemExit(f"{source}: measured on {previous['eval_tokens']} tokens, this run on {scorer.tokens}; "
                             f"pass the same --eval-windows")
        rows_then = [dict(r, reused_from=f"{Path(source).name} ({previous['date']})") for r in previous["rows"]
                     if r["family"] != "toggle"]
        reused += rows_then
        reused_runs.append({"file": Path(source).name, "command": previous["command"], "date": previous["date"],
                            "load_average": previous["load_average"], "complete": previous.get("complete", True)})
        print(f"reusing {len(rows_then)} baseline rows from {source} ({previous['date']})")
    plans = [] if reused else baseline_plans(loaded.model_id, refs, [int(b) for b in args.rtn_bits.split(",") if b],
                            [float(s) for s in args.sparsities.split(",") if s], not args.no_awq, args.embedding_8bit,
                                              [int(g) for g in args.group_sizes.split(",")])
    from toggle.api import plan_stats
    from toggle.files import read_json

    for d in run_dirs:
        summary = read_json(d / "summary.json") or {}
        if not (d / "plan.yaml").exists():
            print(f"{d}: no plan.yaml (no satisfying plan); left out")
            continue
        plan = Plan.load(d / "plan.yaml")
        plan.meta["_stats"] = plan_stats(plan, loaded, d / "plan.yaml")
        label = f"toggle {Path(d).name} ({summary.get('trials', '?')} trials)"
        plans.append((label, "toggle", plan))
    if args.only:
        plans = [p for p in plans if args.only in p[0]]
    elif not reused:
        plans.append(("base (16-bit dense)", "base", None))  # last: its pass rate is the least informative
    text_stats = None
    appliers: dict[int, PlanApplier] = {}
    rows = list(reused)
    for label, family, plan in plans:
        t0 = time.perf_counter()
        stats = None
        if plan is not None:
            stats = plan.meta.pop("_stats", None)
            if plan.methods.quantizer == "awq" and stats is None:
                if text_stats is None:
                    text_stats = collect_stats(loaded.model, calib, refs=refs, fingerprint=loaded.fingerprint)
                stats = text_stats
        applier = appliers.get(id(stats))
        if applier is None:
            for a in appliers.values():
                a.restore()
            applier = appliers[id(stats)] = PlanApplier(loaded.model, refs, stats, cache_limit_bytes=1 << 30)
        if plan is None:
            applier.restore()
            cost = cost_model.of(Plan(loaded.model_id))
        else:
            applier.apply(plan)
            cost = cost_model.of(plan)
        t_apply = time.perf_counter() - t0
        text = scorer.score()
        held = heldout_pass_rate(loaded, specs, suite, applier, plan)  # restores the base weights after
        row = {"plan": label, "family": family, "bytes": cost.bytes, "size_fraction": cost.bytes / cost.base16_bytes,
               "flops_reduction": cost.flops_reduction, "kl": text["kl"], "ppl": text["ppl"],
               "heldout_pass_rate": held["pass_rate"], "heldout_satisfied": held["satisfied"],
               "heldout_share": held["share"], "seconds": round(time.perf_counter() - t0, 1),
               "apply_seconds": round(t_apply, 1)}
        rows.append(row)
        print(f"{label:42s} size {100 * row['size_fraction']:5.1f}%  KL {row['kl']:.4f}  ppl {row['ppl']:8.3f}  "
              f"held-out pass {100 * row['heldout_pass_rate']:5.1f}%  ({row['seconds']} s)", flush=True)
        run.finish(rows, {"base_ppl": scorer.base_ppl, "eval_tokens": scorer.tokens, "runs": [str(d) for d in run_dirs],
                          "verdicts": compare(rows), "reused_runs": reused_runs}, final=False)

    verdicts = compare(rows)
    print()
    print(table(rows, [("plan", "plan", ""), ("size_fraction", "size / 16-bit", ".3f"), ("kl", "KL per token", ".4f"),
                       ("ppl", "perplexity", ".3f"), ("heldout_pass_rate", "held-out pass rate", ".3f")]))
    for v in verdicts:
        print(v["text"])
    run.finish(rows, {"base_ppl": scorer.base_ppl, "eval_tokens": scorer.tokens, "runs": [str(d) for d in run_dirs],
                      "verdicts": verdicts, "reused_runs": reused_runs})
    return 0


def compare(rows: list[dict]) -> list[dict]:
    """For each toggle plan: the smallest uniform plan with an equal or higher held-out pass rate."""
    out = []
    uniform = [r for r in rows if r["family"].startswith("uniform")]
    for t in (r for r in rows if r["family"] == "toggle"):
        rivals = [u for u in uniform if u["heldout_pass_rate"] >= t["heldout_pass_rate"]]
        if not rivals:
            out.append({"plan": t["plan"], "rival": None, "smaller_by": None, "met": None,
                        "text": f"{t['plan']}: no uniform plan reaches its held-out pass rate "
                                f"{t['heldout_pass_rate']:.3f}"})
            continue
        best = min(rivals, key=lambda u: u["bytes"])
        smaller = 1 - t["bytes"] / best["bytes"]
        out.append({"plan": t["plan"], "rival": best["plan"], "smaller_by": smaller, "met": smaller >= 0.15,
                    "text": f"{t['plan']}: {100 * smaller:+.1f}% smaller than {best['plan']} (pass rate "
                            f"{t['heldout_pass_rate']:.3f} vs {best['heldout_pass_rate']:.3f}); target >= 15%: "
                            f"{'met' if smaller >= 0.15 else 'MISSED'}"})
    return out


if __name__ == "__main__":
    sys.exit(main())
