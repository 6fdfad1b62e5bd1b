"""The real search: load -> prompts -> trace -> specs -> applier -> evaluator -> cost -> study.

    from toggle.search import run_search
    result = run_search("smollm2-135m", "100MB", trials=12)

Everything a user can get wrong (profile, budget, specs, prompts) is checked before the model
is loaded. The pieces come from toggle.specs, toggle.prompts, toggle.trace, toggle.compress,
toggle.evaluate and toggle.cost; this module only wires them to the engine (run_study).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput
from ..plan import Plan
from ..units import Budget, format_bytes, parse_budget
from .objective import Outcome, PlanCost
from .profile import load_profile
from .run import SearchResult, run_study
from .space import SearchSpace


@dataclass
class ModelObjective:
    """An Objective over a loaded model: the evaluator scores a plan, the cost model costs it."""

    model_id: str
    refs: list
    properties: list[str]
    evaluator: object  # toggle.evaluate.Evaluator
    cost_model: object  # toggle.cost.CostModel
    cache_key: str = ""
    prompts: list[str] | None = None  # evaluate on these prompt ids only (the profiling subset)
    loaded_bytes: int | None = None  # the weights file the model was loaded from (a GGUF file may be 4-bit already)
    loaded_format: str | None = None  # e.g. 'Q4_1' for the built-in model's GGUF file

    @property
    def base16_bytes(self) -> int:
        return int(self.cost_model.base16_bytes)

    @property
    def base_flops_per_token(self) -> float:
        return float(self.cost_model.base_flops_per_token)

    def evaluate(self, plan: Plan) -> Outcome:
        import torch

        try:
            ev = self.evaluator.evaluate(plan, prompts=self.prompts)
        except (torch.linalg.LinAlgError, FloatingPointError) as e:
            # A numerical fault of this candidate (an SVD that does not converge on its weights):
            # the plan is infeasible with the reason recorded; the search goes on.
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            return Outcome({name: -math.inf for name in self.properties}, reason=f"numerical failure: {first}")
        return Outcome(robustness=dict(ev.robustness), reason=getattr(ev, "reason", None),
                       per_prompt=dict(getattr(ev, "per_prompt", None) or {}), timings=dict(getattr(ev, "timings", None) or {}))

    def cost(self, plan: Plan) -> PlanCost:
        c = self.cost_model.of(plan)
        return PlanCost(bytes=int(c.bytes), flops_per_token=float(c.flops_per_token))


def default_run_dir(model: str, budget: Budget) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model)
    return Path("runs") / f"{name}-{re.sub(r'[^A-Za-z0-9.]+', '', str(budget))}"


def run_search(model: str, budget: str | Budget, *, specs=None, prompts=None, profile: str = "default",
               trials: int | None = None, objective: str = "size", relax: float = 0.0, overrides: dict | None = None,
               out: str | Path | None = None, storage: str | None = None, study: str | None = None,
               seed: int | None = None, sampler: str = "bo", device: str | None = None,
               trust_remote_code: bool = False, progress: bool = True) -> SearchResult:
    # 1. Inputs a user can get wrong, before any model work.
    search_profile = load_profile(profile)
    budget = parse_budget(budget) if isinstance(budget, str) else budget
    if trials is not None and trials < 1:
        raise InvalidInput(f"--trials: {trials} is not valid; expected an integer >= 1")
    if seed is not None and seed < 0:
        raise InvalidInput(f"--seed: {seed} is not valid; expected an integer >= 0")
    if not 0.0 <= relax < 1.0:
        raise InvalidInput(f"--relax: {relax} is not valid; expected a fraction in [0, 1), e.g. 0.1")
    from .storage import check_storage_url

    check_storage_url(storage)
    from ..prompts import load_prompts
    from ..specs import load_specs

    spec_set = load_specs(list(specs) if specs else None, overrides or {}, relax)
    suite = load_prompts(prompts)

    # 2. The model, its trace, calibration statistics, the evaluator and the cost model.
    from ..compress import PlanApplier
    from ..cost import CostModel
    from ..evaluate import Evaluator
    from ..load import load_model
    from ..modules import compressible_modules
    from ..trace import build_trace

    loaded = load_model(model, device=device or "cpu", trust_remote_code=trust_remote_code)
    refs = compressible_modules(loaded.model)
    trace = build_trace(loaded, suite, spec_set, split="calibration")
    run_dir = Path(out) if out else default_run_dir(model, budget)
    stats, meta = _calibration_stats(loaded, refs, trace, search_profile.methods, run_dir)
    evaluator = Evaluator(loaded, spec_set, trace, PlanApplier(loaded.model, refs, stats))
    if search_profile.format == "gguf":
        from ..gguf_export import gguf_cost_model

        cost_model = gguf_cost_model(loaded, refs)  # the .gguf file's metadata counts too
    else:
        cost_model = CostModel(loaded.model, refs, fmt=search_profile.format)
    names = [p.name for p in spec_set.properties]
    key = f"{loaded.fingerprint}|{trace.key}|{','.join(names)}"
    full = ModelObjective(loaded.model_id, refs, names, evaluator, cost_model, cache_key=key,
                          loaded_bytes=loaded.source_bytes, loaded_format=loaded.source_quantization)
    ids = trace.prompt_ids
    subset = _spread(ids, search_profile.sensitivity.prompts)
    profiling = full if len(subset) == len(ids) else ModelObjective(
        loaded.model_id, refs, names, evaluator, cost_model, cache_key=f"{key}|{','.join(subset)}", prompts=subset)

    budget_bytes = budget.resolve(cost_model.compressible_params, cost_model.other_bytes)
    result = run_study(full, budget_bytes, profile=search_profile, run_dir=run_dir, trials=trials, sampler=sampler,
                       objective_kind=objective, seed=seed, storage=storage, study_name=study,
                       profiling_objective=profiling, progress=progress, plan_meta=meta)
    _after_search(result, loaded=loaded, specs=spec_set, suite=suite, evaluator=evaluator,
                  space=SearchSpace(loaded.model_id, refs, search_profile), relax=relax, overrides=overrides)
    return result


def _calibration_stats(loaded, refs, trace, methods, run_dir: Path):
    """Input statistics for activation-aware methods (Wanda, AWQ, GPTQ, ASVD), gathered over the
    calibration trace's token paths, kept beside the plan so `toggle apply` reproduces it."""
    if methods.pruner != "wanda" and methods.quantizer == "rtn" and methods.lowrank == "svd":
        return None, {}
    import torch

    from ..compress.calibrate import collect_stats

    sequences = [torch.tensor(list(p.prompt_ids) + list(p.tokens)) for p in trace.paths]
    stats = collect_stats(loaded.model, sequences, refs=refs, fingerprint=loaded.fingerprint)
    run_dir.mkdir(parents=True, exist_ok=True)
    stats.save(run_dir / "calibration_stats.safetensors")
    return stats, {"calibration_stats": "calibration_stats.safetensors"}


