"""Search efficiency: BO against random search, greedy sensitivity allocation and uniform plans
at equal trial budgets, several seeds: smallest plan satisfying every property, and wall time
split into model evaluation, sampler and profiling.

    PYTHONPATH=$PWD python benchmarks/bench_search.py                     # reduced: 25 trials, seed 0
    PYTHONPATH=$PWD python benchmarks/bench_search.py --trials 25,50,100 --seeds 0,1,2   # the full grid
    PYTHONPATH=$PWD python benchmarks/bench_search.py --synthetic --blocks 30             # no model

Each (sampler, seed) runs ONCE, to the largest trial count; the result at a smaller count N is
that study's first N trials (the samplers do not depend on the total: BO's trust-region schedule
is replayed over the trials in order), so the grid costs max(trials), not their sum. Wall time at
N: profiling + first trial's start to the N-th trial's end (Optuna's timestamps); evaluation and
sampler seconds are summed over the first N trials. Sensitivity profiling (BO and greedy) is
computed once and copied to the other run directories (it depends on model, trace and specs only).
Timings are noisy on a shared CPU: compare the ratios of one run, not seconds across runs.
Results: benchmarks/results/bench_search.json / .csv. Not a test.
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Run, table  # noqa: E402

from toggle.search import load_profile, run_study  # noqa: E402
from toggle.units import format_bytes  # noqa: E402

SAMPLERS = ("bo", "allocator", "uniform", "random", "greedy")
# Profiling files one run computes and the others reuse (they depend on model, trace, profile and
# specs, not on --relax or the seed), and the samplers that read each.
PROFILED = {"sensitivity.json": ("bo", "greedy"), "measured.json": ("bo", "allocator")}


def early_exit_cost(run_dir: Path) -> float | None:
    """Median seconds of an early-stopped evaluation over the median of a complete one, same run."""
    from toggle.rundir import RunDir

    rows = [r for r in RunDir(run_dir).read_trials()[0] if r.get("eval_seconds")]
    stopped = [r["eval_seconds"] for r in rows if r.get("partial")]
    full = [r["eval_seconds"] for r in rows if not r.get("partial")]
    return statistics.median(stopped) / statistics.median(full) if stopped and full else None


def prefix_rows(run_dir: Path, summary: dict, counts: list[int]) -> list[dict]:
    """Best satisfying size and time spent after the first N finished trials, per N."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=summary["study"], storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = sorted((t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                    key=lambda t: t.number)
    rows = []
    for n in counts:
        first = trials[:n]
        feasible = [t.user_attrs["bytes"] for t in first if t.state == TrialState.COMPLETE and t.user_attrs.get("robustness")
                    and all(c <= 0 for c in t.constraints.values())]
        wall = (first[-1].datetime_complete - first[0].datetime_start).total_seconds() if first else 0.0
        rows.append({"trials_budget": n, "trials_run": len(first),
                     "evaluated": sum(t.user_attrs.get("eval_seconds", 0) > 0 for t in first),
                     "feasible": len(feasible), "best_bytes": min(feasible) if feasible else None,
                     "best_fraction": min(feasible) / summary["base_size_bytes"] if feasible else None,
                     "wall_s": round(wall + summary.get("profiling_seconds", 0.0), 1),
                     "eval_s": round(sum(t.user_attrs.get("eval_seconds", 0.0) for t in first), 1),
                     "sampler_s": round(sum(t.user_attrs.get("sampler_seconds", 0.0) for t in first), 2),
                     "profiling_s": summary.get("profiling_seconds", 0.0)})
    return rows


def _finished_summary(run_dir: Path, trials: int) -> dict | None:
    import json

    path = run_dir / "summary.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())
    return s if s.get("trials", 0) >= trials else None


