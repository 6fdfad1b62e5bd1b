"""Run a search against any Objective: the study, its trials, resume, Ctrl-C, outputs.

    result = run_study(objective, budget_bytes, profile=load_profile("default"), run_dir=Path("runs/x"))

The sampler is an Optuna sampler passed to the study: constrained BO, random search, or a
baseline (uniform, greedy: toggle.search.baselines). When the trials are done the results are
written to the run directory (toggle.rundir): plan.yaml, trials.csv, pareto.csv, and
summary.json once, after `finish(summary, plan)` (the pipeline's held-out audit) has added to it.

Every trial: the sampler (or a baseline's ladder) picks a point, its exact cost is computed,
a plan over the budget is pruned without a model evaluation, otherwise the objective scores it
and the trial records robustness per property, the infeasibility reason and Optuna constraints
(robustness:<p> = -robustness, size = bytes/budget - 1, valid = 1 if the evaluation failed).
The trial's value is the plain cost (bytes or FLOPs per token), feasible or not.

Confirmation (`confirm`, the suite's confirmation split): a trial that would become the best so
far is scored on those prompts too and recorded with the lower robustness of the two, so the
best plan has held on prompts the search is not fitting (a long search finds plans that pass
the calibration prompts and fail elsewhere); the trial keeps `calibration_robustness` and a
`confirmation` record (passed, seconds, prompts scored).

No stale result: `identity` (toggle.api.study_identity: a hash per input that changes what a
trial measures, i.e. model weights, trace settings, spec files, spec constants after --set /
--relax, prompt suite, profile, methods) is kept in the study. Without --study the study's name
ends with the identity's digest, so a rerun into the same run directory with other inputs starts
a new study and says in one line which inputs changed (the old study stays in the storage, and
in the report's convergence plot); the same inputs resume. With an explicit --study NAME whose
stored identity differs, the run is refused (exit 2): a name someone chose is not silently
reused for other inputs. The trial count and the seed are not part of it: more trials resume.
"""
from __future__ import annotations

import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from ..errors import InvalidInput
from ..files import finite_or_none, json_digest, jsonable
from ..plan import Plan
from ..rundir import FINISHED, MEASURED, SENSITIVITY, RunDir, best_row, trial_rows
from ..units import format_bytes
from .baselines import LadderSampler, path_ladder, uniform_ladder
from .costs import CostTable
from .measure import AdditiveModel, Measured, allocation_path, budget_plan, run_measurement, zones_of
from .objective import Objective, Outcome
from .profile import SearchProfile
from .progress import Progress, sensitivity_table
from .sampler import ConstrainedBOSampler, RandomSearchSampler
from .sensitivity import (AdditivePrior, SensitivityProfile, allowed_max, greedy_path, profiling_points, run_profiling,
                          table_rows)
from .space import SearchSpace
from .storage import WORKER, open_storage, recover_orphans, redact
from .summary import summarise

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _NoInterruptTraceback(logging.Filter):
    """Ctrl-C or SIGTERM during a trial: optuna logs the trial as failed with a traceback.
    toggle says "interrupted", saves, and the next run recovers the trial: the traceback is noise."""

    def __init__(self):
        super().__init__()
        self.interrupted: set[str] = set()  # "Trial N" of each trial an interrupt stopped

    def filter(self, record: logging.LogRecord) -> bool:
        trial = re.match(r"Trial \d+", record.getMessage())
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            if trial:
                self.interrupted.add(trial.group())
            return False
        # optuna's second line for that trial, without the exception: "Trial N failed with value None."
        return not (trial and trial.group() in self.interrupted and "failed with value" in record.getMessage())


logging.getLogger("optuna.study._optimize").addFilter(_NoInterruptTraceback())

@dataclass
class SamplerContext:
    """What a sampler is built from: the space and its costs, the budget, and (for samplers that
    need sensitivity profiling) what profiling found."""

    space: SearchSpace
    costs: CostTable
    budget_bytes: float
    objective: str
    seed: int
    options: dict
    limit: np.ndarray | None = None  # per dimension, the most compressed index profiling allows
    path: list | None = None  # the greedy allocation's (or the measured-error allocator's) path
    estimate: list | None = None  # its estimated loss per point
    prior: object | None = None  # AdditivePrior (single-group profiling) or AdditiveModel (measured errors)
    measured: AdditiveModel | None = None


