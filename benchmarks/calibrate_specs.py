"""How the thresholds of specs/*.stl were chosen: the signals of the built-in model under
uniform round-to-nearest quantisation (a quick per-group RTN from tests/appliers.py), per
prompt, for several signal options.

    PYTHONPATH=$PWD python benchmarks/calibrate_specs.py [--prompts FILE] [--bits 8 4 3]

For every signal it prints, per quantisation level, the per-prompt worst value over the
first `--steps` steps (max for divergences, min for similarities and ratios), summarised
over the calibration prompts as min / median / max. A threshold "means something" when the
unmodified model (value exact: 0 or 1) and 8-bit pass with margin and 3-bit clearly fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from appliers import RTNApplier  # noqa: E402

from toggle.load import load_model  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.signals import SIGNALS, SignalOptions, compute_signals  # noqa: E402
from toggle.trace import build_trace, resolve_options, score_paths  # noqa: E402

WORST_IS_MAX = {"jsd", "kl", "entropy_delta"}


def worst_per_prompt(values: np.ndarray, counts, name: str, steps: int) -> np.ndarray:
    out, at = [], 0
    for n in counts:
        v = values[at:at + n][:steps]
        at += n
        if n == 0:  # no gold answer on this prompt
            continue
        if name == "entropy_delta":
            v = np.abs(v)
        out.append(v.max() if name in WORST_IS_MAX else v.min())
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--embed", action="store_true", help="also quantise the (tied) embedding")
    ap.add_argument("--hidden-layers", type=int, nargs="+", default=[10, 20, -1])
    ap.add_argument("--attn", nargs="+", default=["all:32", "20-29:32", "0-9:32", "all:16", "all:64"],
                    help="attention options as LAYERS:SPAN, LAYERS = all or A-B")
    args = ap.parse_args()
    torch.manual_seed(0)

    loaded = load_model("smollm2-135m")
    suite = load_prompts(args.prompts)
    t0 = time.perf_counter()
    trace = build_trace(loaded, suite, steps=args.steps, needs={"logprobs", "gold"})
    print(f"trace: {len(trace.paths)} calibration prompts, steps {[len(p.tokens) for p in trace.paths]}, "
          f"{time.perf_counter() - t0:.1f} s")
    applier = RTNApplier(loaded.model)
    names = [n for n, r in applier.refs.items() if args.embed or r.part not in ("embed", "head")]
    plans = {b: Plan.uniform(loaded.model_id, names, ModuleSetting(bits=b), Methods(group_size=args.group_size))
             for b in args.bits}
    option_sets = [("logits", SignalOptions(), {"logprobs", "gold"})]
    for layer in args.hidden_layers:
        option_sets.append((f"hidden@{layer}", SignalOptions(hidden_layer=layer), {"hidden"}))
    for spec in args.attn:
        layers, span = spec.split(":")
        chosen = None if layers == "all" else tuple(range(int(layers.split("-")[0]), int(layers.split("-")[1]) + 1))
        option_sets.append((f"attn@{spec}", SignalOptions(attn_layers=chosen, attn_span=int(span)), {"attention"}))

    counts = [len(p.tokens) for p in trace.paths]
    answers = [len(p.answer) if p.answer else 0 for p in trace.paths]
    for label, options, needs in option_sets:
        resolved = resolve_options(loaded.model, options)
        applier.restore()
        base = score_paths(loaded.model, trace.paths, needs, resolved)
        signals = [s for s, sig in SIGNALS.items() if sig.needs in needs]
        print(f"\n== {label}  (per-prompt worst over steps 0..{args.steps - 1}; min / median / max over prompts)")
        for bits, plan in plans.items():
            applier.apply(plan)
            start = time.perf_counter()
            cand = score_paths(loaded.model, trace.paths, needs, resolved)
            values = compute_signals(signals, cand, base)
            elapsed = time.perf_counter() - start
            for s in signals:
                per = worst_per_prompt(values[s], answers if SIGNALS[s].axis == "answer" else counts, s, args.steps)
                per = per[~np.isnan(per)] if per.size else per
                if per.size == 0:
                    continue
                print(f"  {bits}-bit {s:>14}: {per.min():9.4f} {np.median(per):9.4f} {per.max():9.4f}   "
                      f"(mean over steps {values[s].mean():.4f})")
            print(f"  {bits}-bit pass {elapsed:.1f} s")
        applier.restore()


if __name__ == "__main__":
    main()