def _stopped_summary(run_dir: Path, model: str) -> dict | None:
    """What prefix_rows needs from a run stopped before it wrote summary.json (killed): its study."""
    import optuna

    if not (run_dir / "study.db").exists():
        return None
    from toggle.cost import CostModel
    from toggle.load import load_model

    url = f"sqlite:///{run_dir / 'study.db'}"
    name = optuna.get_all_study_names(url)[0]
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    return {"study": name, "trials": len(trials), "satisfied": False, "compressed_size_bytes": None,
            "base_size_bytes": CostModel(load_model(model).model).base16_bytes, "stopped": True,
            "profiling_seconds": 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true", help="the synthetic problem instead of the model")
    ap.add_argument("--blocks", type=int, default=30, help="synthetic: number of blocks (30 = SmolLM2's shape)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default="100MB", help="model budget (default 100MB)")
    ap.add_argument("--budget-fraction", type=float, default=0.5, help="synthetic: budget as a fraction of 16-bit size")
    ap.add_argument("--trials", default="25", help="comma-separated trial budgets (full grid: 25,50,100)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (full grid: 0,1,2)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--samplers", default="bo,allocator,uniform,random")
    ap.add_argument("--relax", default="0", help="comma-separated --relax levels (issue 13's grid: 0.25,0.5)")
    ap.add_argument("--out", default="benchmarks/results/search-runs", help="run directories (reused: resumes)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--read-only", action="store_true", help="only read the run directories already there (a run "
                    "with fewer trials than a budget is reported with the trials it has)")
    ap.add_argument("--name", default="bench_search")
    args = ap.parse_args(argv)
    import signal

    # Ctrl-C / kill -INT stops a search cleanly (its study and summary are written) even when the
    # script was started in the background, where the shell ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run = Run(args.name, args.device, args.threads)
    counts = sorted(int(t) for t in args.trials.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    relaxes = [float(r) for r in args.relax.split(",")]
    rows: list[dict] = []
    profiled: dict[str, Path] = {}  # profiling file name -> the run directory file that holds it
    for relax, seed, sampler in ((r, s, m) for r in relaxes for s in seeds for m in args.samplers.split(",")):
            out = Path(args.out) / ("synthetic" if args.synthetic else args.budget)
            run_dir = out / (f"relax{relax:g}" if len(relaxes) > 1 or relax else "") / f"{sampler}-seed{seed}"
            for name, source in profiled.items():  # it depends on model, trace, profile, specs (not relax)
                if sampler in PROFILED[name] and not (run_dir / name).exists():
                    run_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(source, run_dir / name)
            t0 = time.perf_counter()
            done = _finished_summary(run_dir, 1 if args.read_only else counts[-1])
            if done is None and args.read_only:
                done = _stopped_summary(run_dir, args.model)
                if done is None:
                    print(f"{run_dir}: not run; left out")
                    continue
            if done is not None:  # a finished run of this grid: read it, do not resume (resuming re-audits)
                from types import SimpleNamespace

                result = SimpleNamespace(summary=done)
                print(f"{run_dir}: finished earlier ({done['trials']} trials), read from its study", flush=True)
            elif args.synthetic:
                from toggle.search.synthetic import SyntheticObjective

                obj = SyntheticObjective(blocks=args.blocks, seed=seed)
                result = run_study(obj, int(obj.base16_bytes * args.budget_fraction), profile=load_profile(args.profile),
                                   run_dir=run_dir, trials=counts[-1], sampler=sampler, seed=seed,
                                   profiling_objective=obj.profiling_view(seed=seed + 100))
            else:
                from toggle.api import search as run_search

                result = run_search(args.model, args.budget, profile=args.profile, trials=counts[-1], sampler=sampler,
                                    seed=seed, out=run_dir, device=args.device, relax=relax, progress=False,
                                    write_model=False)
            for name in PROFILED:
                if (run_dir / name).exists() and name not in profiled:
                    profiled[name] = run_dir / name
            s = result.summary
            held = (s.get("heldout") or {}).get("pass_rate")
            exit_cost = early_exit_cost(run_dir)
            for r in prefix_rows(run_dir, s, counts):
                rows.append({"relax": relax, "sampler": sampler, "seed": seed, **r,
                             "profiling_evaluations": s.get("profiling_evaluations", 0),
                             "early_stopped": s.get("early_stopped_trials"), "infeasible_cost": exit_cost,
                             "heldout_pass_rate_final": held if r["trials_budget"] == counts[-1] else None})
            print(f"{sampler}-seed{seed}: {s['trials']} trials, best "
                  f"{format_bytes(s['compressed_size_bytes']) if s['satisfied'] else 'none'}, "
                  f"{time.perf_counter() - t0:.0f} s in all (with held-out audit and report)", flush=True)

    # One line per (relax, sampler, trial budget): median over seeds.
    summary = []
    for relax, sampler, n in ((r, m, n) for r in relaxes for m in args.samplers.split(",") for n in counts):
            group = [r for r in rows if r["relax"] == relax and r["sampler"] == sampler and r["trials_budget"] == n]
            sizes = [r["best_bytes"] if r["best_bytes"] is not None else math.inf for r in group]
            med = statistics.median(sizes)
            if not group:
                continue
            held = [r["heldout_pass_rate_final"] for r in group if r["heldout_pass_rate_final"] is not None]
            costs = [r["infeasible_cost"] for r in group if r["infeasible_cost"] is not None]
            summary.append({"relax": relax, "sampler": sampler, "trials": n, "seeds": len(group),
                            "heldout": statistics.median(held) if held else None,
                            "infeasible_cost": statistics.median(costs) if costs else None,
                            "profiling_evaluations": statistics.median(r["profiling_evaluations"] for r in group),
                            "trials_run": statistics.median(r["trials_run"] for r in group),
                            "found": sum(math.isfinite(x) for x in sizes),
                            "median_best": format_bytes(med) if math.isfinite(med) else "none",
                            "median_best_fraction": (statistics.median(r["best_fraction"] for r in group)
                                                     if all(r["best_fraction"] is not None for r in group) else None),
                            "wall_s": statistics.median(r["wall_s"] for r in group),
                            "eval_s": statistics.median(r["eval_s"] for r in group),
                            "sampler_s": statistics.median(r["sampler_s"] for r in group),
                            "profiling_s": statistics.median(r["profiling_s"] for r in group)})
    print()
    print(table(summary, [("relax", "relax", "g"), ("sampler", "sampler", ""), ("trials", "trials", "d"), ("trials_run", "trials run", ".0f"),
                          ("seeds", "seeds", "d"),
                          ("found", "seeds with a satisfying plan", "d"), ("median_best", "smallest satisfying", ""),
                          ("median_best_fraction", "size / 16-bit", ".3f"), ("wall_s", "wall s", ".0f"),
                          ("eval_s", "evaluation s", ".0f"), ("sampler_s", "sampler s", ".1f"),
                          ("profiling_s", "profiling s", ".0f"), ("profiling_evaluations", "profiling evals", ".0f"),
                          ("heldout", "held-out pass rate", ".2f"),
                          ("infeasible_cost", "early-stopped / full evaluation s", ".2f")]))
    run.finish(rows, {"summary": summary, "budget": args.budget, "trials": counts, "seeds": seeds, "relax": relaxes,
                      "note": "profiling computed once and copied to the later run directories that read it (BO, allocator, greedy); its seconds are "
                              "those of the run that computed it"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
