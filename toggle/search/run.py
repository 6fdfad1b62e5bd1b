"""Run a search against any Objective: the study, its trials, resume, Ctrl-C, outputs.

    result = run_study(objective, budget_bytes, profile=load_profile("default"), run_dir=Path("runs/x"))

Every trial: the sampler (or a baseline's ladder) picks a point, its exact cost is computed,
a plan over the budget is pruned without a model evaluation, otherwise the objective scores it
and the trial records robustness per property, the infeasibility reason and Optuna constraints
(robustness:<p> = -robustness, size = bytes/budget - 1, valid = 1 if the evaluation failed).
The trial's value is the plain cost (bytes or FLOPs per token), feasible or not.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from ..errors import InvalidInput
from ..plan import Plan
from ..units import format_bytes
from . import outputs
from .costs import CostTable
from .ladder import LadderStrategy, path_ladder, uniform_ladder
from .objective import Objective, Outcome
from .profile import SearchProfile
from .progress import Progress
from .sampler import ConstrainedBOSampler, RandomSearchSampler
from .sensitivity import AdditivePrior, SensitivityProfile, allowed_max, greedy_path, run_profiling, table_rows
from .space import SearchSpace
from .storage import WORKER, open_storage, recover_orphans, redact

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _NoInterruptTraceback(logging.Filter):
    """Ctrl-C or SIGTERM during a trial: optuna logs the trial as failed with a traceback.
    toggle says "interrupted", saves, and the next run recovers the trial: the traceback is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


logging.getLogger("optuna.study._optimize").addFilter(_NoInterruptTraceback())

SAMPLERS = ("bo", "random", "uniform", "greedy")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class SearchResult:
    run_dir: Path
    summary: dict
    plan: Plan | None  # the best plan satisfying every property within the budget
    study_name: str
    storage: str
    sensitivity: SensitivityProfile | None = None

    @property
    def satisfied(self) -> bool:
        return bool(self.summary.get("satisfied"))

    @property
    def exit_code(self) -> int:
        return 0 if self.satisfied else 1


def run_study(objective: Objective, budget_bytes: int, *, profile: SearchProfile, run_dir: str | Path,
              trials: int | None = None, sampler: str = "bo", objective_kind: str = "size", seed: int | None = None,
              storage: str | None = None, study_name: str | None = None, profiling_objective: Objective | None = None,
              progress: bool = False, sampler_options: dict | None = None, plan_meta: dict | None = None) -> SearchResult:
    if sampler not in SAMPLERS:
        raise InvalidInput(f"--sampler: {sampler!r} is not valid; expected one of {', '.join(SAMPLERS)}")
    if objective_kind not in ("size", "flops"):
        raise InvalidInput(f"--objective: {objective_kind!r} is not valid; expected size or flops")
    started = time.perf_counter()
    run_dir = Path(run_dir)
    n_trials = trials if trials is not None else profile.trials
    if n_trials < 1:
        raise InvalidInput(f"--trials: {n_trials} is not valid; expected an integer >= 1")
    seed = profile.seed if seed is None else seed
    if seed < 0:
        raise InvalidInput(f"--seed: {seed} is not valid; expected an integer >= 0")
    space = SearchSpace(objective.model_id, objective.refs, profile)
    costs = CostTable(space, objective.cost)
    _check_budget(budget_bytes, costs, objective, profile)

    store, url = open_storage(storage, run_dir)
    name = study_name or f"{sampler}-{objective_kind}-{int(budget_bytes)}"
    study = optuna.create_study(storage=store, study_name=name, direction="minimize", load_if_exists=True)
    recover_orphans(study)  # trials a killed run left RUNNING are failed and queued again
    study.set_user_attr("toggle", {"model": objective.model_id, "profile": profile.name, "budget_bytes": int(budget_bytes),
                                   "objective": objective_kind, "sampler": sampler, "properties": list(objective.properties)})

    bar = Progress(progress, n_trials, _finished(study), objective.base16_bytes)
    prof: SensitivityProfile | None = None
    timings = {"profiling_seconds": 0.0}
    try:
        limit, strategy, prior = None, None, None
        if sampler in ("bo", "greedy"):
            prof, limit, path, est, prior = _profile(space, costs, profiling_objective or objective, run_dir, study, bar,
                                              objective_kind)
            timings["profiling_seconds"] = round(prof.seconds, 2)
            timings["profiling_evaluations"] = len(prof.entries) + 1
        if sampler == "bo":
            chosen = ConstrainedBOSampler(space, costs, budget_bytes, objective=objective_kind, seed=seed, limit=limit,
                                          prior=prior, **(sampler_options or {}))
            if not study.get_trials(deepcopy=False):
                for index in warm_starts(path, est, costs, budget_bytes, objective_kind):
                    study.enqueue_trial(space.to_params(index), user_attrs={"source": "warm-start"}, skip_if_exists=True)
        else:
            chosen = RandomSearchSampler(space, costs, budget_bytes, objective=objective_kind, seed=seed)
        if sampler == "uniform":
            strategy = LadderStrategy("uniform", uniform_ladder(space, costs, budget_bytes, objective_kind))
        elif sampler == "greedy":
            strategy = LadderStrategy("greedy", path_ladder(path, costs, budget_bytes, objective_kind))
        study.sampler = chosen
        func = _trial_function(space, objective, chosen, budget_bytes, objective_kind)
        bar.phase(f"{sampler} trials", n_trials, _finished(study))
        while _finished(study) < n_trials:
            if strategy is not None:
                results, pending = _ladder_state(space, study)
                point = strategy.next(results, pending)
                if point is None:
                    bar.print(f"{strategy.name}: every rung of the ladder within the budget has been evaluated")
                    break
                study.enqueue_trial(space.to_params(point), user_attrs={"source": strategy.name})
            study.optimize(func, n_trials=1, catch=())
            rows = outputs.trial_rows(study, space)
            best = outputs.best_row(rows, objective_kind)
            last = rows[-1] if rows else None
            bar.step(len(rows), bar.trial_status(best["bytes"] if best else None,
                                                 last["robustness"] if last else {}, last["reason"] if last else None))
    except KeyboardInterrupt:
        bar.close()
        _finish(study, space, objective, budget_bytes, objective_kind, sampler, seed, run_dir, started, timings, url, name,
                plan_meta)
        raise
    finally:
        bar.close()
    result = _finish(study, space, objective, budget_bytes, objective_kind, sampler, seed, run_dir, started, timings,
                     url, name, plan_meta)
    result.sensitivity = prof
    return result


