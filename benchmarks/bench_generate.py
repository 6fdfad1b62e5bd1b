"""Greedy generation of a split's base paths at several batch shapes, side by side in one run.

    PYTHONPATH=$PWD python benchmarks/bench_generate.py [--split heldout] [--batches 32,64] [--caps 0,2048,4096,8192]
        [--repeats 1] [--recorded]

What the search does once per run for the held-out check (and a free-running audit does for
the base and the candidate): trace.generate_paths over every prompt of the split. Rows are
left-padded to the longest prompt of their batch, so the rows of each setting print the
padded prompt tokens, the seconds, the ratio to the first setting and whether the tokens are
identical to the first setting's. A setting is a row count (--batches) and a cap; a cap of 0 means
no token cap (batches of that many rows only, what main did before the cap). Settings run
interleaved, once per repeat; the minimum counts. --recorded: generation that also records what the
default specs read at every step (trace.record, how the base trace of a split is built).
Results: benchmarks/results/NAME.json / .csv (--name, default bench_generate).
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
from toggle.trace import GenerationSettings, encode_suite, generate_paths  # noqa: E402
from toggle.trace.generate import GENERATE_BATCH, generation_batches  # noqa: E402
from toggle.trace.record import generate_recorded  # noqa: E402
from toggle.trace.score import resolve_options  # noqa: E402

NO_CAP = 10**9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default=None, help="prompt suite (default: the shipped one)")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--batches", default=str(GENERATE_BATCH), help="rows per generate() call at most, one setting each")
    ap.add_argument("--caps", default="0,2048,4096,8192", help="padded prompt tokens per call at most (0: none)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--recorded", action="store_true", help="record the default specs' outputs while generating")
    ap.add_argument("--name", default="bench_generate", help="results file name under benchmarks/results/")
    args = ap.parse_args()
    run = Run(args.name)
    caps = [int(c) or NO_CAP for c in args.caps.split(",")]
    settings_list = [(int(b), cap) for b in args.batches.split(",") for cap in caps]
    loaded = load_model(args.model)
    specs = load_specs()
    encoded = encode_suite(load_prompts(args.prompts).split(args.split), loaded.tokenizer)
    settings = GenerationSettings(steps=specs.steps_needed or 32)
    lengths = [len(e.ids) for e in encoded]
    print(f"{len(encoded)} {args.split} prompts, {sum(lengths)} prompt tokens, {settings.steps} steps")
    seconds: dict[tuple, list[float]] = {s: [] for s in settings_list}
    tokens: dict[tuple, list] = {}
    for r in range(args.repeats):
        for rows_at_most, cap in settings_list:
            start = time.perf_counter()
            if args.recorded:
                tokens[rows_at_most, cap], _ = generate_recorded(
                    loaded.model, loaded.tokenizer, encoded, settings, specs.needs,
                    resolve_options(loaded.model, specs.options), batch_size=rows_at_most, batch_tokens=cap)
            else:
                tokens[rows_at_most, cap] = generate_paths(loaded.model, loaded.tokenizer, encoded, settings,
                                                           batch_size=rows_at_most, batch_tokens=cap)
            seconds[rows_at_most, cap].append(time.perf_counter() - start)
            print(f"  repeat {r + 1}, {rows_at_most} rows, cap {cap if cap != NO_CAP else 'none'}: "
                  f"{seconds[rows_at_most, cap][-1]:.1f} s", flush=True)
    first = settings_list[0]
    rows = []
    for rows_at_most, cap in settings_list:
        key = (rows_at_most, cap)
        batches = generation_batches(lengths, rows_at_most, cap)
        rows.append({"rows": rows_at_most, "cap": None if cap == NO_CAP else cap, "batches": len(batches),
                     "padded_prompt_tokens": sum(len(b) * max(lengths[i] for i in b) for b in batches),
                     "seconds": round(min(seconds[key]), 2), "ratio": min(seconds[key]) / min(seconds[first]),
                     "same_tokens": tokens[key] == tokens[first],
                     "differing_prompts": sum(a != b for a, b in zip(tokens[key], tokens[first]))})
    print(table(rows, [("rows", "rows", "d"), ("cap", "token cap", ""), ("batches", "calls", "d"),
                       ("padded_prompt_tokens", "padded prompt tokens", ",d"),
                       ("seconds", "seconds", ".1f"), ("ratio", "vs first", ".2f"), ("same_tokens", "same tokens", ""),
                       ("differing_prompts", "prompts differing", "d")]))
    run.finish(rows, {"prompts": len(encoded), "split": args.split, "prompt_tokens": sum(lengths),
                      "steps": settings.steps, "batches": args.batches, "repeats": args.repeats,
                      "recorded": args.recorded})


if __name__ == "__main__":
    main()
