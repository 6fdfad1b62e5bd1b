"""Measured-error profiling, the additive model, the measured-error allocator, BO that starts from
it, --objective margin and early stops in the study, on the synthetic problem."""
from __future__ import annotations

import numpy as np
import pytest

from toggle.rundir import MEASURED, RunDir
from toggle.search import parse_profile, run_study
from toggle.search.costs import CostTable
from toggle.search.measure import AdditiveModel, allocation_path, budget_plan, probe_option, refill, run_measurement
from toggle.search.space import SearchSpace
from toggle.search.synthetic import SyntheticObjective

PROFILE = parse_profile({"knobs": {"bits": [16, 8, 6, 5, 4, 3, 2], "group_size": [32, 64, 128]},
                         "embedding": {"bits": [16, 8, 6, 5, 4]}, "methods": {"group_size": 32},
                         "sensitivity": {"method": "measured", "prompts": 3}}, name="measured")


def _setup(blocks=4):
    obj = SyntheticObjective(blocks=blocks, seed=0)
    space = SearchSpace(obj.model_id, obj.refs, PROFILE)
    return obj, space, CostTable(space, obj.cost)


def test_measurement_probes_each_group_once_and_resumes(tmp_path):
    obj, space, costs = _setup()
    store = RunDir(tmp_path).store(MEASURED)
    m = run_measurement(space, costs, obj, obj, store)
    assert m.evaluations == 1 + len(space.groups)  # the untouched model, one probe per group
    assert all(e[0] == 0.0 for e in m.errors)  # the untouched option
    assert {p["group"] for p in m.probes} == {g.name for g in space.groups}
    n = obj.evaluations
    again = run_measurement(space, costs, obj, obj, store)
    assert obj.evaluations == n and again.probes == m.probes  # nothing measured twice


def test_the_additive_model_reproduces_each_probe_and_ranks_options():
    obj, space, costs = _setup()
    m = run_measurement(space, costs, obj, obj)
    model = AdditiveModel(space, costs, m)
    for gi, probe in enumerate(m.probes):
        point = costs.with_combo(space.untouched(), gi, probe["option"])
        predicted = model.predict(point)[0]
        for j, p in enumerate(model.names):
            assert predicted[j] == pytest.approx(probe["robustness"][p], abs=1e-9)
    assert probe_option([0.0, 1e-3, 1e-2, 1e-1, 1.0]) in (3, 4)  # a strong option, on a log scale
    assert probe_option([0.0]) is None


def test_allocation_path_gets_cheaper_and_consumes_more_margin():
    obj, space, costs = _setup()
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    path, losses = allocation_path(model, costs)
    sizes = costs.of(np.stack(path))[0]
    assert len(path) > len(space.groups) and np.all(np.diff(sizes) < 0)
    assert losses[0] == 0 and np.all(np.diff(losses) >= -1e-12)


def test_bo_from_the_allocator_path_is_at_least_as_small_as_the_allocator(tmp_path):
    results = {}
    for sampler in ("uniform", "allocator", "bo"):
        obj = SyntheticObjective(blocks=6, seed=0)
        r = run_study(obj, int(obj.base16_bytes * 0.45), profile=PROFILE, run_dir=tmp_path / sampler, trials=16,
                      sampler=sampler, profiling_objective=obj.profiling_view())
        assert r.satisfied, sampler
        results[sampler] = r.summary["compressed_size_bytes"]
        by = r.summary["trials_by_strategy"]
        assert sum(c["trials"] for c in by.values()) == r.summary["trials"] and r.summary["winner_strategy"] in by
        if sampler == "bo":  # it bisects the allocator's path, the uniform settings below it, then proposes from its GP
            assert set(by) == {"allocator path", "uniform", "bo"}, by
    assert results["bo"] <= results["allocator"] < results["uniform"]


def test_bo_is_never_larger_than_uniform_where_the_measurements_mislead_the_allocator(tmp_path):
    """Profiled through a very noisy view, the allocator's path ranks groups wrongly and one uniform
    setting beats it; BO bisects the uniform settings below its best and its GP improves on both."""
    results, by = {}, {}
    for sampler in ("uniform", "allocator", "bo"):
        obj = SyntheticObjective(blocks=6, seed=1)
        r = run_study(obj, int(obj.base16_bytes * 0.45), profile=PROFILE, run_dir=tmp_path / sampler, trials=16,
                      sampler=sampler, profiling_objective=obj.profiling_view(noise=2.5, seed=6), progress=False)
        assert r.satisfied, sampler
        results[sampler], by[sampler] = r.summary["compressed_size_bytes"], r.summary["trials_by_strategy"]
    assert results["uniform"] < results["allocator"]  # the case this test is about
    assert set(by["bo"]) == {"allocator path", "uniform", "bo"}, by["bo"]
    assert by["bo"]["uniform"]["feasible"] >= 1
    assert results["bo"] < results["uniform"]


