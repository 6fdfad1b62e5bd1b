"""Optuna samplers over a SearchSpace: constrained BO (BoTorch) and budget-aware random search.

Both propose a whole point at once (`sample_relative`) and only points within the size budget:
the cost of a plan is known exactly and cheaply, so no model evaluation is spent on a plan
that cannot fit. Constraints are stored on each trial by the study's objective function with
Optuna's `trial.set_constraint` (robustness:<property> = -robustness, size = bytes - budget,
valid = 1 when the evaluation failed), so Optuna's own tooling and samplers see them.

The BO acquisition is constrained expected improvement with a *known* objective
(Gardner et al. 2014, with the cost computed, not modelled):

    log a(x) = log(c* - c(x)) + sum_p log P(robustness_p(x) >= 0)

c(x) is the exact cost (bytes or FLOPs), c* the cheapest feasible plan so far, and each
property's robustness has its own GP (BoTorch SingleTaskGP, whose dimension-scaled lengthscale
prior keeps 60-200 dimensions workable). EI of a deterministic objective is exactly the
improvement, and evaluations are deterministic (one teacher-forced pass), so neither a GP on
cost nor a noisy-EI incumbent is needed. Until a feasible plan exists the acquisition is the
probability of feasibility alone.

With measured-error profiling BO first bisects the allocator's path, then the uniform settings
cheaper than the best plan so far (ladder.py): its incumbent is the best of both baselines before
any GP proposal, at a few evaluations' cost.

Candidates come from a trust region around the incumbent (TuRBO/SCBO style: a random ~20 dimensions
perturbed by at most the region's length; the length doubles after 2 successes and halves after 3
failures, replayed from the study's history so resumed runs and other workers agree), plus 10%
random in-budget points, all restricted to the space that sensitivity profiling allows; with
measured errors also re-allocated allocator paths and the allocator's path continued from the
incumbent. The region has a length in cost too: a proposal saves at most 5% x length / maximum
length below the incumbent (2% at the initial length, 0.25% at the smallest). On the built-in model
the frontier is a knife edge (one prompt's worst step decides), and without this bound EI kept
buying 5% jumps at a predicted 5-25% feasibility that never held. Pending trials (running in other
workers) are handled by the kriging believer: the GPs are conditioned on their predicted means, and
a pending point predicted feasible counts as an incumbent, which pushes parallel proposals apart.
"""
from __future__ import annotations

import math
import time

import numpy as np
import optuna
import torch
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from .costs import CostTable
from .ladder import Ladder, ladder_state
from .measure import allocation_path, budget_plan
from .space import SearchSpace


