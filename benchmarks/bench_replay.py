"""Profiling's probe evaluations with and without block replay, side by side (issue 13: the
README command's time).

    PYTHONPATH=$PWD python benchmarks/bench_replay.py

On the built-in model, default specs and profile: the output errors of every option (not
timed), then the search's probe evaluations (the untouched model, then one plan per group on
the profile's 3 prompts) twice, each time with a fresh applier and evaluator: once running every
block, once replaying the blocks before the changed group from an earlier pass over the same
batch under the same weights (trace/replay.py). Printed: the seconds of each, their ratio, the
blocks replayed and run, and the largest difference between the two runs' robustness values
(0: replay returns exactly what running the blocks returns).
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, load_average  # noqa: E402

from toggle.api import calibration_stats  # noqa: E402
from toggle.compress.apply import PlanApplier  # noqa: E402
from toggle.cost import CostModel  # noqa: E402
from toggle.evaluate import Evaluator  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.rundir import RunDir  # noqa: E402
from toggle.search.costs import CostTable  # noqa: E402
from toggle.search.measure import group_errors, probe_option  # noqa: E402
from toggle.search.objective import ModelObjective  # noqa: E402
from toggle.search.profile import load_profile  # noqa: E402
from toggle.search.sensitivity import spread  # noqa: E402
from toggle.search.space import SearchSpace  # noqa: E402
from toggle.specs.syntax import load_specs  # noqa: E402
from toggle.trace import build_trace  # noqa: E402


def main() -> None:
    run = Run("bench_replay")
    print(f"# load average at the start: {load_average()}", flush=True)
    loaded = load_model("smollm2-135m", device="cpu")
    refs = compressible_modules(loaded.model)
    specs = load_specs(None, {}, 0.0)
    profile = load_profile("default")
    trace = build_trace(loaded, load_prompts(None), specs, split="calibration")
    with tempfile.TemporaryDirectory() as tmp:
        stats, _ = calibration_stats(loaded, refs, trace, profile.needs_stats, RunDir(tmp))
    cost = CostModel.for_model(loaded, profile.format, refs)
    names = [p.name for p in specs.properties]
    subset = spread(trace.prompt_ids, profile.sensitivity.prompts)
    space = SearchSpace(loaded.model_id, refs, profile)

    def objective(replay: bool) -> ModelObjective:
        evaluator = Evaluator(loaded, specs, trace, PlanApplier(loaded.model, refs, stats))
        return ModelObjective(loaded.model_id, refs, names, evaluator, cost, prompts=subset, replay=replay)

    full = ModelObjective(loaded.model_id, refs, names, Evaluator(loaded, specs, trace, PlanApplier(loaded.model, refs, stats)),
                          cost)
    costs = CostTable(space, full.cost)
    t = time.perf_counter()
    errors = [group_errors(space, costs, full, gi) for gi in range(len(space.groups))]
    full.evaluator.applier.restore()
    print(f"# output errors of every option: {time.perf_counter() - t:.1f} s (not compared)", flush=True)
    plans = [space.plan({})] + [space.plan(space.to_params(costs.with_combo(space.untouched(), gi, option)))
                                for gi in range(len(space.groups)) if (option := probe_option(errors[gi])) is not None]

    results, seconds, counters = {}, {}, {}
    for replay in (False, True):
        obj = objective(replay)
        t = time.perf_counter()
        results[replay] = [obj.evaluate(plan).robustness for plan in plans]
        seconds[replay] = time.perf_counter() - t
        obj.evaluator.applier.restore()
        counters[replay] = {**obj.evaluator._replay.counters, "kept_mb": round(obj.evaluator._replay.bytes / 2**20, 1)}
        print(f"# replay {'on ' if replay else 'off'}: {len(plans)} evaluations on {len(subset)} prompts, "
              f"{seconds[replay]:.1f} s; blocks replayed {counters[replay]['replayed']}, run {counters[replay]['run']}, "
              f"outputs kept {counters[replay]['kept_mb']} MiB",
              flush=True)
    diff = max((abs(a[n] - b[n]) for a, b in zip(results[False], results[True]) for n in names
                if math.isfinite(a[n]) or math.isfinite(b[n])), default=0.0)
    ratio = seconds[True] / seconds[False]
    print(f"replay / no replay: {ratio:.2f}x ({seconds[True]:.1f} s against {seconds[False]:.1f} s); "
          f"largest robustness difference {diff:.3g}")
    run.finish([{"replay": r, "seconds": round(seconds[r], 2), "evaluations": len(plans), **counters[r]}
                for r in (False, True)], {"ratio": round(ratio, 3), "max_robustness_difference": diff})


if __name__ == "__main__":
    main()