def test_margin_objective_returns_the_most_robust_plan_within_the_budget(tmp_path):
    obj = SyntheticObjective(blocks=3, seed=0)
    budget = int(obj.base16_bytes * 0.5)
    r = run_study(obj, budget, profile=PROFILE, run_dir=tmp_path, trials=10, sampler="bo", objective_kind="margin",
                  profiling_objective=obj)
    rows, _ = RunDir(tmp_path).read_trials()
    fits = [t for t in rows if t["bytes"] is not None and t["bytes"] <= budget and t["min_margin"] is not None]
    assert r.summary["objective"] == "margin" and r.summary["compressed_size_bytes"] <= budget
    assert r.summary["min_margin"] == pytest.approx(max(t["min_margin"] for t in fits))


class _WithVacuous:
    """The synthetic objective plus a property that is vacuously true (+inf) on every prompt."""

    def __init__(self, obj):
        self.obj = obj

    def __getattr__(self, name):
        return getattr(self.obj, name)

    def evaluate(self, plan, stop_below=None):
        out = self.obj.evaluate(plan, stop_below)
        out.robustness["vacuous"] = np.inf
        return out


def test_a_vacuously_true_property_survives_the_cache_and_costs_no_margin(tmp_path):
    import json

    obj, space, costs = _setup()
    plain = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    store = RunDir(tmp_path).store(MEASURED)
    run_measurement(space, costs, _WithVacuous(obj), _WithVacuous(obj), store)
    cached = json.loads((tmp_path / MEASURED).read_text())
    assert cached["baseline"]["vacuous"] == "inf" and all(p["robustness"]["vacuous"] == "inf" for p in cached["probes"])
    # read back from the file: the vacuous property predicts no drop, the others are unchanged
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj, store))
    j = model.names.index("vacuous")
    assert all(np.all(d[:, j] == 0) for d in model.drops)
    others = [model.names.index(p) for p in plain.names]
    for d, d0 in zip(model.drops, plain.drops):
        np.testing.assert_allclose(d[:, others], d0)
    assert [list(p) for p in allocation_path(model, costs)[0]] == [list(p) for p in allocation_path(plain, costs)[0]]


def _reference_path(model, costs):
    """The allocator written plainly, one group at a time: what the vectorised one must equal."""
    current = np.zeros(len(model.drops), dtype=np.int64)
    totals, loss, path = np.zeros(len(model.names)), 0.0, [costs.index_of(current)]
    while True:
        best = None
        for gi, drops in enumerate(model.drops):
            gain = costs.bytes_delta(gi)[current[gi]] - costs.bytes_delta(gi)
            with np.errstate(invalid="ignore"):
                new_loss = np.max((totals + drops - drops[current[gi]]) / model.scale, axis=1)
            score = np.where((gain > 0) & np.isfinite(new_loss), gain / np.maximum(new_loss - loss, 1e-9), -np.inf)
            ci = int(np.argmax(score))
            if np.isfinite(score[ci]) and (best is None or score[ci] > best[0]):
                best = (score[ci], gi, ci, float(new_loss[ci]))
        if best is None:
            return path
        _, gi, ci, loss = best
        totals = totals + model.drops[gi][ci] - model.drops[gi][current[gi]]
        current[gi] = ci
        path.append(costs.index_of(current))


def test_allocation_path_equals_the_plain_one_group_at_a_time_allocator():
    obj, space, costs = _setup(blocks=6)
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    rng = np.random.default_rng(3)
    model.drops = [d * f for d, f in zip(model.drops, np.exp(rng.normal(0.0, 0.5, len(model.drops))))]
    model.drops[2] = np.where(model.drops[2] > 0, np.inf, 0.0)  # an unprobed group: never moved
    path = allocation_path(model, costs)[0]
    assert len(path) > 20
    assert [p.tolist() for p in path] == [p.tolist() for p in _reference_path(model, costs)]
    assert all(costs.combo_ids(p)[0, 2] == 0 for p in path)