def _spread(items: list, n: int) -> list:
    """n items spread evenly over the list (the profiling subset covers every domain of the suite)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _after_search(result: SearchResult, **context) -> None:
    """The held-out audit of the winner, then the report (report.md/html, plots); see toggle.winner."""
    from ..winner import finish_search

    finish_search(result, **context)


def final_lines(result: SearchResult) -> list[str]:
    """What the CLI prints last: the verdict, size and FLOP reduction against the 16-bit dense model."""
    s = result.summary
    lines = []
    if s.get("satisfied"):
        lines.append(f"best plan: trial {s['best_trial']}, every property holds (minimum margin {s['min_margin']:+.4f}); "
                     f"{s['feasible_trials']} of {s['trials']} trials satisfied the specs within {format_bytes(s['budget_bytes'])}")
    else:
        closest = (f"closest plan: trial {s['best_trial']}, minimum margin {s['min_margin']:+.4f}"
                   if s.get("best_trial") is not None and s.get("min_margin") is not None else "no plan within the budget was evaluated")
        lines.append(f"no plan satisfies every property within {format_bytes(s['budget_bytes'])} after {s['trials']} trials; {closest}")
    if s.get("compressed_size_bytes") is not None:
        lines.append(f"size: {format_bytes(s['compressed_size_bytes'])} vs {format_bytes(s['base_size_bytes'])} 16-bit dense "
                     f"({100 * s['size_reduction']:.1f}% smaller)")
        lines.append(f"FLOPs per token: {s['compressed_flops_per_token']:.3g} vs {s['base_flops_per_token']:.3g} "
                     f"({s['flops_reduction']:.2f}x fewer)")
    if s.get("compressed_size_bytes") is not None and s.get("loaded_size_bytes"):
        fmt = f"{s['loaded_format']} GGUF " if s.get("loaded_format") else ""
        change = 1.0 - s["compressed_size_bytes"] / s["loaded_size_bytes"]
        lines.append(f"the loaded {fmt}weights file is {format_bytes(s['loaded_size_bytes'])}: the plan is "
                     f"{100 * abs(change):.1f}% {'smaller' if change >= 0 else 'larger'} than that")
    heldout = s.get("heldout") or {}
    if "pass_rate" in heldout:
        verdict = "every property holds" if heldout["satisfied"] else "VIOLATED"
        lines.append(f"held-out audit: {verdict} ({100 * heldout['pass_rate']:.1f}% of {heldout['prompts']} "
                     f"prompts satisfy every property)")
    elif heldout.get("skipped"):
        lines.append(f"held-out audit: skipped ({heldout['skipped']})")
    lines.append(f"run directory: {result.run_dir}")
    return lines
