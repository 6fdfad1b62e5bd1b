"""Robustness of the shipped specs on the built-in model: unmodified vs uniform RTN plans.

    PYTHONPATH=$PWD python benchmarks/robustness_table.py [--prompts FILE] [--bits 8 6 5 4 3] [--embed]

Per property: the robustness over the calibration prompts (the min is the property's
robustness; the median shows how typical prompts fare). Uniform plans quantise every
block linear layer with a quick per-group RTN (tests/appliers.py, group size 128,
asymmetric); --embed also quantises the tied embedding / LM head.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from appliers import RTNApplier  # noqa: E402

from toggle.evaluate import Evaluator  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.specs import load_specs  # noqa: E402
from toggle.trace import build_trace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--specs", nargs="*", default=None)
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 6, 5, 4, 3])
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--embed", action="store_true")
    args = ap.parse_args()

    specs = load_specs(args.specs)
    loaded = load_model("smollm2-135m")
    trace = build_trace(loaded, load_prompts(args.prompts), specs)
    applier = RTNApplier(loaded.model)
    names = [n for n, r in applier.refs.items() if args.embed or r.block is not None]
    evaluator = Evaluator(loaded, specs, trace, applier)
    rows = [("unmodified", None)] + [
        (f"uniform {b}-bit RTN", Plan.uniform(loaded.model_id, names, ModuleSetting(bits=b), Methods(group_size=args.group_size)))
        for b in args.bits]
    print(f"{len(trace.paths)} calibration prompts ({sum(1 for p in trace.paths if p.answer)} with gold answers); "
          f"cells: min / median robustness over prompts\n")
    header = "| plan | " + " | ".join(specs.names) + " | satisfied | eval s |"
    print(header)
    print("|" + "---|" * (len(specs.names) + 3))
    for label, plan in rows:
        r = evaluator.evaluate(plan)
        cells = []
        for name in specs.names:
            per = list(r.per_prompt.get(name, {}).values())
            cells.append(f"{min(per):+.4f} / {statistics.median(per):+.4f}" if per else r.reason or "-")
        print(f"| {label} | " + " | ".join(cells) + f" | {'yes' if r.satisfied else 'no'} | {r.timings['total']:.1f} |",
              flush=True)
    applier.restore()


if __name__ == "__main__":
    main()
