"""How the thresholds of specs/assistant/ were chosen: every property of the set, scored by
toggle's own evaluation (rtamt on the real signals) on the built-in model at several uniform
quantisation levels, for a sweep of each property's constant.

    PYTHONPATH=$PWD python benchmarks/calibrate_assistant.py [--split calibration] [--steps 32]

A level is every block matrix at one bit-width and group size (round-to-nearest, asymmetric
below 8 bits as in the default profile), the embedding kept. For each property and value of
its constant it prints, per level, how many prompts pass and the suite's robustness (the
minimum, or the share's order statistic). A constant "means something" when the base model and
8-bit pass every prompt, a level just below the model's exact 4-bit g32 passes most, and 3-bit
fails many: it separates plans a user would accept from plans that break behaviour.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from toggle.compress.apply import PlanApplier
from toggle.evaluate import _per_prompt
from toggle.load import load_model
from toggle.plan import Methods, ModuleSetting, Plan
from toggle.prompts import load_prompts
from toggle.signals import TOKEN_SIGNALS, StepTokens, compute_signals
from toggle.specs.semantics import over_suite
from toggle.specs.syntax import load_specs
from toggle.trace import build_trace, end_tokens, score_paths

ROOT = Path(__file__).resolve().parent.parent
ASSISTANT = ROOT / "specs" / "assistant"
# (file, constant, values swept); the shipped value is among them
SWEEPS = [
    ("confident_agreement.stl", "c", [0.5, 0.6, 0.7, 0.8, 0.9]),
    ("recovery.stl", "e", [0.05, 0.1, 0.15, 0.2, 0.3]),
    ("coherence_95.stl", "eps", [0.05, 0.1, 0.15]),
    ("stops.stl", "c", [0.3, 0.5, 0.7]),
]
LEVELS = [("base", None), ("8-bit g32", (8, 32)), ("4-bit g128", (4, 128)), ("4-bit g64", (4, 64)),
          ("3-bit g32", (3, 32)), ("3-bit g128", (3, 128))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="calibration", choices=["calibration", "heldout"])
    ap.add_argument("--prompts", default=None, help="prompt suite (default: the shipped one)")
    ap.add_argument("--levels", nargs="+", default=None, help=f"levels to score (default all: "
                    f"{', '.join(label for label, _ in LEVELS)})")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    spec_sets = {}
    for file, const, values in SWEEPS:
        for v in values:
            overrides = {const: v} if const else None
            spec_sets[(file, v)] = load_specs([ASSISTANT / file], overrides=overrides)
    everything = load_specs([ASSISTANT])
    loaded = load_model("smollm2-135m")
    suite = load_prompts(args.prompts)
    t0 = time.perf_counter()
    trace = build_trace(loaded, suite, everything, split=args.split)
    print(f"trace: {len(trace.paths)} {args.split} prompts, {sum(len(p.tokens) for p in trace.paths)} steps, "
          f"{time.perf_counter() - t0:.1f} s")
    eos = end_tokens(loaded.model, loaded.tokenizer)
    tokens = StepTokens.of(trace.paths, eos)
    applier = PlanApplier(loaded.model)
    blocks = [r.name for r in applier.refs if r.part not in ("embed", "head")]
    methods = Methods(quantizer="rtn", group_size=32, symmetric="auto")
    signals = sorted(everything.signals)

    levels = [(label, level) for label, level in LEVELS if args.levels is None or label in args.levels]
    rows: dict[tuple, dict[str, tuple[int, int, float]]] = {}
    for label, level in levels:
        start = time.perf_counter()
        if level is None:
            applier.restore()
        else:
            bits, group = level
            applier.apply(Plan.uniform(loaded.model_id, blocks, ModuleSetting(bits=bits, group_size=group), methods))
        cand = score_paths(loaded.model, trace.paths, everything.needs, trace.options, batch_tokens=trace.batch_tokens)
        values = compute_signals(signals, cand, trace.base, options=everything.options,
                                 tokens=tokens if TOKEN_SIGNALS.intersection(signals) else None)
        step_traces, answer_traces = _per_prompt(values, trace)
        for key, specs in spec_sets.items():
            per_prompt = specs.evaluate(step_traces, answer_traces)
            for prop in specs.properties:
                vals = list(per_prompt[prop.name].values())
                rows.setdefault((key, prop.name), {})[label] = (
                    sum(v >= 0 for v in vals), len(vals), over_suite(prop, vals, prompts=len(vals)))
        print(f"{label}: scored in {time.perf_counter() - start:.1f} s", flush=True)
    applier.restore()

    labels = [label for label, _ in levels]
    print(f"\nprompts passing / {len(trace.paths)} and suite robustness, {args.split} split")
    print(f"{'property':<24} {'constant':<9} " + " ".join(f"{lab:>17}" for lab in labels))
    for (key, name), by_level in rows.items():
        file, v = key
        const = next((c for f, c, _ in SWEEPS if f == file), None)
        shown = f"{const}={v}" if const else "-"
        cells = " ".join(f"{by_level[lab][0]:>4}/{by_level[lab][1]:<3} {by_level[lab][2]:+8.4f}" for lab in labels)
        print(f"{name:<24} {shown:<9} {cells}")


if __name__ == "__main__":
    main()