class SpaceSampler(BaseSampler):
    """Proposes whole points of a SearchSpace within the budget; subclasses choose how."""

    name = "space"

    def __init__(self, space: SearchSpace, costs: CostTable, budget_bytes: float, *, objective: str = "size",
                 seed: int | None = 0, limit: np.ndarray | None = None):
        self.space, self.costs, self.budget = space, costs, float(budget_bytes)
        self.objective = objective
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.limit = np.asarray(limit if limit is not None else space.sizes - 1)
        self.last_seconds = 0.0
        self.last_info: dict = {}

    # --- Optuna sampler API -----------------------------------------------------------------
    def infer_relative_search_space(self, study, trial):
        return self.space.distributions()

    def sample_relative(self, study, trial, search_space):
        self.last_seconds, self.last_info = 0.0, {}
        # An enqueued point (a warm start, a recovered trial) carries its values under Optuna's
        # "fixed_params" system attribute and the trial uses them whatever a sampler returns:
        # nothing to decide, so no GP is fitted for it.
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small GP algebra: threads only contend with the model's
        try:
            index = self._propose_seeded(study, trial)
        finally:
            torch.set_num_threads(threads)
        self.last_seconds = time.perf_counter() - t0
        return {p: v for p, v in self.space.to_params(index).items() if p in search_space}

    def _propose_seeded(self, study, trial) -> np.ndarray:
        # One stream per trial number: reproducible on resume, different across parallel workers.
        self._rng = np.random.default_rng(None if self.seed is None else [self.seed, trial.number])
        return self.propose(study, trial)

    def sample_independent(self, study, trial, param_name, param_distribution):
        choices = getattr(param_distribution, "choices", None)
        if choices is not None:
            return choices[int(self._rng.integers(len(choices)))]
        return optuna.samplers.RandomSampler(seed=int(self._rng.integers(2**31))).sample_independent(
            study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()

    # --- helpers ----------------------------------------------------------------------------
    def propose(self, study, trial) -> np.ndarray:
        raise NotImplementedError

    def value_of(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(objective value, bytes) of each row."""
        size, flops = self.costs.of(index)
        return (flops if self.objective == "flops" else size), size

    def random_point(self, study, trial) -> np.ndarray:
        """A random in-budget point not tried before (when the pool allows)."""
        seen = _seen(self.space, study, trial)
        pool = self.random_in_budget(64)
        fits = self.costs.of(pool)[0] <= self.budget
        fresh = [x for x, ok in zip(pool, fits) if ok and tuple(x.tolist()) not in seen]
        return fresh[0] if fresh else pool[0]

    def random_in_budget(self, n: int) -> np.ndarray:
        """Uniform random points of the allowed space, then compressed further at random dimensions
        until they fit the budget (a random plan that cannot fit would waste an evaluation)."""
        x = (self._rng.random((n, len(self.limit))) * (self.limit + 1)).astype(np.int64)
        step = max(1, len(self.limit) // 20)
        for _ in range(20 * len(self.limit)):
            over = np.nonzero(self.costs.of(x)[0] > self.budget)[0]
            if len(over) == 0:
                break
            cols = self._rng.integers(0, len(self.limit), size=(len(over), step))
            rows = np.repeat(over, step)
            x[rows, cols.ravel()] = np.minimum(x[rows, cols.ravel()] + 1, self.limit[cols.ravel()])
            if np.all(x[over] == self.limit):
                break
        # Rows still over (more compression can cost bytes: a sparsity bitmask on a 3-bit matrix)
        # take the cheapest plan the allowed space has.
        over = self.costs.of(x)[0] > self.budget
        if over.any():
            x[over] = self.costs.min_bytes_index(self.limit)
        return x


class RandomSearchSampler(SpaceSampler):
    """Random search baseline: a uniform random point, compressed further until it fits."""

    name = "random"

    def propose(self, study, trial) -> np.ndarray:
        return self.random_point(study, trial)


class ConstrainedBOSampler(SpaceSampler):
    """Constrained BO with a known cost objective; see the module docstring."""

    name = "bo"

    def __init__(self, space, costs, budget_bytes, *, objective="size", seed=0, limit=None, prior=None, n_startup: int = 4,
                 n_candidates: int = 3000, random_fraction: float = 0.1, length_init: float = 0.4,
                 length_min: float = 0.05, length_max: float = 1.0, success_tol: int = 2, failure_tol: int = 3,
                 ladder: list | None = None, features=None, measured=None, reallocations: int = 12,
                 uniform: list | None = None, step_max: float = 0.05):
        """With `ladder` (the measured-error allocator's path within the budget), BO first bisects
        along it, as the allocator does, then fits its GPs (on `features`, the prior's predicted
        loss per zone of groups) and proposes swaps, trust-region moves and re-allocations with
        perturbed group sensitivities (`measured`: toggle.search.measure.AdditiveModel). With
        `uniform` (the uniform settings within the budget, most expensive first), BO then bisects the
        uniform settings cheaper than the best plan found so far: where the measurements rank groups
        wrongly, one setting everywhere can beat the allocator's path, and BO's plan must never be
        larger than a baseline's that costs a few evaluations to find."""
        super().__init__(space, costs, budget_bytes, objective=objective, seed=seed, limit=limit)
        self.ladder = ladder
        self.features, self.measured, self.reallocations = features, measured, reallocations
        # Under --objective margin the ladder starts with the allocator's plan for the budget and
        # the path's first plan within it: the additive model's prediction can rank them wrongly
        # (far below the frontier, where drops stop adding up), so BO starts from the better.
        self._ladder = Ladder(ladder, objective, head=2) if ladder is not None else None
        self._uniform = Ladder(uniform, objective) if uniform and objective != "margin" else None
        self.n_startup, self.n_candidates, self.random_fraction = n_startup, n_candidates, random_fraction
        self.length_init, self.length_min, self.length_max = length_init, length_min, length_max
        self.success_tol, self.failure_tol = success_tol, failure_tol
        self.step_max = step_max  # largest relative saving proposed at the region's full length
        self.prior = prior  # callable: index matrix -> (N, properties) predicted robustness, with .names
        self._warm: list | None = None  # last GP hyperparameters, to start the next fit from

    def propose(self, study, trial) -> np.ndarray:
        obs = observations(self.space, study)
        seen = _seen(self.space, study, trial)
        if self.ladder is not None:
            results, pending = ladder_state(self.space, study, trial)
            rung = self._ladder.next_rung(results, pending, bisect_only=True)
            if rung is not None:
                self.last_info = {"strategy": "allocator path"}
                return rung
            rung = self._uniform_below_best(results, pending)
            if rung is not None:
                self.last_info = {"strategy": "uniform"}
                return rung
        elif len(obs["index"]) < self.n_startup:
            self.last_info = {"strategy": "startup-random"}
            return self.random_point(study, trial)
        if len(obs["index"]) == 0:
            return self.random_point(study, trial)

        from .gp import Surrogate  # BoTorch takes seconds to import: only when BO first fits a GP

        if self.objective == "margin":
            return self._propose_margin(study, trial, obs, seen, Surrogate)
        value = obs["bytes"] if self.objective == "size" else obs["flops"]
        feasible = obs["feasible"] & (obs["bytes"] <= self.budget)
        surrogate = Surrogate(self.space, obs, self.prior, warm=self._warm, features=self.features)
        self._warm = surrogate.state()

        pending = _pending(self.space, study, trial)
        pend_value = pend_feasible = np.zeros(0)
        if len(pending):
            mean = surrogate.condition_on_pending(pending)
            pend_value = self.value_of(pending)[0]
            pend_feasible = np.all(mean >= 0, axis=1)

        all_value = np.concatenate([value, pend_value])
        all_feasible = np.concatenate([feasible, pend_feasible])
        all_index = np.concatenate([obs["index"], pending]) if len(pending) else obs["index"]
        if all_feasible.any():
            best = int(np.argmin(np.where(all_feasible, all_value, np.inf)))
            incumbent, c_star = all_index[best], float(all_value[best])
        else:  # SCBO: start from the least infeasible plan that fits the budget
            scaled = obs["robustness"] / (obs["robustness"].std(axis=0) + 1e-9)
            score = np.where(obs["bytes"] <= self.budget, scaled.min(axis=1), -np.inf)
            incumbent, c_star = obs["index"][int(np.argmax(score))], None

        length = trust_length(value, feasible, self.length_init, self.length_min, self.length_max,
                              self.success_tol, self.failure_tol)
        # The trust region in cost: at most `step` below the incumbent. Near the frontier the GPs'
        # feasibility is least reliable far from the data, so EI (improvement x feasibility)
        # otherwise keeps buying long jumps that fail.
        step = self.step_max * length / self.length_max
        floor = c_star * (1.0 - step) if c_star is not None else None
        cands = self._candidates(incumbent, length)
        if self.measured is not None:
            cands = np.concatenate([cands, self._reallocate(c_star, floor)])
            if c_star is not None:
                cands = np.concatenate([cands, self._descend(incumbent, floor)])
        cand_value, cand_bytes = self.value_of(cands)
        keep = cand_bytes <= self.budget
        keep &= np.array([tuple(x.tolist()) not in seen for x in cands])
        if c_star is not None:
            keep &= cand_value < c_star
            near = keep & (cand_value >= floor)
            if near.any():
                keep = near
        if not keep.any():
            self.last_info = {"strategy": "random (trust region exhausted)", "tr_length": length}
            return self.random_point(study, trial)
        cands, cand_value = _unique_rows(cands[keep], cand_value[keep])

        log_pf = surrogate.log_prob_feasible(cands)
        acq = log_pf + (np.log(c_star - cand_value) if c_star is not None else 0.0)
        best = int(np.argmax(acq))
        self.last_info = {"strategy": "bo", "tr_length": round(length, 4), "pool": int(len(cands)),
                          "max_step": round(step, 5) if c_star is not None else None,
                          "prob_feasible": float(np.exp(log_pf[best])), "pending": int(len(pending))}
        return cands[best]

    def _uniform_below_best(self, results: dict[tuple, bool], pending: set[tuple]) -> np.ndarray | None:
        """The next uniform setting to bisect among those cheaper than the best feasible plan so far
        (the more expensive ones count as passed: nothing is learnt from them), or None when done."""
        if self._uniform is None or not len(self._uniform):
            return None
        feasible = [np.array(k) for k, ok in results.items() if ok]
        best = float(self.value_of(np.stack(feasible))[0].min()) if feasible else math.inf
        rungs = np.stack(self._uniform.points)
        known = dict(results)
        for point, value in zip(rungs, self.value_of(rungs)[0]):
            if value >= best:
                known.setdefault(tuple(point.tolist()), True)
        return self._uniform.next_rung(known, pending, bisect_only=True)

    def _propose_margin(self, study, trial, obs, seen, Surrogate) -> np.ndarray:
        """--objective margin: expected improvement of the smallest robustness over properties,
        among plans within the budget (Monte Carlo over the GPs' independent posteriors)."""
        surrogate = Surrogate(self.space, obs, self.prior, warm=self._warm, features=self.features)
        self._warm = surrogate.state()
        fits = obs["bytes"] <= self.budget
        margins = np.where(fits, obs["robustness"].min(axis=1), -np.inf)
        best_i = int(np.argmax(margins))
        incumbent, m_star = obs["index"][best_i], float(margins[best_i])
        length = trust_length(-margins, fits, self.length_init, self.length_min, self.length_max,
                              self.success_tol, self.failure_tol)
        cands = self._candidates(incumbent, length)
        if self.measured is not None:
            cands = np.concatenate([cands, self._reallocate(None), self._budget_plans()])
        keep = (self.value_of(cands)[1] <= self.budget) & np.array([tuple(x.tolist()) not in seen for x in cands])
        if not keep.any():
            self.last_info = {"strategy": "random (no candidate left)"}
            return self.random_point(study, trial)
        cands = _unique_rows(cands[keep])[0]
        mu, sd = surrogate.predict(cands)
        draws = mu[None] + sd[None] * self._rng.standard_normal((64, *mu.shape))
        ei = np.maximum(draws.min(axis=2) - m_star, 0.0).mean(axis=0)
        best = int(np.argmax(ei + 1e-9 * mu.min(axis=1)))  # ties: the larger predicted margin
        self.last_info = {"strategy": "bo-margin", "pool": int(len(cands)), "ei": float(ei[best])}
        return cands[best]

    def _reallocate(self, c_star: float | None, floor: float | None = None) -> np.ndarray:
        """Points of the measured-error allocator's path recomputed with every group's predicted
        drops scaled by a random log-normal factor: where the measurement ranks groups wrongly,
        another order of moves finds the plans it misses. Only points within the budget and (with an
        incumbent) cheaper than it are kept; a path stops at `floor`."""
        out = []
        for _ in range(self.reallocations):
            factors = np.exp(self._rng.normal(0.0, 0.5, len(self.measured.drops)))
            pts = np.stack(self._path_with(factors, objective="size" if self.objective == "margin" else self.objective,
                                           floor=floor))
            value, size = self.value_of(pts)
            ok = size <= self.budget
            if c_star is not None:
                ok &= value < c_star
            out.extend(pts[ok][:8] if c_star is None else pts[ok])
        width = len(self.space.dims)
        return np.array(out, dtype=np.int64).reshape(len(out), width)

    def _descend(self, incumbent: np.ndarray, floor: float | None = None) -> np.ndarray:
        """The measured-error allocator's path continued from the incumbent (every point cheaper
        than it) down to `floor`, as measured and with every group's drops scaled by a random
        log-normal factor: the next groups to compress from the best plan so far, in a few
        plausible orders."""
        out = []
        n = len(self.measured.drops)
        for k in range(max(1, self.reallocations // 2)):
            factors = np.ones(n) if k == 0 else np.exp(self._rng.normal(0.0, 0.5, n))
            out.extend(self._path_with(factors, limit=self.limit, objective=self.objective, start=incumbent,
                                       floor=floor)[1:])
        width = len(self.space.dims)
        return np.array(out, dtype=np.int64).reshape(len(out), width)

    def _budget_plans(self) -> np.ndarray:
        """--objective margin: the allocator's plan for the budget (measure.budget_plan) with every
        group's drops scaled by a random log-normal factor, a few times: the most robust plans
        within the budget under plausible corrections of the measurements."""
        n, out = len(self.measured.drops), []
        for _ in range(max(1, self.reallocations // 4)):
            factors = np.exp(self._rng.normal(0.0, 0.5, n))
            plan = self._with_factors(factors, lambda: budget_plan(self.measured, self.costs, self.budget, self.limit))
            if plan is not None:
                out.append(plan)
        width = len(self.space.dims)
        return np.array(out, dtype=np.int64).reshape(len(out), width)

    def _path_with(self, factors: np.ndarray, **options) -> list[np.ndarray]:
        """The allocator's path (allocation_path's `options`) with every group's measured drops
        scaled by its factor."""
        return self._with_factors(factors, lambda: allocation_path(self.measured, self.costs, **options)[0])

    def _with_factors(self, factors: np.ndarray, compute):
        """compute() with every group's measured drops scaled by its factor; the measurements
        themselves are left as they were."""
        base = self.measured.drops
        self.measured.drops = [d * f for d, f in zip(base, factors)]
        try:
            return compute()
        finally:
            self.measured.drops = base

    def _candidates(self, incumbent: np.ndarray, length: float) -> np.ndarray:
        n_rand = int(self.n_candidates * self.random_fraction)
        n_tr = self.n_candidates - n_rand
        d = len(incumbent)
        # Expected number of dimensions moved shrinks with the region: 20 at full length
        # (TuRBO/SCBO's cap for high dimensions), 1 at the smallest.
        prob = min(1.0, max(1.0, 20.0 * length / self.length_max) / d)
        mask = self._rng.random((n_tr, d)) < prob
        mask[np.arange(n_tr), self._rng.integers(0, d, n_tr)] = True  # at least one dimension moves
        u = self._rng.uniform(-length, length, (n_tr, d)) * (self.space.sizes - 1)
        step = np.where(np.abs(u) < 0.5, np.sign(u), np.round(u)).astype(np.int64)
        tr = np.clip(incumbent[None, :] + np.where(mask, step, 0), 0, self.limit[None, :])
        return np.concatenate([tr, self._swaps(incumbent, n_tr // 2), self.random_in_budget(n_rand)])

    def _swaps(self, incumbent: np.ndarray, n: int) -> np.ndarray:
        """1-3 trades of one step each: compress one dimension, relax another. Near the feasibility
        edge these are the moves that can still shrink a plan (bits moved from sensitive groups to
        robust ones)."""
        d = len(incumbent)
        out = np.repeat(incumbent[None, :], n, axis=0)
        for k in range(3):
            rows = np.nonzero(self._rng.random(n) < (1.0 if k == 0 else 0.4))[0]
            up, down = self._rng.integers(0, d, len(rows)), self._rng.integers(0, d, len(rows))
            out[rows, up] += 1
            out[rows, down] -= 1
        return np.clip(out, 0, self.limit[None, :])


def _unique_rows(cands: np.ndarray, *aligned: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each distinct candidate once, in first-seen order (re-allocated paths and trust-region draws
    repeat points; the GPs need not score them twice, and argmax still picks the first)."""
    _, first = np.unique(cands, axis=0, return_index=True)
    first = np.sort(first)
    return (cands[first], *(a[first] for a in aligned))


# --- study history -----------------------------------------------------------------------

def observations(space: SearchSpace, study) -> dict:
    """Completed, evaluated trials of the study as arrays (index, robustness, bytes, flops, feasible)."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rob = t.user_attrs.get("robustness")
        if not isinstance(rob, dict) or not all(p in t.params for p in space.params):
            continue
        rows.append((t.number, space.to_index(t.params), rob, t.user_attrs.get("bytes", math.inf),
                     t.user_attrs.get("flops_per_token", math.inf), t.user_attrs.get("reason")))
    rows.sort(key=lambda r: r[0])
    names = sorted({k for r in rows for k in r[2]})
    rob = np.array([[_finite(r[2].get(n)) for n in names] for r in rows]).reshape(len(rows), len(names))
    return {
        "index": np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), len(space.dims)),
        "robustness": _fill_nonfinite(rob),
        "raw_robustness": rob,
        "names": names,
        "bytes": np.array([r[3] for r in rows], dtype=float),
        "flops": np.array([r[4] for r in rows], dtype=float),
        "feasible": np.array([r[5] is None and all(x >= 0 for x in rr)  # +inf: vacuously true, holds
                              for r, rr in zip(rows, rob)], dtype=bool),
    }


def _finite(v) -> float:
    """A trial's robustness as the GP sees it: a failed evaluation (stored as null) is -inf; a
    vacuously true property stays +inf."""
    if v is None or math.isnan(float(v)):
        return -math.inf
    return float(v)


def _fill_nonfinite(y: np.ndarray) -> np.ndarray:
    """Failed evaluations (NaN logits) count as a clearly bad but finite margin for the GP, a
    vacuously true property as a clearly good one."""
    y = y.copy()
    for j in range(y.shape[1]):
        col = y[:, j]
        ok = np.isfinite(col)
        spread = max(np.ptp(col[ok]), 1.0) if ok.any() else 1.0
        col[col == -np.inf] = (col[ok].min() - spread) if ok.any() else -1.0
        col[col == np.inf] = (col[ok].max() + spread) if ok.any() else 1.0
    return y


def _seen(space: SearchSpace, study, trial) -> set[tuple]:
    seen = set()
    for t in study.get_trials(deepcopy=False):
        if t.number != trial.number and all(p in t.params for p in space.params):
            seen.add(tuple(space.to_index(t.params).tolist()))
    return seen


def _pending(space: SearchSpace, study, trial) -> np.ndarray:
    rows = [space.to_index(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != trial.number and all(p in t.params for p in space.params)]
    return np.array(rows, dtype=np.int64).reshape(len(rows), len(space.dims))


def trust_length(value, feasible, init, lo, hi, success_tol, failure_tol) -> float:
    """TuRBO's length schedule, replayed over the trials in order."""
    length, best, succ, fail = init, math.inf, 0, 0
    for v, ok in zip(value, feasible):
        if ok and v < best - 1e-3 * abs(best if math.isfinite(best) else v):
            best, succ, fail = v, succ + 1, 0
        else:
            succ, fail = 0, fail + 1
        if succ >= success_tol:
            length, succ = min(2 * length, hi), 0
        if fail >= failure_tol:
            length, fail = length / 2, 0
            if length < lo:
                length = init  # restart the region's size, still around the incumbent
    return length


