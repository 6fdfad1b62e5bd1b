"""Issue 14: toggle's ggml / ggml_iq 4-bit GGUF files of the built-in model against llama.cpp's
presets, scored by llama.cpp itself (llama-perplexity --kl-divergence against an F16 base), with
llama-bench's generation speed of each file.

    PYTHONPATH=$PWD python benchmarks/bench_kquant_kld.py OUT_DIR

Base: F16 of the model's de-quantised weights (written by toggle). Presets: llama-quantize
from that F16 file without an importance matrix. toggle: quantizer ggml (and ggml_iq), every
block at 4 bits, embedding Q8_0, importance matrix from the 30 calibration prompts of
prompts/default.yaml. Text: every 4th Python documentation topic (pydoc_data), as in issue 14.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from toggle import llama_cpp
from toggle.api import write_artifact
from toggle.compress import collect_stats
from toggle.formats.gguf import source_metadata, write_gguf
from toggle.load import load_model
from toggle.modules import compressible_modules, stored_other_tensors
from toggle.plan import Methods, ModuleSetting, Plan
from toggle.prompts import load_prompts


# llama-perplexity's KL-divergence summary lines: PPL(Q), mean KLD, 99th percentile, same top-1 share
PATTERNS = (r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", r"Mean\s+KLD:\s*([0-9.]+)", r"99\.0%\s+KLD:\s*([0-9.]+)",
            r"Same top p:\s*([0-9.]+)")


def run(*args) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, errors="replace")
    if proc.returncode:
        sys.exit(f"{args[0]} failed: {proc.stderr[-1500:]}")
    return proc.stdout + proc.stderr


def f16_file(lm, out: Path) -> Path:
    """OUT/f16.gguf: the model's de-quantised weights at F16, the base every KLD is measured against."""
    path = out / "f16.gguf"
    if not path.exists():
        refs = compressible_modules(lm.model)
        tensors = {f"{r.name}.weight": ("F16", lm.model.get_submodule(r.name).weight.detach().half().numpy())
                   for r in refs}
        for n, t in stored_other_tensors(lm.model, refs).items():
            tensors.setdefault(n, ("F32", t.detach().float().numpy()))
        write_gguf(path, lm.model, lm.tokenizer, tensors, name="smollm2-f16", source=source_metadata(lm))
    return path


def kld_base(lm, out: Path) -> Path:
    """OUT/text.txt (every 4th pydoc topic), OUT/f16.gguf and llama-perplexity's saved logits of the
    F16 file on that text (OUT/base.kld), which every file's KLD is measured against."""
    from pydoc_data.topics import topics
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.txt").write_text("\n\n".join(topics[k] for k in sorted(topics)[::4]))
    f16, base = f16_file(lm, out), out / "base.kld"
    if not base.exists():
        run(llama_cpp.tool("llama-perplexity"), "-m", f16, "-f", out / "text.txt", "-c", 128, "-t", 2,
            "--kl-divergence-base", base)
    return base


def kld_scores(path: Path, out: Path) -> dict:
    """One file against OUT/base.kld: bytes, PPL(Q), mean and 99% KLD, same top-1 (%), and
    llama-bench's generation tokens/s on 2 threads."""
    log = run(llama_cpp.tool("llama-perplexity"), "-m", path, "-f", out / "text.txt", "-c", 128, "-t", 2,
              "--kl-divergence-base", out / "base.kld", "--kl-divergence")
    ppl, kld, p99, top1 = (float(m[1]) if m else None for m in (re.search(pat, log) for pat in PATTERNS))
    return {"bytes": path.stat().st_size, "ppl": ppl, "kld_mean": kld, "kld_p99": p99, "same_top1_pct": top1,
            "gen_tok_s": llama_cpp.bench(path, threads=2)["gen_tokens_per_s"]}


def main(out: Path) -> None:
    lm = load_model("smollm2-135m")
    refs = compressible_modules(lm.model)
    kld_base(lm, out)
    suite = load_prompts(None)
    seqs = [torch.tensor(lm.tokenizer(p.text).input_ids) for p in suite.split("calibration")]
    stats = collect_stats(lm.model, seqs, refs=refs)
    names = [r.name for r in refs]
    files = {}
    for quantizer in ("ggml", "ggml_iq"):
        plan = Plan.uniform(lm.model_id, names, ModuleSetting(bits=4), Methods(quantizer=quantizer))
        plan = plan.with_setting(names[0], ModuleSetting(bits=8, quantizer="ggml"))
        path = out / f"toggle-{quantizer}-4.gguf"
        write_artifact(lm, plan, path, "gguf", stats=stats)
        files[f"toggle {quantizer} 4-bit, Q8_0 embedding, imatrix"] = path
    quantize = llama_cpp.tool("llama-quantize")
    for preset in ("Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q4_0", "Q2_K"):
        path = out / f"{preset}.gguf"
        run(quantize, out / "f16.gguf", path, preset, 2)
        files[f"{preset} preset"] = path
    print(f"# load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| file | bytes | ppl | mean KLD | 99% KLD | same top-1 | generation tok/s (2 threads) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, path in files.items():
        r = kld_scores(path, out)
        cells = ["?" if r[k] is None else f"{r[k]:g}" for k in ("ppl", "kld_mean", "kld_p99", "same_top1_pct")]
        print(f"| {label} | {r['bytes']:,} | " + " | ".join(cells) + f"% | {r['gen_tok_s']:.0f} |", flush=True)
    print(f"# load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/toggle-kquant-kld"))
