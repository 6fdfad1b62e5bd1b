"""The whole pipeline from Python: search, write the compressed model, audit it on held-out prompts.

    python examples/search_apply_audit.py [MODEL] [BUDGET] [TRIALS] [--specs PATH ...] [--prompts FILE] [--out DIR]

Defaults: the built-in SmolLM2-135M-Instruct, 100MB, 30 trials (minutes to tens of minutes on a
laptop CPU), the shipped specs and prompt suite. A plan whose methods read calibration statistics
(Wanda, AWQ, GPTQ, llama.cpp's importance matrix) finds them beside its plan file, where the search
kept them: `toggle.api.apply` reads them from there, as `toggle apply` does.
"""
import argparse
import sys

from toggle import api

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", nargs="?", default="smollm2-135m")
parser.add_argument("budget", nargs="?", default="100MB")
parser.add_argument("trials", nargs="?", type=int, default=30)
parser.add_argument("--specs", nargs="+")
parser.add_argument("--prompts")
parser.add_argument("--out")
args = parser.parse_args()
out = args.out or f"runs/example-{args.budget}"

# write_model=False: the search would write RUN/model itself; here api.apply shows the step
result = api.search(args.model, args.budget, trials=args.trials, specs=args.specs, prompts=args.prompts, out=out,
                    write_model=False)
print(f"satisfied={result.satisfied} size_reduction={result.summary['size_reduction']:.3f}")
if result.plan is None:
    sys.exit(1)

info = api.apply(result.run_dir / "plan.yaml", args.model, f"{out}/artifact")
print(f"artifact: {info.path}, {info.weights_file_bytes} bytes of weights on disk")

report = api.audit(f"{out}/artifact", specs=args.specs, prompts=args.prompts, split="heldout", mode="free")
print(f"held-out audit (free-running): satisfied={report.satisfied} pass_rate={report.pass_rate:.2f}")
sys.exit(0 if report.satisfied else 1)
