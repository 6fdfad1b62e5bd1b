"""Calibration statistics (every compressible module's input Gram matrix) one sequence per forward
against right-padded batches, side by side in one run.

    PYTHONPATH=$PWD python benchmarks/bench_stats.py [--split calibration] [--caps 0,2048,4096] [--repeats 2]

What `toggle search` does once per model and calibration trace when its profile has an
activation-aware method (GPTQ, AWQ, Wanda, ASVD, llama.cpp's importance matrix): the base model
over every calibration prompt and its greedy path (compress.calibrate.collect_stats). A cap is
the padded tokens per forward (0: one sequence at a time, what main did before). Settings run
interleaved, once per repeat; the minimum counts. Each row prints the seconds, the ratio to the
first setting and the largest difference of its Gram matrices from the first setting's, relative
to that matrix's largest entry. Results: benchmarks/results/NAME.json / .csv (--name, default
bench_stats).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, table  # noqa: E402

from toggle.compress.calibrate import collect_stats  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.specs import load_specs  # noqa: E402
from toggle.trace import build_trace  # noqa: E402
from toggle.trace.generate import generation_batches  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default=None, help="prompt suite (default: the shipped one)")
    ap.add_argument("--split", default="calibration")
    ap.add_argument("--caps", default="0,2048,4096", help="padded tokens per forward at most (0: one sequence each)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="bench_stats", help="results file name under benchmarks/results/")
    args = ap.parse_args()
    run = Run(args.name)
    caps = [int(c) for c in args.caps.split(",")]
    loaded = load_model(args.model)
    trace = build_trace(loaded, load_prompts(args.prompts), load_specs(), split=args.split)
    refs = compressible_modules(loaded.model)
    sequences = [torch.tensor(list(p.prompt_ids) + list(p.tokens)) for p in trace.paths]
    lengths = [len(s) for s in sequences]
    print(f"{len(sequences)} {args.split} sequences, {sum(lengths)} tokens")
    seconds: dict[int, list[float]] = {c: [] for c in caps}
    stats = {}
    for r in range(args.repeats):
        for cap in caps:
            start = time.perf_counter()
            stats[cap] = collect_stats(loaded.model, sequences, refs=refs, cache=False, batch_tokens=cap)
            seconds[cap].append(time.perf_counter() - start)
            print(f"  repeat {r + 1}, cap {cap}: {seconds[cap][-1]:.1f} s", flush=True)
    first = caps[0]
    rows = []
    for cap in caps:
        batches = generation_batches(lengths, len(lengths), cap)
        gap = max(float((stats[cap].grams[k] - g).abs().max() / g.abs().max()) for k, g in stats[first].grams.items())
        rows.append({"cap": cap, "forwards": len(batches),
                     "padded_tokens": sum(len(b) * max(lengths[i] for i in b) for b in batches),
                     "seconds": round(min(seconds[cap]), 2), "ratio": min(seconds[cap]) / min(seconds[first]),
                     "tokens_counted": stats[cap].n_tokens, "max_relative_gram_difference": gap})
    print(table(rows, [("cap", "token cap", "d"), ("forwards", "forwards", "d"), ("padded_tokens", "padded tokens", ",d"),
                       ("seconds", "seconds", ".1f"), ("ratio", "vs first", ".2f"),
                       ("tokens_counted", "tokens counted", ",d"),
                       ("max_relative_gram_difference", "largest Gram difference (relative)", ".1e")]))
    run.finish(rows, {"sequences": len(sequences), "split": args.split, "tokens": sum(lengths),
                      "repeats": args.repeats})


if __name__ == "__main__":
    main()
