"""What a search pays per plan outside the forward passes, side by side in one run: the shared
prompt prefix kept per plan, and profiling's output errors priced in threads.

    PYTHONPATH=$PWD python benchmarks/bench_profiling_speed.py [--probes 15] [--trials 6] [--repeats 2]

On the built-in model's calibration trace and default profile:
- `prefix kept` against `prefix per pass`: probe evaluations (one MLP group at 3 bits, on the
  profiling subset, with block replay) and trial-like evaluations of plans that hold (blocks at
  4 bits, group 32: early exit scores every chunk of prompts), the evaluator's PrefixKeeper armed as a search arms it,
  or disarmed so that every pass (each early-exit chunk, each piece) runs the prefix again. The
  gold-answer pass shares the step pass's prefix in both (that is not switchable).
- `output errors`: every option of every group (measure.all_group_errors) in threads against one
  group at a time (measure.group_errors), torch single-threaded in both; the errors must agree.
Settings alternate, once per repeat; the minimum counts. Results:
benchmarks/results/bench_profiling_speed.{json,csv}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, table  # noqa: E402

from toggle.api import calibration_stats  # noqa: E402
from toggle.compress.apply import PlanApplier  # noqa: E402
from toggle.compress.linalg import single_threaded  # noqa: E402
from toggle.cost import CostModel  # noqa: E402
from toggle.evaluate import Evaluator  # noqa: E402
from toggle.formats import get_format  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.rundir import RunDir  # noqa: E402
from toggle.search import load_profile  # noqa: E402
from toggle.search.costs import CostTable  # noqa: E402
from toggle.search.measure import all_group_errors, group_errors  # noqa: E402
from toggle.search.objective import ModelObjective  # noqa: E402
from toggle.search.sensitivity import spread  # noqa: E402
from toggle.search.space import SearchSpace  # noqa: E402
from toggle.specs import load_specs  # noqa: E402
from toggle.trace import build_trace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--probes", type=int, default=15, help="probe evaluations per setting")
    ap.add_argument("--trials", type=int, default=6, help="early-exit evaluations per setting")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-errors", action="store_true", help="skip the output errors")
    ap.add_argument("--name", default="bench_profiling_speed")
    args = ap.parse_args()
    run = Run(args.name)
    loaded = load_model(args.model)
    specs, suite, profile = load_specs(), load_prompts(), load_profile("default")
    refs = compressible_modules(loaded.model)
    trace = build_trace(loaded, suite, specs, split="calibration")
    with tempfile.TemporaryDirectory() as tmp:
        stats, _ = calibration_stats(loaded, refs, trace, True, RunDir(tmp))
    applier = PlanApplier(loaded.model, refs, stats)
    evaluator = Evaluator(loaded, specs, trace, applier)
    subset = spread(trace.prompt_ids, profile.sensitivity.prompts)
    blocks = sorted({r.block for r in refs if r.block is not None})
    probes = [Plan.uniform(loaded.model_id, [r.name for r in refs if r.block == b and r.part == "mlp"],
                           ModuleSetting(bits=3), Methods(group_size=32))
              for b in blocks[::max(1, len(blocks) // args.probes)][:args.probes]]
    trials = [Plan.uniform(loaded.model_id, [r.name for r in refs if r.block is not None and r.block % k == 0],
                           ModuleSetting(bits=4), Methods(group_size=32)) for k in range(1, 1 + args.trials)]
    for plan in probes + trials:  # quantise once: what is timed is the scoring
        applier.apply(plan)
    evaluator.evaluate(None, prompts=subset, replay=True)  # the untouched pass the probes replay from
    armed = evaluator._armed_prefixes
    hardness = dict(evaluator._hardness)  # early exit's prompt order: the same for every setting

    def disarmed(_signatures):
        return armed(None)

    seconds: dict[str, list[float]] = {}
    results: dict[str, list] = {}
    for r in range(args.repeats):
        for label, arm in (("prefix per pass", disarmed), ("prefix kept", armed)):
            evaluator._armed_prefixes = arm
            start = time.perf_counter()
            got = [evaluator.evaluate(p, prompts=subset, replay=True).per_prompt for p in probes]
            seconds.setdefault(f"{label}: {len(probes)} probes", []).append(time.perf_counter() - start)
            evaluator._hardness = dict(hardness)
            start = time.perf_counter()
            got += [evaluator.evaluate(p, stop_below=0.0).per_prompt for p in trials]
            seconds.setdefault(f"{label}: {len(trials)} early-exit evaluations", []).append(time.perf_counter() - start)
            results[label] = got
            print(f"  repeat {r + 1}, {label}: {seconds[f'{label}: {len(probes)} probes'][-1]:.1f} s probes, "
                  f"{seconds[f'{label}: {len(trials)} early-exit evaluations'][-1]:.1f} s evaluations", flush=True)
    evaluator._armed_prefixes = armed
    applier.restore()

    space = SearchSpace(loaded.model_id, refs, profile)
    cost_model = CostModel.for_model(loaded, get_format(profile.format), refs)
    costs = CostTable(space, cost_model.of)
    objective = ModelObjective(loaded.model_id, refs, [p.name for p in specs.properties], evaluator, cost_model,
                               cache_key="bench")
    errors = {}
    for r in range(0 if args.no_errors else args.repeats):
        for label in ("output errors, one group at a time", "output errors, groups in threads"):
            applier.release_caches()  # the error samples: each setting computes its own
            start = time.perf_counter()
            if "threads" in label:
                errors[label] = all_group_errors(space, costs, objective)
            else:
                with single_threaded():
                    errors[label] = [group_errors(space, costs, objective, gi) for gi in range(len(space.groups))]
            seconds.setdefault(label, []).append(time.perf_counter() - start)
            print(f"  repeat {r + 1}, {label}: {seconds[label][-1]:.1f} s", flush=True)

    rows = []
    for label, values in seconds.items():
        base = label.replace("prefix kept", "prefix per pass").replace("groups in threads", "one group at a time")
        rows.append({"setting": label, "seconds": round(min(values), 2), "ratio": min(values) / min(seconds[base])})
    same = results["prefix kept"] == results["prefix per pass"]
    agree = errors.get("output errors, groups in threads") == errors.get("output errors, one group at a time")
    print(table(rows, [("setting", "setting", ""), ("seconds", "seconds (min)", ".2f"), ("ratio", "vs its baseline", ".2f")]))
    print(f"per-prompt robustness identical with the prefix kept: {same}; output errors identical: {agree}")
    run.finish(rows, {"probes": len(probes), "trials": len(trials), "repeats": args.repeats,
                      "same_robustness": same, "same_errors": agree})


if __name__ == "__main__":
    main()
