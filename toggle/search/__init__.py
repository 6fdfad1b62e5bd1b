"""`toggle search`: constrained Bayesian optimisation over per-group bits, sparsity and rank.

    from toggle.search import run_search
    result = run_search("smollm2-135m", "100MB", trials=12)
    result.plan, result.summary["size_reduction"]

The engine (profile, space, sampler, baselines, study) works against the small `Objective`
protocol (toggle.search.objective); `run_study` runs it on any objective (a synthetic one is in
toggle.search.synthetic), `run_search` builds the real one from a model, specs and prompts.
"""
from .objective import Objective, Outcome, PlanCost
from .profile import SearchProfile, load_profile, parse_profile
from .run import SAMPLERS, SearchResult, run_study
from .sampler import ConstrainedBOSampler, RandomSearchSampler
from .space import SearchSpace


def run_search(*args, **kwargs):
    """Search for the smallest plan satisfying every property of MODEL within a budget (see pipeline.run_search)."""
    from .pipeline import run_search as _run

    return _run(*args, **kwargs)


__all__ = [
    "SAMPLERS", "ConstrainedBOSampler", "Objective", "Outcome", "PlanCost", "RandomSearchSampler", "SearchProfile",
    "SearchResult", "SearchSpace", "load_profile", "parse_profile", "run_search", "run_study",
]