def _bo(c: SamplerContext):
    if c.measured is not None:  # start from the measured-error allocator's path, then model what it misses
        zones, n_zones = zones_of(c.space)
        return ConstrainedBOSampler(
            c.space, c.costs, c.budget_bytes, objective=c.objective, seed=c.seed, limit=c.limit, prior=c.measured,
            ladder=_allocator_ladder(c),
            features=lambda index: c.measured.zone_loss(index, zones, n_zones), measured=c.measured,
            uniform=uniform_ladder(c.space, c.costs, c.budget_bytes, c.objective), **c.options)
    sampler = ConstrainedBOSampler(c.space, c.costs, c.budget_bytes, objective=c.objective, seed=c.seed, limit=c.limit,
                                   prior=c.prior, **c.options)
    sampler.warm_starts = warm_starts(c.path, c.estimate, c.costs, c.budget_bytes, c.objective)
    return sampler


def _allocator(c: SamplerContext):
    return LadderSampler("allocator", _allocator_ladder(c), c.space, c.costs, c.budget_bytes, objective=c.objective,
                         seed=c.seed)


def _allocator_ladder(c: SamplerContext) -> list[np.ndarray]:
    """The measured-error allocator's path within the budget; under --objective margin its plan
    for the budget (measure.budget_plan) comes first: the path's first plan within the budget can
    lie far below it."""
    ladder = path_ladder(c.path, c.costs, c.budget_bytes, c.objective)
    plan = budget_plan(c.measured, c.costs, c.budget_bytes, c.limit) if c.objective == "margin" else None
    if plan is None:
        return ladder
    return [plan] + [p for p in ladder if not np.array_equal(p, plan)]


def _random(c: SamplerContext):
    return RandomSearchSampler(c.space, c.costs, c.budget_bytes, objective=c.objective, seed=c.seed)


def _uniform(c: SamplerContext):
    return LadderSampler("uniform", uniform_ladder(c.space, c.costs, c.budget_bytes, c.objective), c.space, c.costs,
                         c.budget_bytes, objective=c.objective, seed=c.seed)


def _greedy(c: SamplerContext):
    return LadderSampler("greedy", path_ladder(c.path, c.costs, c.budget_bytes, c.objective), c.space, c.costs,
                         c.budget_bytes, objective=c.objective, seed=c.seed)


# The sampler registry: name -> (factory(SamplerContext) -> Optuna sampler, the profiling it needs:
# None, "single" (one group at a time at the profile's levels), "measured" (output errors and one
# probe per group: toggle.search.measure) or "profile" (the profile's sensitivity.method)).
# A sampler may carry `warm_starts` (index vectors evaluated first) and `exhausted(study)` (True
# when it has nothing left to propose); adding one is its file and one entry here.
SAMPLERS = {"bo": (_bo, "profile"), "random": (_random, None), "uniform": (_uniform, None),
            "greedy": (_greedy, "single"), "allocator": (_allocator, "measured")}


@dataclass
class SearchResult:
    run_dir: Path
    summary: dict
    plan: Plan | None  # the best plan satisfying every property within the budget
    study_name: str
    storage: str
    sensitivity: SensitivityProfile | None = None
    notes: tuple[str, ...] = ()  # e.g. why a new study was started

    @property
    def satisfied(self) -> bool:
        return bool(self.summary.get("satisfied"))

    @property
    def heldout_failed(self) -> bool:
        """The winner was audited on the held-out prompts and failed (a skipped audit is no failure)."""
        return (self.summary.get("heldout") or {}).get("satisfied") is False

    @property
    def exit_code(self) -> int:
        """0: a plan satisfies the specs (and its held-out audit, when there is one); 1 otherwise."""
        return 0 if self.satisfied and not self.heldout_failed else 1


