"""Measured-error profiling's output errors: the Gram diagonal against the full product, side by side.

    PYTHONPATH=$PWD python benchmarks/bench_output_error.py [--model smollm2-135m] [--profile default]

For every option of every group of the profile's space (what toggle.search.measure prices before
its first probe), the relative output error tr(dW G dW^T) / tr(W G W^T) two ways, on the same
sampled rows: the full product (what profiling computed before) and, for round-to-nearest
options, its diagonal part sum_i G_ii ||dW[:, i]||^2 (what it computes now; other methods keep
the full product in both columns). Printed: the seconds each took, and how far the diagonal is
from the full product: the ratio diagonal / full over options, the ratio of each option's error
to its group's probe option's (what the additive model multiplies a probe's drop by) in both,
and the rank correlation of a group's options. Results: benchmarks/results/bench_output_error.json.
"""
from __future__ import annotations

import argparse
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
from toggle.files import default_specs  # noqa: E402
from toggle.formats import get_format  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.rundir import RunDir  # noqa: E402
from toggle.search.costs import CostTable  # noqa: E402
from toggle.search.measure import group_errors, probe_option  # noqa: E402
from toggle.search.profile import load_profile  # noqa: E402
from toggle.search.space import SearchSpace  # noqa: E402
from toggle.specs import load_specs  # noqa: E402
from toggle.trace import build_trace  # noqa: E402


def errors(applier: PlanApplier, space: SearchSpace, costs: CostTable, full: bool) -> tuple[list[list[float]], float]:
    """measure.group_errors for every group, with the full product or not; and the seconds taken."""

    class Priced:  # the one part of an Objective group_errors calls
        def output_error(self, modules, setting, methods):
            return sum(applier.output_error(m, setting, methods, full=full) for m in modules)

    start = time.perf_counter()
    out = [group_errors(space, costs, Priced(), gi) for gi in range(len(space.groups))]
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--name", default="bench_output_error")
    args = ap.parse_args()
    run = Run(args.name)
    loaded = load_model(args.model)
    profile = load_profile(args.profile)
    refs = compressible_modules(loaded.model)
    space = SearchSpace(loaded.model_id, refs, profile)
    costs = CostTable(space, CostModel.for_model(loaded, get_format(profile.format), refs).of)
    trace = build_trace(loaded, load_prompts(), load_specs(default_specs()), split="calibration")
    with tempfile.TemporaryDirectory() as tmp:
        stats, _ = calibration_stats(loaded, refs, trace, True, RunDir(tmp))
    applier = PlanApplier(loaded.model, refs, stats)
    full, full_s = errors(applier, space, costs, full=True)
    diag, diag_s = errors(applier, space, costs, full=False)

    ratio, to_probe, rho, probes_same = [], [], [], 0
    for f, d in zip(full, diag):
        f, d = np.asarray(f), np.asarray(d)
        nonzero = f > 0
        if nonzero.sum() < 2:
            continue
        ratio += list(d[nonzero] / f[nonzero])
        pf, pd = probe_option(list(f)), probe_option(list(d))
        probes_same += pf == pd
        to_probe += list((d[nonzero] / d[pf]) / (f[nonzero] / f[pf]))
        rho.append(sstats.spearmanr(f[nonzero], d[nonzero]).statistic)
    ratio, to_probe = np.asarray(ratio), np.asarray(to_probe)

    def spread_of(x):
        return (f"median {np.median(x):.3f}, 5-95% {np.percentile(x, 5):.3f}-{np.percentile(x, 95):.3f}, "
                f"range {x.min():.3f}-{x.max():.3f}")

    rows = [{"what": "full product tr(dW G dW^T) (before)", "seconds": full_s, "detail": f"{len(ratio)} options"},
            {"what": "Gram diagonal for round-to-nearest (now)", "seconds": diag_s,
             "detail": f"diagonal / full: {spread_of(ratio)}"}]
    extra = {"groups": len(space.groups), "options": int(len(ratio)), "seconds_ratio": diag_s / full_s,
             "diagonal_over_full": spread_of(ratio), "within_2.5pct": float(np.mean(np.abs(ratio - 1) <= 0.025)),
             "relative_to_probe": spread_of(to_probe), "min_group_spearman": float(min(rho)),
             "same_probe_option": f"{probes_same}/{len(rho)}"}
    print(table(rows, [("what", "", ""), ("seconds", "s", ".1f"), ("detail", "", "")]))
    print(f"# now / before: {extra['seconds_ratio']:.2f}; options within 2.5% of the full product: "
          f"{extra['within_2.5pct']:.1%}; error relative to the group's probe option, diagonal / full: "
          f"{extra['relative_to_probe']}; smallest Spearman over a group's options {extra['min_group_spearman']:.4f}; "
          f"the same probe option in {extra['same_probe_option']} groups")
    run.finish(rows, extra)


if __name__ == "__main__":
    main()
