"""The teacher-forced pass (trace.score_paths) at several padded-token sizes per forward, side by side.

    PYTHONPATH=$PWD python benchmarks/bench_score_batch.py [--split heldout] [--every 1] [--sizes 512,1024,2048,4096]
        [--repeats 2]

What every candidate evaluation does (trials, profiling's probes, the held-out audit): a pass of the
model over each prompt and its base path, the default specs' outputs (log-probabilities on the
step positions, pooled attention, hidden states, the gold-answer pass). Here the base model's own
weights, every `--every`-th prompt of the split. Sizes run interleaved, once per repeat; the minimum
counts. Each row prints the seconds, the ratio to the first size and the largest difference of the
log-probabilities from the first size's (float rounding: other batch shapes).
Results: benchmarks/results/NAME.json / .csv (--name, default bench_score_batch).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, table  # noqa: E402

from toggle.load import load_model  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.specs import load_specs  # noqa: E402
from toggle.trace import build_trace  # noqa: E402
from toggle.trace.prefix import shared_prefix  # noqa: E402
from toggle.trace.score import _batches, _Sequence, _vocabulary, score_paths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default=None, help="prompt suite (default: the shipped one)")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--every", type=int, default=1, help="every n-th prompt of the split")
    ap.add_argument("--sizes", default="512,1024,2048,4096", help="padded tokens per forward at most")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="bench_score_batch", help="results file name under benchmarks/results/")
    args = ap.parse_args()
    run = Run(args.name)
    sizes = [int(s) for s in args.sizes.split(",")]
    loaded = load_model(args.model)
    specs = load_specs()
    trace = build_trace(loaded, load_prompts(args.prompts), specs, split=args.split)
    paths = trace.paths[::args.every]
    seqs = [_Sequence(i, list(p.prompt_ids) + list(p.tokens[:-1]), len(p.tokens), list(p.tokens), p.content)
            for i, p in enumerate(paths)]
    shared = shared_prefix([s.ids for s in seqs], min(len(s.ids) - s.n for s in seqs))  # as score_paths runs once
    print(f"{len(paths)} {args.split} prompts, {sum(len(s.ids) for s in seqs)} tokens in the step pass")
    seconds: dict[int, list[float]] = {s: [] for s in sizes}
    outputs = {}
    for r in range(args.repeats):
        for size in sizes:
            start = time.perf_counter()
            outputs[size] = score_paths(loaded.model, paths, specs.needs, trace.options, batch_tokens=size)
            seconds[size].append(time.perf_counter() - start)
            print(f"  repeat {r + 1}, {size} tokens: {seconds[size][-1]:.1f} s", flush=True)
    first = sizes[0]
    rows = []
    for size in sizes:
        batches = list(_batches(seqs, size, shared, _vocabulary(loaded.model)))
        rows.append({"batch_tokens": size, "forwards": len(batches),
                     "largest_rows": max(len(b) for b in batches),
                     "seconds": round(min(seconds[size]), 2), "ratio": min(seconds[size]) / min(seconds[first]),
                     "max_logprob_difference": float((outputs[size].logprobs - outputs[first].logprobs).abs().max())})
    print(table(rows, [("batch_tokens", "padded tokens per forward", "d"), ("forwards", "step-pass forwards", "d"),
                       ("largest_rows", "most rows", "d"), ("seconds", "seconds", ".1f"), ("ratio", "vs first", ".2f"),
                       ("max_logprob_difference", "largest log-prob difference", ".1e")]))
    run.finish(rows, {"prompts": len(paths), "split": args.split, "every": args.every, "repeats": args.repeats})


if __name__ == "__main__":
    main()