def test_allocation_path_from_a_plan_continues_the_path_through_it():
    """Started at the k-th point of the path (BO continues the allocator's path from its incumbent),
    the allocator takes exactly the moves it took from there, with the same predicted losses."""
    obj, space, costs = _setup(blocks=6)
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    path, losses = allocation_path(model, costs)
    for k in (1, len(path) // 3, len(path) - 2):
        rest, rest_losses = allocation_path(model, costs, start=path[k])
        assert [p.tolist() for p in rest] == [p.tolist() for p in path[k:]]
        assert rest_losses == pytest.approx(losses[k:], abs=1e-12)
    sizes = costs.of(np.stack(path))[0]
    floor = float(sizes[len(path) // 2]) + 0.5  # just above the middle point's size (whole bytes)
    short, _ = allocation_path(model, costs, start=path[2], floor=floor)
    assert [p.tolist() for p in short] == [p.tolist() for p in path[2:len(path) // 2 + 1]]


def test_allocation_path_never_moves_to_an_excluded_option():
    obj, space, costs = _setup(blocks=4)
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    path = allocation_path(model, costs)[0]
    first_move = [(gi, int(ci)) for gi, ci in enumerate(costs.combo_ids(path[1])[0]) if ci != 0]
    assert len(first_move) == 1
    other = allocation_path(model, costs, exclude=first_move)[0]
    gi, ci = first_move[0]
    assert all(costs.combo_ids(p)[0, gi] != ci for p in other) and other[1].tolist() != path[1].tolist()


def test_refill_spends_the_budget_until_no_move_that_fits_lowers_the_predicted_loss():
    obj, space, costs = _setup(blocks=4)
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    path, losses = allocation_path(model, costs)
    sizes = costs.of(np.stack(path))[0]
    k = len(path) * 2 // 3
    budget = float(sizes[k - 5])  # five moves' worth of bytes above the path's k-th plan
    plan = refill(model, costs, path[k], budget)
    size, loss = float(costs.of(plan)[0][0]), float(model.loss(plan)[0])
    assert sizes[k] < size <= budget and loss < losses[k]
    for gi in range(len(space.groups)):  # no single move that fits the budget lowers the loss further
        for ci in range(len(costs.combos(gi))):
            moved = costs.with_combo(plan, gi, ci)
            if costs.of(moved)[0][0] <= budget:
                assert model.loss(moved)[0] >= loss - 1e-12


def test_budget_plan_fits_and_is_predicted_at_least_as_robust_as_the_paths_first_plan_within_it():
    """Under --objective margin the allocator's plan for a budget: the path gets cheaper one move
    at a time and its first plan within a budget can lie well below it; the budget plan refills it
    and tries the path without the move that crossed the budget."""
    obj, space, costs = _setup(blocks=6)
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    path, losses = allocation_path(model, costs)
    sizes = costs.of(np.stack(path))[0]
    better = detour = 0
    for budget in sizes[0] * np.linspace(0.2, 0.95, 40):
        first = int(np.argmax(sizes <= budget))
        plan = budget_plan(model, costs, budget)
        assert costs.of(plan)[0][0] <= budget
        loss = model.loss(plan)[0]
        assert loss <= losses[first] + 1e-12
        better += loss < losses[first] - 1e-12
        detour += loss < model.loss(budget_plan(model, costs, budget, alternatives=0))[0] - 1e-12
    assert better >= 10 and detour >= 5  # both the refill and the detours around a crossing move pay
    assert budget_plan(model, costs, sizes[0]).tolist() == space.untouched().tolist()
    assert budget_plan(model, costs, costs.min_bytes() - 1) is None


def test_margin_objective_starts_from_the_allocators_plan_for_the_budget(tmp_path):
    obj = SyntheticObjective(blocks=4, seed=0)
    budget = int(obj.base16_bytes * 0.5)
    r = run_study(obj, budget, profile=PROFILE, run_dir=tmp_path, trials=2, sampler="allocator",
                  objective_kind="margin", profiling_objective=obj, progress=False)
    space = SearchSpace(obj.model_id, obj.refs, PROFILE)
    costs = CostTable(space, obj.cost)
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    rows, _ = RunDir(tmp_path).read_trials()
    assert rows[0]["bytes"] == costs.of(budget_plan(model, costs, budget))[0][0]
    assert r.summary["compressed_size_bytes"] <= budget


def test_options_within_a_limit_are_those_whose_index_vector_stays_under_it():
    obj, space, costs = _setup(blocks=3)
    rng = np.random.default_rng(0)
    for _ in range(10):
        limit = (rng.random(len(space.dims)) * space.sizes).astype(np.int64)
        for gi in range(len(space.groups)):
            expected = [bool(np.all(costs.with_combo(space.untouched(), gi, ci) <= limit))
                        for ci in range(len(costs.combos(gi)))]
            assert costs.options_within(gi, limit).tolist() == expected
    full = space.sizes - 1
    assert all(costs.options_within(gi, full).all() for gi in range(len(space.groups)))
    assert all(costs.options_within(gi, space.untouched()).tolist() == [True] + [False] * (len(costs.combos(gi)) - 1)
               for gi in range(len(space.groups)))


def test_bo_proposals_stay_within_a_cost_step_of_the_incumbent(tmp_path):
    """GP proposals save at most `step_max` x the trust region's length / its maximum below the
    best feasible plan (when the candidate pool has any such plan): long jumps are where the GPs'
    feasibility is least reliable."""
    import optuna

    obj = SyntheticObjective(blocks=6, seed=0)
    r = run_study(obj, int(obj.base16_bytes * 0.45), profile=PROFILE, run_dir=tmp_path, trials=22, sampler="bo",
                  profiling_objective=obj.profiling_view(), progress=False)
    study = optuna.load_study(study_name=r.summary["study"], storage=f"sqlite:///{tmp_path / 'study.db'}")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    proposals = 0
    for i, t in enumerate(trials):
        info = t.user_attrs.get("sampler_info") or {}
        if info.get("strategy") != "bo" or info.get("max_step") is None:
            continue
        feasible = [u.user_attrs["bytes"] for u in trials[:i] if u.user_attrs.get("robustness")
                    and all(c <= 0 for c in u.constraints.values())]
        best = min(feasible)
        assert best * (1 - info["max_step"]) - 1 <= t.user_attrs["bytes"] < best, (t.number, info)
        assert 0 < info["max_step"] <= 0.05
        proposals += 1
    assert proposals >= 3


def test_gp_predictions_equal_botorch_posterior_including_pending_points():
    import torch

    from toggle.search.gp import fit_models, gp_predict

    rng = np.random.default_rng(0)
    x = rng.random((40, 6))
    y = np.stack([3.0 * np.sin(x.sum(axis=1)) + 2.0, x[:, 0] - x[:, 1]], axis=1)
    models = fit_models(x, y)
    pending = torch.as_tensor(rng.random((3, 6)))
    with torch.no_grad():
        models.append(models[0].condition_on_observations(pending, models[0].posterior(pending).mean))
    query = rng.random((5000, 6))
    mu, sd = gp_predict(models, query, batch=2048)
    with torch.no_grad():
        for j, m in enumerate(models):
            post = m.posterior(torch.as_tensor(query))
            assert np.allclose(mu[:, j], post.mean.squeeze(-1).numpy(), rtol=0, atol=1e-9)
            assert np.allclose(sd[:, j], post.variance.squeeze(-1).clamp_min(1e-12).sqrt().numpy(), rtol=1e-7, atol=1e-12)
    assert sd[:, 0].std() > 0 and mu[:, 1].std() > 0  # a fitted GP, not a constant


def test_a_margin_ladder_hands_over_to_bo_after_its_head_rungs():
    from toggle.search.ladder import Ladder

    points = [np.array([i, 0]) for i in range(4)]
    key = [tuple(p.tolist()) for p in points]
    two = Ladder(points, "margin", head=2)
    assert two.next_rung({}, bisect_only=True).tolist() == [0, 0]
    assert two.next_rung({key[0]: False}, bisect_only=True).tolist() == [1, 0]
    assert two.next_rung({key[0]: False}, {key[1]}, bisect_only=True) is None  # the head is being evaluated
    assert two.next_rung({key[0]: False, key[1]: True}, bisect_only=True) is None
    assert two.next_rung({key[0]: False, key[1]: True}).tolist() == [2, 0]  # the allocator goes on down its ladder
    assert Ladder(points, "margin").next_rung({key[0]: True}, bisect_only=True) is None


def test_bo_under_margin_first_evaluates_the_budget_plan_and_the_paths_first_plan_within_the_budget(tmp_path):
    obj = SyntheticObjective(blocks=4, seed=0)
    budget = int(obj.base16_bytes * 0.5)
    run_study(obj, budget, profile=PROFILE, run_dir=tmp_path, trials=4, sampler="bo", objective_kind="margin",
              profiling_objective=obj, progress=False)
    space = SearchSpace(obj.model_id, obj.refs, PROFILE)
    costs = CostTable(space, obj.cost)
    model = AdditiveModel(space, costs, run_measurement(space, costs, obj, obj))
    path = allocation_path(model, costs)[0]
    sizes = costs.of(np.stack(path))[0]
    rows, _ = RunDir(tmp_path).read_trials()
    plan_bytes = costs.of(budget_plan(model, costs, budget))[0][0]
    first_within = sizes[int(np.argmax(sizes <= budget))]
    assert plan_bytes != first_within  # the case this test is about
    assert [r["bytes"] for r in rows[:2]] == [plan_bytes, first_within]
    assert [r["source"] for r in rows[:2]] == ["bo", "bo"] and len(rows) == 4