def run_study(objective: Objective, budget_bytes: int, *, profile: SearchProfile, run_dir: str | Path,
              trials: int | None = None, sampler: str = "bo", objective_kind: str = "size", seed: int | None = None,
              storage: str | None = None, study_name: str | None = None, profiling_objective: Objective | None = None,
              progress: bool = False, sampler_options: dict | None = None, plan_meta: dict | None = None,
              finish=None, identity: dict | None = None, confirm: Objective | None = None,
              costs: CostTable | None = None) -> SearchResult:
    """Search `objective` within `budget_bytes`; see the module docstring. `finish(summary, plan)`,
    when given, runs after the trials and before summary.json is written (not after Ctrl-C).
    `identity`: input -> hash of what the trials' results depend on (see the module docstring).
    `confirm`: the same model scored on other prompts (the suite's confirmation split); a trial
    that would become the best so far is kept as such only if it also holds there. `costs`: the
    profile's cost table for this model when the caller has built it already (its space is used)."""
    if sampler not in SAMPLERS:
        raise InvalidInput(f"--sampler: {sampler!r} is not valid; expected one of {', '.join(SAMPLERS)}")
    if objective_kind not in OBJECTIVES:
        raise InvalidInput(f"--objective: {objective_kind!r} is not valid; expected one of {', '.join(OBJECTIVES)}")
    started = time.perf_counter()
    run = RunDir(run_dir)
    n_trials = trials if trials is not None else profile.trials
    if n_trials < 1:
        raise InvalidInput(f"--trials: {n_trials} is not valid; expected an integer >= 1")
    seed = profile.seed if seed is None else seed
    if seed < 0:
        raise InvalidInput(f"--seed: {seed} is not valid; expected an integer >= 0")
    space = costs.space if costs is not None else SearchSpace(objective.model_id, objective.refs, profile)
    costs = costs if costs is not None else CostTable(space, objective.cost)
    check_budget(budget_bytes, costs, objective.cost, profile)

    store, url = open_storage(storage, run.path)
    name, note = _study_name(store, study_name, f"{sampler}-{objective_kind}-{int(budget_bytes)}", identity, url,
                             {"budget_bytes": int(budget_bytes), "objective": objective_kind, "sampler": sampler})
    if note and progress:
        print(f"toggle: {note}", file=sys.stderr, flush=True)
    study = optuna.create_study(storage=store, study_name=name, direction="minimize", load_if_exists=True)
    recover_orphans(study, store)  # trials a killed run left RUNNING are failed and queued again
    study.set_user_attr("toggle", {"model": objective.model_id, "profile": profile.name, "budget_bytes": int(budget_bytes),
                                   "objective": objective_kind, "sampler": sampler, "properties": list(objective.properties),
                                   **({"identity": identity} if identity else {})})

    bar = Progress(progress, n_trials, _finished(study), objective.base16_bytes, objective.base_flops_per_token)
    prof: SensitivityProfile | None = None
    timings = {"profiling_seconds": 0.0}
    try:
        make, needs = SAMPLERS[sampler]
        context = SamplerContext(space, costs, budget_bytes, objective_kind, seed, sampler_options or {})
        kind = profile.sensitivity.method if needs == "profile" else needs
        if kind == "single":
            prof, context.limit, context.path, context.estimate, context.prior = _profile(
                space, costs, profiling_objective or objective, run, study, bar, objective_kind)
            timings["profiling_seconds"] = round(prof.seconds, 2)
            timings["profiling_evaluations"] = len(prof.entries) + 1
        elif kind == "measured":
            measured = _measure(space, costs, objective, profiling_objective or objective, run, study, bar)
            context.measured = context.prior = AdditiveModel(space, costs, measured)
            context.path, context.estimate = allocation_path(context.measured, costs, objective=objective_kind)
            timings["profiling_seconds"] = round(measured.seconds, 2)
            timings["profiling_evaluations"] = measured.evaluations
        smallest_left = costs.min_bytes(context.limit) if context.limit is not None else 0.0
        if smallest_left > budget_bytes:
            # every plan left after profiling's cuts is over the budget: trials would only repeat one
            timings["stopped"] = (
                f"sensitivity profiling dropped the knob values that break a property with one group compressed; "
                f"the smallest plan left is {format_bytes(smallest_left)}, over the budget (raise "
                f"--budget to at least that, or loosen the specs)")
            bar.print(f"toggle: no trials: {timings['stopped']}")
            n_trials = 0
        chosen = make(context)
        if not study.get_trials(deepcopy=False):
            for index in getattr(chosen, "warm_starts", ()):  # points to evaluate before the sampler proposes
                study.enqueue_trial(space.to_params(index), user_attrs={"source": "warm-start"}, skip_if_exists=True)
        study.sampler = chosen
        func = _trial_function(space, objective, chosen, budget_bytes, objective_kind, confirm=confirm)
        bar.phase(f"{sampler} trials", n_trials, _finished(study))
        while _finished(study) < n_trials:
            if getattr(chosen, "exhausted", None) and chosen.exhausted(study):
                bar.print(f"{chosen.name}: every rung of the ladder within the budget has been evaluated")
                break
            _optimize_one(study, func)
            rows = trial_rows(study, space.params)
            best = best_row(rows, objective_kind, budget_bytes)
            last = rows[-1] if rows else None
            bar.step(len(rows), bar.trial_status(best, last["robustness"] if last else {},
                                                 last["reason"] if last else None, objective_kind))
    except KeyboardInterrupt:
        bar.close()
        _finish(study, space, objective, budget_bytes, objective_kind, sampler, seed, run, started, timings, url, name,
                plan_meta, finish=None, interrupted=True)
        raise
    finally:
        bar.close()
    if confirm is not None:
        timings["confirmation_prompts"] = getattr(confirm, "prompt_count", None)
    result = _finish(study, space, objective, budget_bytes, objective_kind, sampler, seed, run, started, timings,
                     url, name, plan_meta, finish=finish)
    result.sensitivity = prof
    result.notes = (note,) if note else ()
    return result


