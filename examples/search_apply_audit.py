"""The whole pipeline from Python: search, write the compressed model, audit it on held-out prompts.

    python examples/search_apply_audit.py [MODEL] [BUDGET] [TRIALS]

Defaults: the built-in SmolLM2-135M-Instruct, 100MB, 30 trials (tens of minutes on a laptop CPU).
"""
import sys

from toggle.api import audit
from toggle.api import write_artifact
from toggle.load import load_model
from toggle.search import run_search

model, budget, trials = (sys.argv[1:] + ["smollm2-135m", "100MB", "30"][len(sys.argv) - 1:])[:3]
out = f"runs/example-{budget}"

result = run_search(model, budget, trials=int(trials), out=out)
print(f"satisfied={result.satisfied} size_reduction={result.summary['size_reduction']:.3f}")
if result.plan is None:
    sys.exit(1)

info = write_artifact(load_model(model), result.plan, f"{out}/artifact")
print(f"artifact: {info.path}, {info.weights_file_bytes} bytes of weights on disk")

report = audit(f"{out}/artifact", split="heldout", mode="free")
print(f"held-out audit (free-running): satisfied={report.satisfied} pass_rate={report.pass_rate:.2f}")
sys.exit(0 if report.satisfied else 1)
