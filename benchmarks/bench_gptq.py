"""Uniform block plans quantised by RTN and by GPTQ, scored on the default specs' calibration trace
of the built-in model: does a better quantiser open the room below uniform 4-bit (84.2 MB)?

    PYTHONPATH=$PWD python benchmarks/bench_gptq.py [--relax 0] [--quantizers rtn,gptq]
    PYTHONPATH=$PWD python benchmarks/bench_gptq.py --quantizers rtn --scale-bits 16,8,6 \
        --settings 4:32,4:64,3:32 --name bench_scales           # quantised group scales

Every transformer-block group gets the same (bits, group size, scale bits, quantiser); the embedding stays
4-bit g32 RTN (exact for this Q4_1-sourced model). Per plan: bytes from the cost model, each
property's robustness (the smallest over the calibration prompts), and the seconds to apply and
score it. GPTQ uses the calibration activations the search collects (`calibration_stats`).
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
from toggle.cost import CostModel  # noqa: E402
from toggle.evaluate import Evaluator  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.rundir import RunDir  # noqa: E402
from toggle.specs.syntax import load_specs  # noqa: E402
from toggle.trace import build_trace  # noqa: E402

SETTINGS = [(4, 32), (4, 64), (4, 128), (3, 32), (3, 64), (3, 128)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--relax", type=float, default=0.0)
    ap.add_argument("--quantizers", default="rtn,gptq")
    ap.add_argument("--scale-bits", default="16", help="comma-separated scale_bits of the block groups (16: float16)")
    ap.add_argument("--settings", default=",".join(f"{b}:{g}" for b, g in SETTINGS),
                    help="comma-separated bits:group_size of the block groups")
    ap.add_argument("--name", default="bench_gptq")
    args = ap.parse_args()
    run = Run(args.name)
    t0 = time.time()
    loaded = load_model("smollm2-135m", device="cpu")
    refs = compressible_modules(loaded.model)
    specs = load_specs(None, {}, args.relax)
    trace = build_trace(loaded, load_prompts(None), specs, split="calibration")
    methods = Methods(quantizer="rtn", group_size=32, symmetric="auto", pruner="wanda")
    with tempfile.TemporaryDirectory() as tmp:
        stats, _ = calibration_stats(loaded, refs, trace, True, RunDir(tmp))
    applier = PlanApplier(loaded.model, refs, stats)
    evaluator = Evaluator(loaded, specs, trace, applier)
    cost = CostModel.for_model(loaded, "toggle", refs)
    print(f"# set-up {time.time() - t0:.1f} s", flush=True)
    embed = next(r.name for r in refs if r.component == "embed")
    blocks = [r.name for r in refs if r.name != embed]
    rows: list[dict] = []
    settings = [tuple(int(x) for x in s.split(":")) for s in args.settings.split(",")]
    for q in args.quantizers.split(","):
        for (bits, group), sb in ((s, sb) for s in settings for sb in map(int, args.scale_bits.split(","))):
            block = ModuleSetting(bits=bits, group_size=group, quantizer=q, scale_bits=sb)
            plan = Plan.uniform(loaded.model_id, blocks, block, methods).with_setting(
                embed, ModuleSetting(bits=4, group_size=32, quantizer="rtn"))
            t = time.time()
            ev = evaluator.evaluate(plan)
            applier.restore()
            row = {"quantizer": q, "bits": bits, "group_size": group, "scale_bits": sb, "MB": cost.of(plan).bytes / 1e6,
                   "min_robustness": min(ev.robustness.values()),
                   **{f"rob_{k}": v for k, v in sorted(ev.robustness.items())},
                   "apply_s": ev.timings.get("apply", 0.0), "seconds": time.time() - t}
            rows.append(row)
            print(row, flush=True)
            run.finish(rows, {"relax": args.relax}, final=False)
    run.finish(rows, {"relax": args.relax})
    cols = [("quantizer", "quantizer", ""), ("bits", "bits", ""), ("group_size", "group", ""),
            ("scale_bits", "scale bits", ""), ("MB", "MB", ".2f"),
            ("min_robustness", "min robustness", ".4f")]
    cols += [(k, k[4:], ".4f") for k in rows[0] if k.startswith("rob_")]
    cols += [("apply_s", "apply s", ".1f"), ("seconds", "s", ".1f")]
    print(table(rows, cols))


if __name__ == "__main__":
    main()
