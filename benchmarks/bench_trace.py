"""The base trace in one pass, and candidates scored from a shared prompt prefix, each against
what it replaces, side by side in one run.

    PYTHONPATH=$PWD python benchmarks/bench_trace.py [--split heldout] [--model smollm2-135m]

On one split of the default suite with the shipped specs (log-probabilities, hidden states,
attention, gold answers):

  * base trace, two passes (before): greedy generation (trace.generate_paths), then one
    teacher-forced pass over the paths (score_paths, every need), every row run whole;
  * base trace, one pass (build_trace now): generation that records the outputs as it goes
    (trace.generate_recorded) from the cached keys and values of the prompts' shared prefix
    (a chat template's system prompt), then the gold-answer pass; the largest differences
    from the two-pass outputs are printed (float rounding is expected, nothing more);
  * a candidate's teacher-forced pass (what every evaluation and the winner's held-out audit
    run) from the shared prefix, against the same pass with every row run whole.

Timings are of the base model (a plan's weights cost the same to run). Results:
benchmarks/results/bench_trace.json / .csv, with load averages at start and end.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, table  # noqa: E402

import toggle.trace.prefix as prefix_mod  # noqa: E402
from toggle.files import default_specs  # noqa: E402
from toggle.load import load_model  # noqa: E402
from toggle.prompts import load_prompts  # noqa: E402
from toggle.signals import GOLD  # noqa: E402
from toggle.specs import load_specs  # noqa: E402
from toggle.trace import (GenerationSettings, TokenPath, encode_suite, generate_paths, generate_recorded,  # noqa: E402
                          resolve_options, score_paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--name", default="bench_trace")
    args = ap.parse_args()
    run = Run(args.name)
    loaded = load_model(args.model)
    specs = load_specs(default_specs())
    needs = specs.needs
    options = resolve_options(loaded.model, specs.options)
    settings = GenerationSettings(steps=specs.steps_needed or 32)
    encoded = encode_suite(load_prompts().split(args.split), loaded.tokenizer)
    rows = []

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    def paths_of(tokens):
        return [TokenPath(e.prompt.id, e.ids, e.content, t, e.answer_ids) for e, t in zip(encoded, tokens)]

    def whole(fn):  # every row run whole: the shared prefix below PREFIX_MIN's reach
        def run_whole():
            limit, prefix_mod.PREFIX_MIN = prefix_mod.PREFIX_MIN, 10**9
            try:
                return fn()
            finally:
                prefix_mod.PREFIX_MIN = limit
        return run_whole

    tokens, generate_s = timed(whole(lambda: generate_paths(loaded.model, loaded.tokenizer, encoded, settings)))
    paths = paths_of(tokens)
    two_pass, score_s = timed(whole(lambda: score_paths(loaded.model, paths, needs, options)))
    rows.append({"what": "base trace, generate then score (before)", "seconds": generate_s + score_s,
                 "detail": f"generate {generate_s:.1f} s + teacher-forced pass {score_s:.1f} s"})
    run.finish(rows, final=False)

    (recorded_tokens, recorded), record_s = timed(
        lambda: generate_recorded(loaded.model, loaded.tokenizer, encoded, settings, needs, options))
    gold, gold_s = timed(lambda: score_paths(loaded.model, paths_of(recorded_tokens), {GOLD} & needs, options))
    same_paths = recorded_tokens == tokens
    lp_a, lp_b = recorded.logprobs, two_pass.logprobs
    mix = 0.5 * (lp_a.exp() + lp_b.exp())
    jsd = 0.5 * ((lp_a.exp() * (lp_a - mix.log())).sum(-1) + (lp_b.exp() * (lp_b - mix.log())).sum(-1))
    cos = torch.nn.functional.cosine_similarity
    diffs = {"same_paths": same_paths, "max_jsd": float(jsd.max()),
             "argmax_differs": int((lp_a.argmax(-1) != lp_b.argmax(-1)).sum()), "steps": int(lp_a.shape[0]),
             "min_hidden_cos": float(cos(recorded.hidden, two_pass.hidden, dim=-1).min()),
             "min_attn_cos": float(cos(recorded.attn, two_pass.attn, dim=-1).min())}
    rows.append({"what": "base trace, recorded while generating from the shared prefix (now)", "seconds": record_s + gold_s,
                 "detail": f"recorded generation {record_s:.1f} s + gold pass {gold_s:.1f} s", **diffs})
    run.finish(rows, final=False)

    shared_prefix = prefix_mod.shared_prefix([list(e.ids) for e in encoded], min(len(e.ids) for e in encoded) - 1)
    from_prefix, prefix_s = timed(lambda: score_paths(loaded.model, paths, needs, options))
    every_row, whole_s = timed(whole(lambda: score_paths(loaded.model, paths, needs, options)))
    worst = max(float((from_prefix.tensors()[k] - t).abs().max()) for k, t in every_row.tensors().items())
    prompt_tokens = sum(len(e.ids) for e in encoded)
    rows.append({"what": "candidate pass, every row whole (before)", "seconds": whole_s,
                 "detail": f"{prompt_tokens} prompt tokens + {sum(map(len, tokens))} path tokens"})
    rows.append({"what": "candidate pass from the shared prefix (now)", "seconds": prefix_s,
                 "detail": f"{shared_prefix} shared tokens x {len(paths)} prompts run once; largest output difference "
                           f"{worst:.2e}"})
    extra = {"split": args.split, "prompts": len(paths), "shared_prefix": shared_prefix,
             "base_trace_ratio": (record_s + gold_s) / (generate_s + score_s), "candidate_pass_ratio": prefix_s / whole_s}
    print(table(rows, [("what", "", ""), ("seconds", "s", ".1f"), ("detail", "", "")]))
    print(f"# base trace now / before: {extra['base_trace_ratio']:.2f}; candidate pass now / before: "
          f"{extra['candidate_pass_ratio']:.2f}; recorded vs two-pass: {diffs}")
    run.finish(rows, extra)


if __name__ == "__main__":
    main()
