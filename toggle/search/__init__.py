"""`toggle search`: constrained Bayesian optimisation over per-group bits, sparsity and rank.

The engine (profile, space, samplers, baselines, study) works against the small `Objective`
protocol (toggle.search.objective); `run_study` runs it on any objective (a synthetic one is in
toggle.search.synthetic). toggle.api.search builds the real one from a model, specs and prompts.

    profile.py      search profiles (search/NAME.yaml): knobs, granularity, methods
    space.py        groups, dimensions, points as Optuna params / index vectors / plans
    costs.py        vectorised exact cost of many candidate points
    sensitivity.py  single-group profiling, the additive prior, the greedy path
    sampler.py      constrained BO (BoTorch) and random search, as Optuna samplers
    baselines.py    the uniform and greedy baselines, as Optuna samplers
    study.py        the study: trials, resume, Ctrl-C, results into the run directory
    summary.py      summary.json's figures from the trials
    storage.py      sqlite / journal / PostgreSQL storages, orphaned trials
    progress.py     the progress bar
"""
from .objective import ModelObjective, Objective, Outcome, PlanCost
from .profile import SearchProfile, load_profile, parse_profile
from .sampler import ConstrainedBOSampler, RandomSearchSampler
from .space import SearchSpace
from .study import SAMPLERS, SearchResult, run_study

__all__ = [
    "SAMPLERS", "ConstrainedBOSampler", "ModelObjective", "Objective", "Outcome", "PlanCost", "RandomSearchSampler",
    "SearchProfile", "SearchResult", "SearchSpace", "load_profile", "parse_profile", "run_study",
]
