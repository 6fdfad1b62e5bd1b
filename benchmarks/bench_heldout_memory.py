"""Memory of the search's held-out stage: the process's resident memory while the base model
traces the 283 held-out prompts and a plan is audited on them (toggle.api.heldout_check).

    TOGGLE_CACHE_DIR=$(mktemp -d) PYTHONPATH=$PWD python benchmarks/bench_heldout_memory.py [--plan plan.yaml]

With an empty cache the base model generates its held-out paths (the first run of a search);
run it twice to see a cached trace. The plan defaults to every block at 4 bits, group 32. The
resident memory is sampled every 0.1 s and reported per step of the stage (the most recent of
the marked functions running when the sample was taken), with the process's peak
(ru_maxrss). To compare revisions, run this file with PYTHONPATH pointing at each checkout.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run  # noqa: E402

import toggle  # noqa: E402
import toggle.audit.core as audit_core  # noqa: E402
import toggle.evaluate as evaluate  # noqa: E402
import toggle.trace.build as build  # noqa: E402
from toggle.api import calibration_stats, heldout_check  # noqa: E402
from toggle.compress.apply import PlanApplier  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.rundir import RunDir  # noqa: E402
from toggle.search.profile import load_profile  # noqa: E402
from toggle.specs.syntax import load_specs  # noqa: E402

# (module, function) marked: a sample taken while one runs is counted against it
MARKED = [(build, "generate_recorded"), (build, "score_paths"), (build, "check_outputs"), (audit_core, "build_trace"),
          (evaluate, "score_paths"), (evaluate, "compute_signals"), (audit_core, "_fill_texts")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", help="plan.yaml to audit (default: every block 4-bit, group 32)")
    args = ap.parse_args()
    run = Run("bench_heldout_memory")
    print(f"# toggle from {Path(toggle.__file__).parent}", flush=True)
    process, samples, stage = psutil.Process(), [], ["set-up"]

    def sample():
        while True:
            samples.append((process.memory_info().rss, stage[-1]))
            time.sleep(0.1)

    for module, name in MARKED:
        original = getattr(module, name)

        def marked(*a, _original=original, _name=name, **k):
            stage.append(_name)
            try:
                return _original(*a, **k)
            finally:
                stage.pop()
        setattr(module, name, marked)
    threading.Thread(target=sample, daemon=True).start()

    loaded = load_model("smollm2-135m", device="cpu")
    refs = compressible_modules(loaded.model)
    specs, suite, profile = load_specs(None, {}, 0.0), load_prompts(None), load_profile("default")
    trace = build.build_trace(loaded, suite, specs, split="calibration")
    with tempfile.TemporaryDirectory() as tmp:
        stats, _ = calibration_stats(loaded, refs, trace, profile.needs_stats, RunDir(tmp))
        applier = PlanApplier(loaded.model, refs, stats)
        plan = (Plan.load(args.plan) if args.plan else
                Plan.uniform(loaded.model_id, [r.name for r in refs if r.block is not None], ModuleSetting(bits=4),
                             Methods(group_size=32)))
        time.sleep(0.3)
        before = process.memory_info().rss
        stage.append("heldout_check (other)")
        t = time.perf_counter()
        out = heldout_check(plan, loaded, specs, suite, applier, RunDir(tmp))
        seconds = time.perf_counter() - t
        stage.pop()
        time.sleep(0.3)
    peaks: dict[str, int] = {}
    for rss, name in samples:
        peaks[name] = max(peaks.get(name, 0), rss)
    rows = [{"step": name, "peak_rss_gb": round(rss / 1e9, 2)} for name, rss in peaks.items()]
    for row in rows:
        print(f"{row['step']:24s} peak {row['peak_rss_gb']:.2f} GB")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"held-out stage {seconds:.1f} s, pass rate {out.get('pass_rate')} on {out.get('prompts')} prompts; "
          f"resident {before / 1e9:.2f} GB before it, process peak {maxrss / 1e9:.2f} GB")
    run.finish(rows, {"seconds": round(seconds, 1), "rss_before_gb": round(before / 1e9, 2),
                      "peak_gb": round(maxrss / 1e9, 2), "toggle": str(Path(toggle.__file__).parent),
                      "plan": args.plan or "every block 4-bit g32"})


if __name__ == "__main__":
    main()
