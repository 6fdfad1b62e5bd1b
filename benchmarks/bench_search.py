"""BO vs the baselines at an equal trial budget: smallest plan satisfying every property.

    python benchmarks/bench_search.py                          # built-in SmolLM2-135M, 100MB, 40 trials
    python benchmarks/bench_search.py --synthetic --blocks 30  # the synthetic problem (no model)

Prints, per sampler: the smallest satisfying size, its reduction against the 16-bit dense
model, trials used, and wall time split into model evaluation, sampler and profiling time,
then BO's size relative to the best uniform plan and to random search (target: BO at least
15% smaller than uniform and smaller than random). Timings are noisy on a shared CPU: compare
the ratios of one run, not absolute seconds across runs. Not a test.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toggle.search import load_profile, run_study  # noqa: E402
from toggle.units import format_bytes  # noqa: E402

SAMPLERS = ("uniform", "random", "greedy", "bo")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true", help="the synthetic problem instead of the built-in model")
    ap.add_argument("--blocks", type=int, default=30, help="synthetic: number of blocks (30 = SmolLM2's shape)")
    ap.add_argument("--budget", default="100MB", help="built-in model budget (default 100MB)")
    ap.add_argument("--budget-fraction", type=float, default=0.5, help="synthetic: budget as a fraction of 16-bit size")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--out", help="keep the run directories here (default: a temporary directory)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-search-"))
    rows = {}
    for sampler in args.samplers.split(","):
        t0 = time.perf_counter()
        if args.synthetic:
            from toggle.search.synthetic import SyntheticObjective

            obj = SyntheticObjective(blocks=args.blocks, seed=args.seed)
            result = run_study(obj, int(obj.base16_bytes * args.budget_fraction), profile=load_profile(args.profile),
                               run_dir=out / sampler, trials=args.trials, sampler=sampler, seed=args.seed,
                               profiling_objective=obj.profiling_view(seed=args.seed + 100))
        else:
            from toggle.search import run_search

            result = run_search("smollm2-135m", args.budget, profile=args.profile, trials=args.trials,
                                sampler=sampler, seed=args.seed, out=out / sampler, progress=False)
        s = result.summary
        rows[sampler] = {
            "size": s["compressed_size_bytes"] if s["satisfied"] else math.inf,
            "reduction": s["size_reduction"] if s["satisfied"] else None,
            "trials": s["trials"], "feasible": s["feasible_trials"],
            "wall": time.perf_counter() - t0, "eval": s["evaluation_seconds"], "sampler_s": s["sampler_seconds"],
            "profiling": s.get("profiling_seconds", 0.0), "base": s["base_size_bytes"],
        }
        r = rows[sampler]
        reduction = "-" if r["reduction"] is None else f"{100 * r['reduction']:.1f}% smaller"
        print(f"{sampler:8s} smallest satisfying {format_bytes(r['size']) if math.isfinite(r['size']) else 'none':>9s}"
              f"  ({reduction})"
              f"  trials {r['trials']:3d} (feasible {r['feasible']:3d})  wall {r['wall']:7.1f} s ="
              f" eval {r['eval']:7.1f} + sampler {r['sampler_s']:6.1f} + profiling {r['profiling']:6.1f} + other",
              flush=True)
    if "bo" in rows:
        bo = rows["bo"]["size"]
        for other in ("uniform", "random", "greedy"):
            if other in rows and math.isfinite(bo):
                ref = rows[other]["size"]
                print(f"BO vs {other}: " + (f"{100 * (1 - bo / ref):.1f}% smaller" if math.isfinite(ref)
                                            else f"{other} found no satisfying plan"))
        b = rows["bo"]
        per_trial = b["sampler_s"] / max(b["trials"], 1)
        print(f"BO sampler overhead: {per_trial:.2f} s per trial, {100 * b['sampler_s'] / max(b['eval'], 1e-9):.1f}% of "
              f"evaluation time")
    print(f"run directories: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