# What each identity entry is, as a message names it.
IDENTITY_LABELS = {"model": "model weights", "trace": "trace settings", "spec_files": "spec files",
                   "consts": "spec constants (--set / --relax)", "prompts": "prompt suite", "profile": "search profile",
                   "methods": "compression methods"}


def identity_digest(identity: dict) -> str:
    return json_digest(identity, 10)


def _study_name(store, chosen: str | None, base: str, identity: dict | None, url: str,
                setting: dict | None = None) -> tuple[str, str | None]:
    """(the study's name, a one-line note when a new study starts because inputs changed).
    `setting`: the budget, objective and sampler, which a study chosen by name must share too (an
    automatic name carries them)."""
    attrs = {s.study_name: s.user_attrs.get("toggle") or {}
             for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    if chosen is not None:
        for key, value in (setting or {}).items():
            was = attrs.get(chosen, {}).get(key)
            if was is not None and was != value:
                shown = {"budget_bytes": lambda v: f"--budget {format_bytes(v)} ({v} bytes)"}.get(
                    key, lambda v: f"--{key} {v}")
                raise InvalidInput(f"--study: {chosen!r} in {redact(url)} was run with {shown(was)}, not {shown(value)}: "
                                   f"its trials were judged against that; pass another --study name (or --out "
                                   f"directory), or the same settings to resume it")
    if not identity:
        return chosen or base, None
    stored = {name: a.get("identity") for name, a in attrs.items()}
    if chosen is not None:
        old = stored.get(chosen)
        if old and old != identity:
            raise InvalidInput(f"--study: {chosen!r} in {redact(url)} was run with other {_changed(old, identity)}; "
                               f"pass another --study name (or --out directory) for these inputs, or the same inputs "
                               f"to resume it")
        return chosen, None
    name = f"{base}-{identity_digest(identity)}"
    if name in stored:
        return name, None  # the same inputs: resume
    previous = [n for n, ident in stored.items() if ident and (n == base or n.startswith(f"{base}-"))]
    if not previous:
        return name, None
    old = previous[-1]  # the most recently created one
    return name, (f"starting a new study {name}: the {_changed(stored[old], identity)} differ from study {old}'s "
                  f"(kept in the storage)")


def _changed(old: dict, new: dict) -> str:
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
    return ", ".join(IDENTITY_LABELS.get(k, k) for k in keys) or "inputs"


def check_budget(budget_bytes, costs: CostTable, cost_fn, profile) -> None:
    """The budget admits the profile's most compressed plan (`cost_fn`: plan -> its Cost), else one
    line saying what would."""
    smallest = cost_fn(costs.space.plan(costs.space.to_params(costs.min_bytes_index()))).bytes
    if budget_bytes < smallest:
        raise InvalidInput(
            f"--budget: {format_bytes(budget_bytes)} ({int(budget_bytes)} bytes) is smaller than the most compressed "
            f"plan profile '{profile.name}' allows: {format_bytes(smallest)} ({int(smallest)} bytes); raise the budget "
            f"or allow more compression in {profile.source or 'the profile'}")


def _finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _measure(space, costs, objective, profiling, run: RunDir, study, bar) -> Measured:
    bar.phase("measured-error profiling", len(space.groups))
    return run_measurement(space, costs, objective, profiling, run.mkdir().store(MEASURED), study=study,
                           on_step=lambda done, _total: bar.step(done))


def _profile(space, costs, objective, run: RunDir, study, bar, objective_kind):
    total = len(profiling_points(space))
    bar.phase("sensitivity profiling", total)
    prof = run_profiling(space, objective, run.mkdir().store(SENSITIVITY), study=study,
                         on_step=lambda done, _total: bar.step(done))
    limit = allowed_max(space, prof)
    prior = AdditivePrior(space, prof)
    path, est = greedy_path(space, costs, prior.loss(), limit, objective=objective_kind)
    if bar.enabled:
        bar.print(_sensitivity_table(space, prof, limit))
    return prof, limit, path, est, prior


def _sensitivity_table(space, prof, limit):
    head, rows = table_rows(space, prof)
    dropped = int(np.sum(space.sizes - 1 - limit))
    return sensitivity_table(f"sensitivity: minimum robustness margin with one group compressed "
                             f"({len(prof.entries)} evaluations, {prof.seconds:.0f} s; {dropped} knob values dropped)",
                             head, rows)


def warm_starts(path, est, costs, budget_bytes, objective_kind, levels=(0.05, 0.15, 0.4, 1.0)) -> list[np.ndarray]:
    """Points of the greedy path to evaluate first: the cheapest within the budget whose estimated
    loss (fraction of the margin consumed, summed over groups) stays under each level.

    The levels are spread geometrically and start low because the estimate is optimistic:
    a few profiling prompts miss the worst calibration prompt (the built-in model's embedding
    at 5 bits passes on the profiling subset and fails the full suite), and drops do not add
    up exactly. The conservative point gives BO a feasible incumbent early."""
    out: list[np.ndarray] = []
    if not path:
        return out
    column = 0 if objective_kind == "size" else 1
    size = costs.of(np.stack(path))[0]
    value = costs.of(np.stack(path))[column]
    fits = [i for i in range(len(path)) if size[i] <= budget_bytes]
    for level in levels:
        ok = [i for i in fits if est[i] <= level]
        if ok:
            i = min(ok, key=lambda j: value[j])
            if not any(np.array_equal(path[i], x) for x in out):
                out.append(path[i])
    if fits and not out:
        out.append(path[fits[0]])  # the least compressed plan along the path that fits
    return out


def _optimize_one(study, func) -> None:
    """One trial. An interrupt that lands while optuna records the trial's end makes optuna's
    _run_trial fail on its own unset local (UnboundLocalError, its context the KeyboardInterrupt):
    that is the interrupt, and is raised as one; the trial, left RUNNING, is recovered next run."""
    try:
        study.optimize(func, n_trials=1, catch=())
    except Exception as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        raise


def _trial_function(space: SearchSpace, objective: Objective, sampler, budget_bytes: float, objective_kind: str,
                    early_exit: bool = True, confirm: Objective | None = None):
    def func(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", WORKER)  # first: a run killed from here on can be recovered
        params = space.suggest(trial)
        if "source" not in trial.user_attrs:
            trial.set_user_attr("source", sampler.name)
        trial.set_user_attr("sampler_seconds", round(sampler.last_seconds, 4))
        if sampler.last_info:
            trial.set_user_attr("sampler_info", sampler.last_info)
        plan = space.plan(params)
        cost = objective.cost(plan)
        value = float(cost.bytes if objective_kind == "size" else cost.flops_per_token)
        trial.set_user_attr("bytes", int(cost.bytes))
        trial.set_user_attr("flops_per_token", float(cost.flops_per_token))
        trial.set_constraint("size", cost.bytes / budget_bytes - 1.0)
        if cost.bytes > budget_bytes:
            trial.set_user_attr("reason", f"over budget ({format_bytes(cost.bytes)} > {format_bytes(budget_bytes)})")
            raise optuna.TrialPruned()
        # Claim the point, then look for others: of two workers that took the same point (the
        # same enqueued warm start, say), one that claims after the other's claim is visible
        # yields; two that claim at the same moment both yield (the point may come again,
        # but it is never evaluated twice).
        trial.set_user_attr("claim", True)
        twin = _twin(trial, params)
        if twin is not None and twin.state == TrialState.RUNNING:
            trial.set_user_attr("reason", f"duplicate of running trial {twin.number}")
            raise optuna.TrialPruned()
        if twin is not None:  # another worker evaluated this point already: evaluations are deterministic
            trial.set_user_attr("duplicate_of", twin.number)
            out = Outcome({k: (v if v is not None else -math.inf) for k, v in twin.user_attrs["robustness"].items()},
                          reason=twin.user_attrs.get("reason"), partial=bool(twin.user_attrs.get("partial")))
            trial.set_user_attr("eval_seconds", 0.0)
        else:
            t0 = time.perf_counter()
            out = objective.evaluate(plan, stop_below=_stop_below(trial.study, objective_kind, early_exit, budget_bytes))
            if confirm is not None:
                best = best_row(trial_rows(trial.study), objective_kind, budget_bytes)
                if _would_lead(best, out, value, objective_kind):
                    out = _confirm(trial, confirm, plan, out, objective_kind, early_exit, value, best)
            trial.set_user_attr("eval_seconds", round(time.perf_counter() - t0, 4))
        if out.partial:  # stopped early: the robustness values are upper bounds
            trial.set_user_attr("partial", True)
            trial.set_user_attr("prompts_evaluated", out.prompts_evaluated)
        trial.set_user_attr("robustness", {k: robustness_attr(v) for k, v in out.robustness.items()})
        if out.per_prompt:
            trial.set_user_attr("per_prompt", jsonable(out.per_prompt))
        trial.set_user_attr("reason", out.reason)
        for name in objective.properties:
            r = out.robustness.get(name, -math.inf)
            # +inf (vacuously true) holds: a satisfied constraint; -inf or NaN (not scored) is violated
            trial.set_constraint(f"robustness:{name}", -r if math.isfinite(r) else (0.0 if r > 0 else math.inf))
        trial.set_constraint("valid", 1.0 if out.reason else 0.0)
        if objective_kind == "margin":  # the most robust plan: minimise the negated minimum margin
            return -out.min_margin if math.isfinite(out.min_margin) else MARGIN_FLOOR
        return value

    return func


def _would_lead(best: dict | None, out: Outcome, value: float, objective_kind: str) -> bool:
    """Whether a fully scored plan would displace `best` (the study's best row so far, None when
    there is none): the cheapest satisfying plan (size, flops), or the largest minimum margin."""
    if out.partial or out.reason is not None:
        return False
    if objective_kind == "margin":
        return best is None or out.min_margin > best["min_margin"]
    if not out.feasible:
        return False
    return best is None or value < best["bytes" if objective_kind == "size" else "flops_per_token"]


def _confirm(trial, confirm: Objective, plan, out: Outcome, objective_kind: str, early_exit: bool, value: float,
             best: dict | None) -> Outcome:
    """Score a would-be best plan on the confirmation prompts too; its robustness becomes the lower
    of the two per property, so a plan that only holds on the calibration prompts (which the
    search has been fitting) is recorded as violating, and the sampler learns from that. Early
    exit stops as soon as the plan cannot lead (a property violated; under --objective margin, a
    margin below the best so far), so a rejection costs a few prompts. `passed`: the plan still
    leads with the lower margins."""
    stop = _stop_threshold(objective_kind, early_exit, best)
    t0 = time.perf_counter()
    check = confirm.evaluate(plan, stop_below=stop)
    merged = {k: min(v, check.robustness.get(k, math.inf)) for k, v in out.robustness.items()}
    per_prompt = {k: {**out.per_prompt.get(k, {}), **check.per_prompt.get(k, {})}
                  for k in {*out.per_prompt, *check.per_prompt}}
    result = Outcome(merged, reason=check.reason or out.reason, per_prompt=per_prompt, timings=out.timings,
                     partial=check.partial, prompts_evaluated=out.prompts_evaluated + check.prompts_evaluated)
    trial.set_user_attr("calibration_robustness", {k: robustness_attr(v) for k, v in out.robustness.items()})
    trial.set_user_attr("confirmation", {
        "passed": _would_lead(best, result, value, objective_kind),
        "seconds": round(time.perf_counter() - t0, 4), "partial": check.partial,
        "prompts_evaluated": check.prompts_evaluated,
        "robustness": {k: robustness_attr(v) for k, v in check.robustness.items()}})
    return result


def robustness_attr(v):
    """How a trial stores a robustness: a finite float, +inf for a vacuously true property (the
    storage's JSON keeps it), None when it could not be scored (-inf, NaN)."""
    if v is not None and float(v) == math.inf:
        return math.inf
    return finite_or_none(v)


OBJECTIVES = ("size", "flops", "margin")
MARGIN_FLOOR = 1e6  # the value of a plan that could not be scored, under --objective margin


def _stop_below(study, objective_kind: str, early_exit: bool, budget_bytes: float) -> float | None:
    """_stop_threshold with the study's best row (read only where a margin search needs it)."""
    best = best_row(trial_rows(study), "margin", budget_bytes) if early_exit and objective_kind == "margin" else None
    return _stop_threshold(objective_kind, early_exit, best)


def _stop_threshold(objective_kind: str, early_exit: bool, best: dict | None) -> float | None:
    """The threshold below which a candidate's evaluation may stop: 0 (a violated property decides
    a size or FLOPs search), or the best minimum margin so far (nothing below it can win a margin
    search); None when early exit is off or nothing has been found yet."""
    if not early_exit:
        return None
    if objective_kind != "margin":
        return 0.0
    return best["min_margin"] if best is not None else None


def _twin(trial, params):
    """A finished trial with the same point, else a running one that claimed it, else None."""
    running = None
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number == trial.number or t.params != params:
            continue
        if t.state == TrialState.COMPLETE and "robustness" in t.user_attrs:
            return t
        if t.state == TrialState.RUNNING and t.user_attrs.get("claim"):
            running = t
    return running


def _finish(study, space, objective, budget_bytes, objective_kind, sampler, seed, run: RunDir, started, timings, url,
            name, plan_meta, *, finish=None, interrupted=False):
    rows = trial_rows(study, space.params)
    # what the trials depend on, so a report can tell runs of other inputs apart
    identity = (study.user_attrs.get("toggle") or {}).get("identity")
    # every session of the study (a resumed one included): its trials' seconds are summed over them all
    wall = float(study.user_attrs.get("wall_seconds") or 0.0) + time.perf_counter() - started
    study.set_user_attr("wall_seconds", round(wall, 2))
    summary, plan = summarise(rows, objective_fn=objective, space=space, budget_bytes=budget_bytes,
                              objective=objective_kind, sampler=sampler, seed=seed, wall_seconds=wall,
                              extra={**timings, "study": name, "storage": redact(url),
                                     **({"identity": identity} if identity else {})})
    if plan is not None and plan_meta:
        plan.meta.update(plan_meta)
    run.write_results(rows, plan, list(objective.properties), space.params)
    if finish is not None:
        try:
            finish(summary, plan)
        except KeyboardInterrupt:  # during the held-out audit or the model: the summary still says what the study holds
            summary["interrupted"] = True
            run.write_summary(summary)
            raise
    elif interrupted:
        summary["interrupted"] = True
    run.write_summary(summary)
    return SearchResult(run_dir=run.path, summary=summary, plan=plan, study_name=name, storage=url)
