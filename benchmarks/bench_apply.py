"""Cost of applying a fresh plan (per-module caches warm) against one forward pass.

    PYTHONPATH=. python benchmarks/bench_apply.py [--plans 5] [--tokens 3072]

On the built-in SmolLM2-135M: warms the per-module caches (codes per bit-width, pruning
order, SVD), then applies random plans whose composed settings are new (LRU cleared, so
every module is recomputed from the warm caches) and times them next to a forward pass
over about 3000 tokens, in the same process. Prints ratios; absolute times are noisy on
shared machines. Also times CostModel.of, which the search calls for every candidate.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from toggle.compress.apply import PlanApplier
from toggle.cost import CostModel
from toggle.load import load_model
from toggle.modules import compressible_modules
from toggle.plan import Methods, ModuleSetting, Plan

BITS = (2, 3, 4, 5, 6, 8, 16)
SPARSITY = (0.0, 0.25, 0.5)
RANKS = (1.0, 0.25)


def random_plan(model_id, refs, rng, methods):
    modules = {}
    for ref in refs:
        rank = 1.0 if ref.part == "embed" else rng.choice(RANKS)
        modules[ref.name] = ModuleSetting(bits=rng.choice(BITS), sparsity=rng.choice(SPARSITY), rank_ratio=rank)
    return Plan(model_id, modules, methods)


def timed(fn, repeat=1):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--plans", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=3072)
    args = parser.parse_args()

    lm = load_model(args.model)
    refs = compressible_modules(lm.model)
    names = [r.name for r in refs]
    methods = Methods(group_size=128, symmetric=False, pruner="magnitude", lowrank="svd")
    applier = PlanApplier(lm.model, refs)

    start = time.perf_counter()
    for bits in BITS[:-1]:
        applier.apply(Plan.uniform(lm.model_id, names, ModuleSetting(bits=bits), methods))
    applier.apply(Plan.uniform(lm.model_id, names, ModuleSetting(sparsity=0.5), methods))
    applier.apply(Plan.uniform(lm.model_id, names[1:], ModuleSetting(rank_ratio=0.25, sparsity=0.5), methods))
    warm_seconds = time.perf_counter() - start

    seq = 512
    ids = torch.randint(0, lm.model.config.vocab_size, (max(1, args.tokens // seq), seq))

    def forward():
        with torch.no_grad():
            lm.model.model(ids)  # the body; the LM head is computed only where a signal needs it

    # Measured in pairs, one right after the other, so load from other processes on the
    # machine affects both sides of each ratio alike.
    rng = random.Random(0)
    fresh, again, forwards = [], [], []
    for _ in range(args.plans):
        plan = random_plan(lm.model_id, refs, rng, methods)
        applier._lru.clear()  # a fresh plan: nothing composed before
        applier._lru_bytes = 0
        fresh.append(timed(lambda: applier.apply(plan)))
        forwards.append(timed(forward))
        applier.restore()
        again.append(timed(lambda: applier.apply(plan)))  # a plan seen before: LRU hits
        applier.restore()
    fresh_ratio = statistics.median(f / t for f, t in zip(fresh, forwards))
    again_ratio = statistics.median(a / t for a, t in zip(again, forwards))

    cost_model = CostModel(lm.model, refs)
    plans = [random_plan(lm.model_id, refs, rng, methods) for _ in range(200)]
    for p in plans:
        cost_model.of(p)  # memo warm, like in a search
    cost_seconds = timed(lambda: [cost_model.of(p) for p in plans]) / len(plans)

    forward_s = statistics.median(forwards)
    print(f"model {lm.model_id}: {len(refs)} modules, threads {torch.get_num_threads()}")
    print(f"warming the per-module caches: {warm_seconds:.1f} s (once per search)")
    print(f"forward pass over {ids.numel()} tokens: median {forward_s:.2f} s")
    print(f"apply a fresh plan (caches warm): median {statistics.median(fresh):.3f} s; "
          f"ratio to the forward pass, median over {args.plans} pairs: {fresh_ratio:.3f}")
    print(f"apply a plan seen before (LRU): median {statistics.median(again):.3f} s; ratio {again_ratio:.4f}")
    print(f"CostModel.of: {cost_seconds * 1e6:.0f} us per plan; ratio {cost_seconds / forward_s:.1e}")
    print(f"cache bytes: { {k: f'{v / 1e6:.0f} MB' for k, v in applier.cache_bytes.items()} }")


if __name__ == "__main__":
    main()
