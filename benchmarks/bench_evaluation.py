"""Cost of evaluating one candidate, against a plain forward pass and against regeneration.

    PYTHONPATH=$PWD python benchmarks/bench_evaluation.py [--prompts FILE] [--repeats 5] [--model M --device cuda]

On the built-in model with the shipped specs and the calibration prompts, measured side by
side in one run (medians over --repeats, interleaved so load from other processes hits all
three alike):

  * evaluation: Evaluator.evaluate(plan) for uniform 4- and 5-bit plans of the blocks
    (alternating, PlanApplier with its cache warm: applying is a weight swap), i.e. apply + one
    teacher-forced pass (LM head only on the step positions, attention weights only in the
    pooled layers) + gold-answer pass + signals + rtamt;
  * plain forward: model(input_ids) over the same prompt + continuation tokens, same batches,
    logits at every position (what a user would write);
  * regeneration: greedy generation of the same continuations (trace.generate_paths, what the
    trace does once and a candidate never does), batched as the trace does it (8 prompts of
    similar length at a time), and one prompt at a time (transformers' generate per prompt:
    what a per-candidate regeneration, as in the TOGGLE reference code, costs).

Ratios are printed from the minimum and the median of the repeats. Targets (issue 3): evaluation / plain forward <= 1.5, evaluation / regeneration <= 0.25.

Peak memory: the process's peak resident set size (ru_maxrss) after loading, after the trace,
after the warm-up evaluations and at the end, against the model's fp32 size (parameters x 4
bytes); DESIGN.md: the base model, the caches and one working copy, never a copy per trial.
Results: benchmarks/results/bench_evaluation.json / .csv (with load averages at start and end).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run  # noqa: E402

from toggle.compress.apply import PlanApplier  # noqa: E402

from toggle.evaluate import Evaluator  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.specs import load_specs  # noqa: E402
from toggle.trace import _batches, _left_pad, _Sequence, build_trace, encode_suite, generate_paths  # noqa: E402


def plain_forward(model, trace) -> None:
    seqs = [_Sequence(i, list(p.prompt_ids) + list(p.tokens[:-1]), len(p.tokens), [], p.content)
            for i, p in enumerate(trace.paths)]
    with torch.no_grad():
        for batch in _batches(seqs, trace.batch_tokens):
            ids, mask, _ = _left_pad([s.ids for s in batch], 0, model.device)
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", default=None, help="prompt suite (default: the shipped one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    run = Run("bench_evaluation", args.device)
    peaks = {"start": peak_rss()}

    loaded = load_model(args.model, device=args.device)
    peaks["loaded"] = peak_rss()
    fp32 = 4 * sum(p.numel() for p in loaded.model.parameters())
    specs = load_specs()
    suite = load_prompts(args.prompts)
    trace = build_trace(loaded, suite, specs)
    peaks["trace"] = peak_rss()
    calib = suite.split("calibration")
    tokens = sum(len(p.prompt_ids) + len(p.tokens) - 1 for p in trace.paths)
    gold_tokens = sum(len(p.prompt_ids) + len(p.answer) - 1 for p in trace.paths if p.answer)
    print(f"{len(trace.paths)} calibration prompts, {tokens} tokens in prompt+continuation sequences "
          f"(+{gold_tokens} in gold-answer sequences), {sum(len(p.tokens) for p in trace.paths)} steps; "
          f"specs need {sorted(specs.needs)}; torch threads {torch.get_num_threads()}")
    print(f"trace cache: {sum(f.stat().st_size for f in trace.files) / 1e6:.1f} MB on disk "
          f"({', '.join(f.name for f in trace.files)})")

    applier = PlanApplier(loaded.model)
    blocks = [r.name for r in applier.refs if r.block is not None]
    methods = Methods(quantizer="rtn", group_size=32, symmetric="auto")  # the default search profile's
    plans = [Plan.uniform(loaded.model_id, blocks, ModuleSetting(bits=b), methods) for b in (4, 5)]
    evaluator = Evaluator(loaded, specs, trace, applier)
    for plan in plans:  # warm the applier's cache of quantised weights
        evaluator.evaluate(plan)
    peaks["warm evaluations"] = peak_rss()
    encoded = encode_suite(calib, loaded.tokenizer)

    times = {"evaluation": [], "plain forward": [], "regeneration batched": [], "regeneration per prompt": []}
    parts: dict[str, list[float]] = {}
    for r in range(args.repeats):
        start = time.perf_counter()
        result = evaluator.evaluate(plans[r % 2])
        times["evaluation"].append(time.perf_counter() - start)
        for k, v in result.timings.items():
            parts.setdefault(k, []).append(v)
        applier.restore()
        start = time.perf_counter()
        plain_forward(loaded.model, trace)
        times["plain forward"].append(time.perf_counter() - start)
        for label, batch in (("regeneration batched", 8), ("regeneration per prompt", 1)):
            start = time.perf_counter()
            generate_paths(loaded.model, loaded.tokenizer, encoded, trace.settings, batch_size=batch)
            times[label].append(time.perf_counter() - start)
        print(f"  repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        # A run stopped after some repeats keeps them (complete: false in the JSON).
        run.finish([{"repeat": i + 1, **{f"{k} s": round(v[i], 3) for k, v in times.items()}} for i in range(r + 1)],
                   {"repeats": r + 1, "fp32_bytes": fp32, "peak_rss_bytes": {**peaks, "so far": peak_rss()}},
                   final=False)

    print("evaluation breakdown (median s): " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in parts.items()))
    # Other processes only ever add time, so the minimum is the cleanest estimate on a shared
    # machine; the median is printed too.
    peaks["end"] = peak_rss()
    print(f"\npeak resident memory (ru_maxrss) vs the model's fp32 size {fp32 / 2**20:.0f} MiB: " + ", ".join(
        f"{k} {v / 2**20:.0f} MiB ({v / fp32:.2f}x)" for k, v in peaks.items()))
    print(f"applier caches: {', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in applier.cache_bytes.items())}")
    rows = []
    for stat in (min, statistics.median):
        best = {k: stat(v) for k, v in times.items()}
        print(f"\n{stat.__name__} seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()))
        ratio = best["evaluation"] / best["plain forward"]
        print(f"  evaluation / plain forward           = {ratio:.2f}   (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
        for label in ("regeneration batched", "regeneration per prompt"):
            ratio = best["evaluation"] / best[label]
            print(f"  evaluation / {label:<23} = {ratio:.2f}   (target <= 0.25: {'met' if ratio <= 0.25 else 'NOT met'})")
        rows.append({"statistic": stat.__name__, **{f"{k} s": round(v, 3) for k, v in best.items()},
                     "evaluation / plain forward": best["evaluation"] / best["plain forward"],
                     **{f"evaluation / {label}": best["evaluation"] / best[label]
                        for label in ("regeneration batched", "regeneration per prompt")}})
    run.finish(rows, {"repeats": args.repeats, "fp32_bytes": fp32, "peak_rss_bytes": peaks,
                      "peak_over_fp32": {k: v / fp32 for k, v in peaks.items()},
                      "applier_cache_bytes": applier.cache_bytes,
                      "evaluation_breakdown_median_s": {k: statistics.median(v) for k, v in parts.items()}})


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    main()
