"""Does cheap profiling rank the groups as full evaluations do? (issue 13, item 4)

    PYTHONPATH=$PWD python benchmarks/bench_profiling.py [--options probe,second] [--relax 0]

On the built-in model, default specs and profile: the measured-error profiling the search runs
(output errors of every option from calibration statistics, no forward pass; then one probe
evaluation per group on the profile's 3 prompts) against the truth it stands for: a full
evaluation on every calibration prompt of the same one-group plan (only that group compressed).

Per group and option, the damage is the largest share of a property's margin the plan consumes,
(r0_p - r_p) / |r0_p| maximised over properties: what the allocator and the BO prior rank by.
Printed: Spearman and Kendall rank correlations over groups of the full evaluations' damage with
(a) the output error alone (0 evaluations), (b) the 3-prompt probe (the prior at the probed
option), and, for a second option per group that was not probed, (c) the additive model's
prediction there (coef * output error), the extrapolation the prior makes for every other option.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats as sstats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, table  # noqa: E402

from toggle.api import calibration_stats  # noqa: E402
from toggle.compress.apply import PlanApplier  # noqa: E402
from toggle.cost import CostModel  # noqa: E402
from toggle.evaluate import Evaluator  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.rundir import RunDir  # noqa: E402
from toggle.search.costs import CostTable  # noqa: E402
from toggle.search.measure import AdditiveModel, probe_option, run_measurement  # noqa: E402
from toggle.search.objective import ModelObjective  # noqa: E402
from toggle.search.profile import KNOBS, load_profile  # noqa: E402
from toggle.search.sensitivity import spread  # noqa: E402
from toggle.search.space import SearchSpace  # noqa: E402
from toggle.specs.syntax import load_specs  # noqa: E402
from toggle.trace import build_trace  # noqa: E402

SECOND_QUANTILE = 0.5  # the unprobed option: this quantile of the group's option errors (log scale)


def second_option(errors: list[float], probe: int) -> int | None:
    """An option other than the probe, near the median of the group's errors on a log scale."""
    nonzero = [(e, i) for i, e in enumerate(errors) if e > 0 and math.isfinite(e) and i != probe]
    if not nonzero:
        return None
    target = np.quantile(np.log([e for e, _ in nonzero]), SECOND_QUANTILE)
    return min(nonzero, key=lambda ei: (abs(math.log(ei[0]) - target), ei[1]))[1]


def damage(robustness: dict, base: np.ndarray, scale: np.ndarray, names: list[str]) -> float:
    """The largest share of any property's margin consumed (inf when a property is -inf)."""
    r = np.array([robustness[n] for n in names], dtype=float)
    if not np.all(np.isfinite(r[np.isfinite(base)])):
        return math.inf
    ok = np.isfinite(base)
    return float(np.max((base[ok] - r[ok]) / scale[ok]))


def correlations(truth: list[float], guess: list[float]) -> tuple[float, float, int]:
    pairs = [(t, g) for t, g in zip(truth, guess) if math.isfinite(t) and math.isfinite(g)]
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    t, g = zip(*pairs)
    return float(sstats.spearmanr(t, g).statistic), float(sstats.kendalltau(t, g).statistic), len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--relax", type=float, default=0.0)
    ap.add_argument("--options", default="probe,second", help="which options per group to evaluate fully")
    ap.add_argument("--name", default="bench_profiling")
    args = ap.parse_args()
    which = args.options.split(",")
    run = Run(args.name)
    t0 = time.time()
    loaded = load_model("smollm2-135m", device="cpu")
    refs = compressible_modules(loaded.model)
    specs = load_specs(None, {}, args.relax)
    profile = load_profile("default")
    trace = build_trace(loaded, load_prompts(None), specs, split="calibration")
    with tempfile.TemporaryDirectory() as tmp:
        stats, _ = calibration_stats(loaded, refs, trace, profile.needs_stats, RunDir(tmp))
    applier = PlanApplier(loaded.model, refs, stats)
    evaluator = Evaluator(loaded, specs, trace, applier)
    cost = CostModel.for_model(loaded, profile.format, refs)
    names = [p.name for p in specs.properties]
    full = ModelObjective(loaded.model_id, refs, names, evaluator, cost)
    subset = spread(trace.prompt_ids, profile.sensitivity.prompts)
    profiling = ModelObjective(loaded.model_id, refs, names, evaluator, cost, prompts=subset)
    space = SearchSpace(loaded.model_id, refs, profile)
    costs = CostTable(space, full.cost)
    print(f"# set-up {time.time() - t0:.1f} s", flush=True)

    t = time.time()
    measured = run_measurement(space, costs, full, profiling)
    measure_s = time.time() - t
    prior = AdditiveModel(space, costs, measured)
    print(f"# measured-error profiling {measure_s:.1f} s, {measured.evaluations} evaluations on "
          f"{len(subset)} of {len(trace.prompt_ids)} prompts", flush=True)

    t = time.time()
    base_full = full.evaluate(space.plan({}))
    applier.restore()
    base = np.array([base_full.robustness[n] for n in names], dtype=float)
    scale = np.maximum(np.abs(np.where(np.isfinite(base), base, 0.0)), 1e-3)
    full_s = [time.time() - t]
    rows: list[dict] = []
    for gi, g in enumerate(space.groups):
        probe = probe_option(measured.errors[gi])
        if probe is None:
            continue
        options = {"probe": probe, "second": second_option(measured.errors[gi], probe)}
        for kind in which:
            ci = options.get(kind)
            if ci is None:
                continue
            index = costs.with_combo(space.untouched(), gi, ci)
            t = time.time()
            out = full.evaluate(space.plan(space.to_params(index)))
            applier.restore()
            full_s.append(time.time() - t)
            combo = dict(zip(KNOBS, costs.combos(gi)[ci]))
            rows.append({"group": g.name, "option": kind, "setting": combo,
                         "output_error": measured.errors[gi][ci],
                         "prior_damage": float(prior.loss(index[None, :])[0]),
                         "full_damage": math.inf if out.reason else damage(out.robustness, base, scale, names),
                         "seconds": full_s[-1]})
            print(rows[-1], flush=True)
            run.finish(rows, {"relax": args.relax}, final=False)

    summary = []
    for kind in which:
        mine = [r for r in rows if r["option"] == kind]
        truth = [r["full_damage"] for r in mine]
        for label, key in (("output error alone (0 evaluations)", "output_error"),
                           ("measured-error prior (probes on 3 prompts)" if kind == "probe"
                            else "measured-error prior, extrapolated (coef x output error)", "prior_damage")):
            rho, tau, n = correlations(truth, [r[key] for r in mine])
            summary.append({"option": kind, "predictor": label, "groups": n, "spearman": rho, "kendall": tau})
    extra = {"relax": args.relax, "measure_seconds": measure_s, "measure_evaluations": measured.evaluations,
             "profiling_prompts": len(subset), "calibration_prompts": len(trace.prompt_ids),
             "full_evaluation_seconds_median": float(np.median(full_s)), "correlations": summary}
    run.finish(rows, extra)
    print(table(summary, [("option", "option", ""), ("predictor", "predictor", ""), ("groups", "groups", ""),
                          ("spearman", "Spearman", ".3f"), ("kendall", "Kendall", ".3f")]))
    print(f"measured-error profiling: {measure_s:.1f} s, {measured.evaluations} evaluations on {len(subset)} prompts; "
          f"one full evaluation ({len(trace.prompt_ids)} prompts): median {np.median(full_s):.2f} s")


if __name__ == "__main__":
    main()