def _check_budget(budget_bytes, costs: CostTable, objective, profile) -> None:
    smallest = objective.cost(costs.space.plan(costs.space.to_params(costs.min_bytes_index()))).bytes
    if budget_bytes < smallest:
        raise InvalidInput(
            f"--budget: {format_bytes(budget_bytes)} ({int(budget_bytes)} bytes) is smaller than the most compressed "
            f"plan profile '{profile.name}' allows: {format_bytes(smallest)} ({int(smallest)} bytes); raise the budget "
            f"or allow more compression in {profile.source or 'the profile'}")


def _finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _profile(space, costs, objective, run_dir, study, bar, objective_kind):
    from .sensitivity import profiling_points

    total = len(profiling_points(space))
    bar.phase("sensitivity profiling", total)
    prof = run_profiling(space, objective, run_dir / "sensitivity.json", study=study,
                         on_step=lambda done, _total: bar.step(done))
    limit = allowed_max(space, prof)
    prior = AdditivePrior(space, prof)
    path, est = greedy_path(space, costs, prior.loss(), limit, objective=objective_kind)
    if bar.enabled:
        bar.print(_sensitivity_table(space, prof, limit))
    return prof, limit, path, est, prior


def _sensitivity_table(space, prof, limit):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head, rows = table_rows(space, prof)
    dropped = int(np.sum(space.sizes - 1 - limit))
    # The title goes on its own line: as a table title it would wrap to the table's narrow width.
    title = Text(f"sensitivity: minimum robustness margin with one group compressed "
                 f"({len(prof.entries)} evaluations, {prof.seconds:.0f} s; {dropped} knob values dropped)")
    table = Table()
    for h in head:
        table.add_column(h, justify="left" if h == "group" else "right")
    for r in rows:
        table.add_row(*[f"[red]{c}[/red]" if c.startswith("-") or c == "NaN" else c for c in r])
    return Group(title, table)


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


def _ladder_state(space, study) -> tuple[dict[tuple, bool], set[tuple]]:
    results, pending = {}, set()
    for t in study.get_trials(deepcopy=False):
        if not all(p in t.params for p in space.params):
            if t.state == TrialState.WAITING and "fixed_params" in t.system_attrs:
                pending.add(tuple(space.to_index(t.system_attrs["fixed_params"]).tolist()))
            continue
        key = tuple(space.to_index(t.params).tolist())
        if t.state in FINISHED:
            results[key] = t.state == TrialState.COMPLETE and all(c <= 0 for c in t.constraints.values())
        elif t.state == TrialState.RUNNING:
            pending.add(key)
    return results, pending


def _trial_function(space: SearchSpace, objective: Objective, sampler, budget_bytes: float, objective_kind: str):
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
                          reason=twin.user_attrs.get("reason"))
            trial.set_user_attr("eval_seconds", 0.0)
        else:
            t0 = time.perf_counter()
            out = objective.evaluate(plan)
            trial.set_user_attr("eval_seconds", round(time.perf_counter() - t0, 4))
        trial.set_user_attr("robustness", {k: _finite_or_none(v) for k, v in out.robustness.items()})
        if out.per_prompt:
            trial.set_user_attr("per_prompt", _jsonable(out.per_prompt))
        trial.set_user_attr("reason", out.reason)
        for name in objective.properties:
            r = out.robustness.get(name, -math.inf)
            trial.set_constraint(f"robustness:{name}", -r if math.isfinite(r) else math.inf)
        trial.set_constraint("valid", 1.0 if out.reason else 0.0)
        return float(cost.bytes if objective_kind == "size" else cost.flops_per_token)

    return func


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


def _finite_or_none(v):
    return float(v) if v is not None and math.isfinite(v) else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) or hasattr(obj, "item"):
        return _finite_or_none(float(obj))
    return obj


def _finish(study, space, objective, budget_bytes, objective_kind, sampler, seed, run_dir, started, timings, url, name,
                plan_meta):
    rows = outputs.trial_rows(study, space)
    summary, plan = outputs.summarise(rows, objective_fn=objective, space=space, budget_bytes=budget_bytes,
                                      objective=objective_kind, sampler=sampler, seed=seed,
                                      wall_seconds=time.perf_counter() - started,
                                      extra={**timings, "study": name, "storage": redact(url)})
    if plan is not None and plan_meta:
        plan.meta.update(plan_meta)
    outputs.write_outputs(run_dir, rows, summary, plan, list(objective.properties), space.params)
    return SearchResult(run_dir=run_dir, summary=summary, plan=plan, study_name=name, storage=url)
