"""Write real artifacts for a few plans on the built-in model and tabulate their sizes.

    PYTHONPATH=. python benchmarks/artifact_table.py [--out /tmp/toggle-artifacts]

For each plan: accounted bytes (CostModel), tensor bytes on disk and the weights file size,
FLOPs per token at context 1024, the time to apply the plan (first time, computing the
per-module results; and again with those cached), and the time to write the artifact.
The activation-aware plan collects calibration statistics over a few built-in paragraphs.
"""
from __future__ import annotations

from functools import partial

import argparse
import shutil
import time
from pathlib import Path

from toggle.compress import collect_stats
from toggle.compress.apply import PlanApplier
from toggle.cost import CostModel
from toggle.api import write_artifact
from toggle.load import load_model
from toggle.modules import compressible_modules
from toggle.plan import Methods, ModuleSetting, Plan

write_gguf = partial(write_artifact, fmt="gguf")

CALIBRATION = [
    "The capital of France is Paris, a city known for its museums, its cafes and the river Seine.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen.",
    "Once upon a time, a young fox wandered far from its den and discovered a hidden valley of flowers.",
    "To solve 3x + 5 = 20, subtract 5 from both sides to get 3x = 15, then divide by 3: x = 5.",
    "The French Revolution began in 1789 and reshaped the political landscape of Europe for a century.",
    "Machine learning models learn patterns from data; overfitting happens when they memorise noise.",
    "Water boils at 100 degrees Celsius at sea level, but at lower temperatures on high mountains.",
]


def plans(model_id, refs):
    names = [r.name for r in refs]
    embed = names[0]
    mixed = {}
    for r in refs:
        if r.part == "embed":
            mixed[r.name] = ModuleSetting(bits=6)
        elif r.part == "attn":
            mixed[r.name] = ModuleSetting(bits=4, sparsity=0.25)
        elif r.block is not None and 10 <= r.block < 20 and r.component != "mlp.down_proj":
            mixed[r.name] = ModuleSetting(bits=8, rank_ratio=0.25)
        else:
            mixed[r.name] = ModuleSetting(bits=4, sparsity=0.5)
    q4 = {n: ModuleSetting(bits=4) for n in names}
    q4[embed] = ModuleSetting(bits=8)
    return [
        ("uniform 8-bit (sym, g128)", Plan(model_id, {n: ModuleSetting(bits=8) for n in names},
                                           Methods(group_size=128, symmetric=True)), "toggle"),
        ("uniform 4-bit (asym, g128)", Plan(model_id, {n: ModuleSetting(bits=4) for n in names},
                                            Methods(group_size=128)), "toggle"),
        ("mixed: wanda 25-50% + 4-bit, asvd r0.25 + 8-bit, awq", Plan(model_id, mixed, Methods(
            quantizer="awq", group_size=128, pruner="wanda", lowrank="asvd", symmetric=True)), "toggle"),
        ("GGUF Q4_0 + Q8_0 embedding", Plan(model_id, q4, Methods(group_size=32, symmetric=True)), "gguf"),
        ("same plan, toggle format", Plan(model_id, q4, Methods(group_size=32, symmetric=True)), "toggle"),
        ("GGUF Q8_0", Plan(model_id, {n: ModuleSetting(bits=8) for n in names},
                           Methods(group_size=32, symmetric=True)), "gguf"),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="/tmp/toggle-artifacts")
    args = parser.parse_args()
    out = Path(args.out)
    lm = load_model(args.model)
    refs = compressible_modules(lm.model)
    start = time.perf_counter()
    ids = [lm.tokenizer(t, return_tensors="pt").input_ids[0] for t in CALIBRATION]
    stats = collect_stats(lm.model, ids, fingerprint=lm.fingerprint)
    print(f"calibration statistics: {stats.n_tokens} tokens, {time.perf_counter() - start:.1f} s, "
          f"{stats.nbytes / 1e6:.0f} MB")
    applier = PlanApplier(lm.model, refs, stats=stats)
    cost_16 = CostModel(lm.model, refs).base16_bytes
    rows = []
    for i, (label, plan, fmt) in enumerate(plans(lm.model_id, refs)):
        t0 = time.perf_counter()
        applier.apply(plan)
        first = time.perf_counter() - t0
        applier.restore()
        applier._lru.clear()
        applier._lru_bytes = 0
        t0 = time.perf_counter()
        applier.apply(plan)
        again = time.perf_counter() - t0
        applier.restore()
        t0 = time.perf_counter()
        if fmt == "gguf":
            info = write_gguf(lm, plan, out / f"plan{i}.gguf", applier=applier)
        else:
            info = write_artifact(lm, plan, out / f"plan{i}", applier=applier)
        write = time.perf_counter() - t0
        c = info.cost
        rows.append((label, fmt, c.bytes, info.tensor_bytes_on_disk, info.weights_file_bytes, c.flops_per_token,
                     c.size_reduction, c.flops_reduction, first, again, write))
        print(f"done: {label} ({fmt})", flush=True)
    print(f"\n16-bit dense reference: {cost_16:,} bytes; dense FLOPs/token at context 1024: "
          f"{CostModel(lm.model, refs).base_flops_per_token:,}\n")
    print("| plan | format | accounted bytes | tensor bytes on disk | weights file bytes | FLOPs/token | "
          "size reduction | FLOP reduction | apply, first (s) | apply, cached (s) | write (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:,} | {r[4]:,} | {r[5]:,} | {100 * r[6]:.1f}% | {r[7]:.2f}x | "
              f"{r[8]:.2f} | {r[9]:.2f} | {r[10]:.1f} |")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
