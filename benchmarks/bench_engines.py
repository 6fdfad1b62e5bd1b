"""Issue 14: the same GGUF files of the built-in model audited by llama.cpp (`--engine llama.cpp`)
and by torch, side by side in one run: per file, prompts on which every property holds under each
engine, each property's minimum, the next-token JSD between the engines, and the time each took.

    PYTHONPATH=$PWD python benchmarks/bench_engines.py [--split heldout] [--out DIR]

Files: the shipped Q4_1 file (what the de-quantised float weights came from), llama-quantize's
Q4_0 of it (--allow-requantize; not exact), and toggle's ggml K-quant file (every block 4-bit:
Q4_K on the MLP down projections, llama.cpp's fallback Q5_0 elsewhere; embedding Q8_0; importance
matrix from the calibration prompts). Specs: the default ones (hidden/attention signals come from
torch under both engines, llama.cpp does not expose them).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, table  # noqa: E402

from toggle import api, llama_cpp  # noqa: E402
from toggle.compress import collect_stats  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.modules import compressible_modules  # noqa: E402
from toggle.plan import Methods, ModuleSetting, Plan  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402


def files(out: Path) -> dict[str, Path]:
    lm = load_model("smollm2-135m")
    shipped = Path(lm.source_path)
    made = {"shipped Q4_1": shipped}
    q40 = out / "Q4_0.gguf"
    if not q40.exists():
        subprocess.run([str(llama_cpp.tool("llama-quantize")), "--allow-requantize", str(shipped), str(q40), "Q4_0", "2"],
                       check=True, capture_output=True)
    made["llama-quantize Q4_0 (requantised)"] = q40
    kq = out / "toggle-ggml-4.gguf"
    if not kq.exists():
        refs = compressible_modules(lm.model)
        seqs = [torch.tensor(lm.tokenizer(p.text).input_ids) for p in load_prompts(None).split("calibration")]
        stats = collect_stats(lm.model, seqs, refs=refs)
        names = [r.name for r in refs]
        plan = Plan.uniform(lm.model_id, names, ModuleSetting(bits=4), Methods(quantizer="ggml"))
        plan = plan.with_setting(names[0], ModuleSetting(bits=8, quantizer="ggml"))
        api.write_artifact(lm, plan, kq, "gguf", stats=stats)
    made["toggle ggml 4-bit, Q8_0 embedding"] = kq
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="heldout", choices=["heldout", "calibration"])
    ap.add_argument("--out", default="/tmp/toggle-bench-engines")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    run = Run("bench_engines", threads=args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, path in files(out).items():
        result = api.audit(path, base="smollm2-135m", split=args.split, engine="llama.cpp", threads=args.threads)
        cross = result.cross_check
        row = {"file": label, "bytes": path.stat().st_size, "prompts": len(result.prompts),
               "llama_cpp_pass": sum(p.satisfied for p in result.prompts),
               "torch_pass": round(cross["pass_rate"] * len(result.prompts)),
               "jsd_mean": cross["jsd_between_engines"]["mean"], "jsd_max": cross["jsd_between_engines"]["max"],
               "llama_cpp_s": result.timings["evaluate"], "torch_s": result.timings["torch_cross_check"]}
        for name, p in result.properties.items():
            row[f"{name}_min_llama_cpp"] = p.min
            row[f"{name}_min_torch"] = cross["properties"][name]["min"]
            row[f"{name}_holds_llama_cpp"] = p.holds
            row[f"{name}_holds_torch"] = cross["properties"][name]["holds"]
        rows.append(row)
        run.finish(rows, final=False)
        print(f"{label}: llama.cpp {row['llama_cpp_pass']}/{row['prompts']}, torch {row['torch_pass']}/{row['prompts']}, "
              f"JSD between engines mean {row['jsd_mean']:.4f} max {row['jsd_max']:.4f}", flush=True)
    print(table(rows, [("file", "file", ""), ("bytes", "bytes", ","), ("llama_cpp_pass", "all hold: llama.cpp", "d"),
                       ("torch_pass", "all hold: torch", "d"), ("coherence_min_llama_cpp", "coherence min llama.cpp", "+.4f"),
                       ("coherence_min_torch", "coherence min torch", "+.4f"), ("jsd_mean", "JSD engines mean", ".4f"),
                       ("jsd_max", "JSD engines max", ".4f"), ("llama_cpp_s", "llama.cpp audit s (internal signals by torch)", ".1f"),
                       ("torch_s", "torch s (incl. JSD)", ".1f")]))
    run.finish(rows, extra={"split": args.split})


if __name__ == "__main__":
    main()
