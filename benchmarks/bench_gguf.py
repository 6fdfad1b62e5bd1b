"""Issue 14's comparison: toggle's searched GGUF files of the built-in model at three sizes against
llama.cpp's presets, each scored by llama.cpp itself and audited on the held-out prompts.

    PYTHONPATH=$PWD python benchmarks/bench_gguf.py [--budgets 86MB,91MB,96MB] [--trials 12] [--out DIR]
        [--profile gguf-mixed] [--presets Q8_0,Q6_K,...] [--splits calibration,heldout]
        [--engine torch|llama.cpp] [--name NAME]

toggle's files: `toggle search smollm2-135m --profile P --objective margin --budget B` (the most
robust plan of the profile's GGUF types that fits B; gguf-mixed: every legacy, K- and i-quant type
per block part, gguf-kquant: llama.cpp's K-quants and their fallbacks only), the file the search writes
(RUN/model), plus the exact
plan (every block Q4_1, embedding Q8_0: what the de-quantised weights came from). Presets:
llama-quantize from the F16 file of the de-quantised weights, without an importance matrix.
Per file: bytes on disk; llama-perplexity --kl-divergence against the F16 file (every 4th pydoc
topic, 7.8k tokens, -c 128): perplexity on those tokens (toggle's files tokenise as the source),
mean and 99th-percentile KLD, same top-1; llama-bench generation tokens/s (2 threads); and the
held-out audit (283 prompts, default specs, teacher mode in torch on the file's weights) for the
presets and toggle's files alike, and the same audit on the 30 calibration prompts (what a
search constrains): a file "satisfies the default specs" on a split when every property holds on
every prompt of it. When no plan of a budget satisfies the specs (the search then
writes no model), the search's most robust plan is written here, with the search's statistics.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kquant_kld import kld_base, kld_scores, run as run_tool  # noqa: E402
from common import Run, table  # noqa: E402

from toggle import api, llama_cpp  # noqa: E402
from toggle.compress import ActivationStats  # noqa: E402
from toggle.report.data import load_run  # noqa: E402
from toggle.report.points import plan_for  # noqa: E402
from toggle.rundir import STATS  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402

PRESETS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q4_0", "Q2_K")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="86MB,91MB,96MB")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--profile", default="gguf-mixed", help="the search profile of toggle's files (gguf-mixed, gguf-kquant)")
    ap.add_argument("--out", default="/tmp/toggle-bench-gguf")
    ap.add_argument("--presets", default=",".join(PRESETS), help="llama-quantize presets to score (comma-separated)")
    ap.add_argument("--splits", default="calibration,heldout", help="prompt splits every file is audited on")
    ap.add_argument("--name", default="bench_gguf", help="results file name under benchmarks/results/")
    ap.add_argument("--engine", default="torch", choices=("torch", "llama.cpp"),
                    help="what computes each file's outputs in the audits (llama.cpp: torch's figures beside)")
    args = ap.parse_args()
    bench = Run(args.name, threads=2)
    out = Path(args.out)
    lm = load_model("smollm2-135m")
    kld_base(lm, out)
    rows, searched = [], {}

    def add(row: dict) -> None:
        rows.append(row)
        bench.finish(rows, final=False)
        print(f"{row['file']}: {row['bytes']:,} B, KLD {row['kld_mean']}, "
              + ", ".join(f"{split} {row[f'{split}_pass']}/{row[f'{split}_prompts']}" for split in args.splits.split(",")),
              flush=True)

    files = {}
    for budget in args.budgets.split(","):
        run_dir = out / f"run-{budget}"
        fresh = not (run_dir / "summary.json").exists()
        run = None if fresh else load_run(run_dir)
        if fresh or run.summary.get("trials", 0) < args.trials or run.summary.get("interrupted"):
            api.search("smollm2-135m", budget, profile=args.profile, objective="margin", trials=args.trials,
                       out=run_dir, progress=False)
            run = load_run(run_dir)
        s = run.summary
        stats = ActivationStats.load(run_dir / STATS)  # the calibration prompts' statistics (imatrix)
        label = f"toggle search --objective margin --budget {budget} (trial {s['best_trial']})"
        # the search's own seconds only when this run did all of it (a resumed study's are the last part's)
        searched[label] = {"search_seconds": s["wall_seconds"] if fresh else None, "satisfied": s["satisfied"],
                           "calibration_min_margin": s["min_margin"]}
        if "artifact" in s:
            files[label] = run_dir / s["artifact"]["path"]
        else:  # no plan satisfies the specs: the search writes none, the most robust one is written here
            plan = plan_for(run, run.trial(s["best_trial"]))
            files[label] = out / f"toggle-margin-{budget}.gguf"
            api.write_artifact(lm, plan, files[label], "gguf", stats=stats)
    names = [r.name for r in compressible_modules(lm.model)]
    exact = Plan.uniform(lm.model_id, names, ModuleSetting(bits=4), Methods(quantizer="rtn", group_size=32, symmetric=False))
    exact = exact.with_setting(names[0], ModuleSetting(bits=8, quantizer="ggml"))  # Q8_0, needs the statistics
    files["toggle exact plan (Q4_1 blocks, Q8_0 embedding)"] = out / "toggle-exact.gguf"
    api.write_artifact(lm, exact, files["toggle exact plan (Q4_1 blocks, Q8_0 embedding)"], "gguf", stats=stats)
    for preset in [p for p in args.presets.split(",") if p]:
        files[f"{preset} preset"] = out / f"{preset}.gguf"
        if not files[f"{preset} preset"].exists():
            run_tool(llama_cpp.tool("llama-quantize"), out / "f16.gguf", files[f"{preset} preset"], preset, 2)
    for label, path in files.items():
        row = {"file": label, **kld_scores(path, out)}
        for split in args.splits.split(","):
            row.update(audited(path, split, args.engine))
        add({**row, **searched.get(label, {})})
    print(table(rows, [("file", "file", ""), ("bytes", "bytes", ","), ("ppl", "perplexity", ".2f"),
                       ("kld_mean", "mean KLD", ".4f"), ("kld_p99", "99% KLD", ".3f"),
                       ("same_top1_pct", "same top-1 %", ".1f"), ("gen_tok_s", "gen tok/s", ".0f"),
                       *[(f"{split}_{key}", f"{split} {head}", fmt) for split in args.splits.split(",")
                         for key, head, fmt in (("pass", "prompts passing", "d"), ("prompts", "of", "d"),
                                                ("min_margin", "min margin", "+.4f"))]]))
    bench.finish(rows, extra={"budgets": args.budgets, "trials": args.trials, "profile": args.profile, "presets": args.presets,
                              "splits": args.splits, "engine": args.engine})


def audited(path: Path, split: str, engine: str) -> dict:
    """The default specs' audit of one file on one split: prompts where every property holds, the
    smallest margin, and (engine llama.cpp) torch's count of the same file beside it."""
    audit = api.audit(path, base="smollm2-135m", split=split, engine=engine, threads=2)
    row = {f"{split}_pass": sum(p.satisfied for p in audit.prompts), f"{split}_prompts": len(audit.prompts),
           f"{split}_min_margin": min(p.min for p in audit.properties.values() if p.min is not None),
           f"{split}_satisfied": audit.satisfied}
    if audit.cross_check:
        row[f"{split}_torch_pass_rate"] = audit.cross_check.get("pass_rate")
    return row


if __name__ == "__main__":
    main()
