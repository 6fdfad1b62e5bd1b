"""A GGUF model's first load (de-quantised once into the cache), with and without
formats.gguf.quick_gguf_parsing, side by side in one run.

    PYTHONPATH=$PWD python benchmarks/bench_load.py [--model smollm2-135m] [--repeats 2]

Each load starts from an empty cache directory of its own, in a fresh process (imports are
not timed: the modules are imported before the clock starts), alternating the two ways
`--repeats` times; the cached safetensors files of the two are compared byte for byte.
Results: benchmarks/results/bench_load.json / .csv, with load averages at start and end.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, table  # noqa: E402

CHILD = """
import contextlib, json, os, sys, time
import toggle.formats.gguf as g
from toggle.load import load_model
if sys.argv[2] == "before":
    g.quick_gguf_parsing = contextlib.nullcontext  # gguf's reader and transformers' name maps as they come
start = time.perf_counter()
load_model(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="bench_load")
    args = ap.parse_args()
    run = Run(args.name)
    rows, seconds, caches = [], {"before": [], "now": []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for way in ("before", "now"):
                cache = Path(tmp) / f"{way}{i}"
                env = {**os.environ, "TOGGLE_CACHE_DIR": str(cache)}
                out = subprocess.run([sys.executable, "-c", CHILD, args.model, way], env=env, check=True,
                                     capture_output=True, text=True)
                seconds[way].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
                caches[way] = cache
                print(f"# {way} #{i + 1}: {seconds[way][-1]:.1f} s", flush=True)
        files = sorted(p.relative_to(caches["now"]) for p in caches["now"].rglob("*") if p.is_file())
        same = all(filecmp.cmp(caches["now"] / f, caches["before"] / f, shallow=False) for f in files)
    for way, what in (("before", "gguf's reader on numpy.memmap, a name map per module (before)"),
                      ("now", "quick_gguf_parsing (now)")):
        rows.append({"what": what, "seconds": min(seconds[way]), "all_seconds": seconds[way]})
    extra = {"ratio": rows[1]["seconds"] / rows[0]["seconds"], "same_cached_files": same, "files": len(files)}
    print(table(rows, [("what", "", ""), ("seconds", "s (best)", ".1f"), ("all_seconds", "each", "")]))
    print(f"# now / before: {extra['ratio']:.2f}; the {len(files)} cached files identical: {same}")
    run.finish(rows, extra)


if __name__ == "__main__":
    main()
