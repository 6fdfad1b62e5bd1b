"""The search engine on synthetic problems (toggle.search.synthetic): no model needed."""
import dataclasses
import json
import math
import csv

import numpy as np
import optuna
import pytest

from toggle.errors import InvalidInput
from toggle.search import load_profile, parse_profile, run_study
from toggle.search.costs import CostTable
from toggle.search.baselines import LadderSampler
from toggle.search.space import SearchSpace
from toggle.search.synthetic import SyntheticObjective
from toggle.units import format_bytes

SMALL = parse_profile({
    "granularity": "block_part", "trials": 8, "seed": 0,
    "knobs": {"bits": [16, 8, 5, 4, 3], "sparsity": [0.0, 0.3]},
    "embedding": {"bits": [16, 8]},
    "sensitivity": {"prompts": 2, "levels": {"bits": [4, 3], "sparsity": [0.3]}},
}, name="small")


def _study(result):
    return optuna.load_study(study_name=result.study_name, storage=result.storage)


def test_space_groups_params_and_plan_round_trip():
    obj = SyntheticObjective(blocks=3)
    space = SearchSpace(obj.model_id, obj.refs, load_profile("prune-lowrank"))
    assert [g.name for g in space.groups][:3] == ["embed", "b00.attn", "b00.mlp"]
    assert len(space.groups) == 1 + 3 * 2
    assert "b01.mlp:sparsity" in space.params and "embed:sparsity" not in space.params  # fixed knobs are no dims
    index = space.untouched()
    index[space.dim_of("b01.mlp", "bits")] = space.dims[space.dim_of("b01.mlp", "bits")].choices.index(4)
    plan = space.plan(space.to_params(index))
    assert set(plan.modules) == {r.name for r in obj.refs if r.block == 1 and r.part == "mlp"}
    assert {s.bits for s in plan.modules.values()} == {4}
    assert np.array_equal(space.to_index(space.to_params(index)), index)
    module_space = SearchSpace(obj.model_id, obj.refs, parse_profile({"granularity": "module", "knobs": {"bits": [16, 4]}}))
    assert len(module_space.groups) == 1 + 3 * 7


def test_block_part_width_splits_a_part_whose_rows_differ_in_length():
    """The MLP's down projection reads the intermediate width, its gate and up projections the
    hidden width: formats choose block types per row length, so they become two groups."""
    obj = SyntheticObjective(blocks=2)
    space = SearchSpace(obj.model_id, obj.refs, parse_profile({"granularity": "block_part_width",
                                                              "knobs": {"bits": [16, 4]}}))
    names = [g.name for g in space.groups]
    assert names == ["embed", "b00.attn", "b00.mlp.gate_proj+up_proj", "b00.mlp.down_proj",
                     "b01.attn", "b01.mlp.gate_proj+up_proj", "b01.mlp.down_proj"]
    by_name = {g.name: g for g in space.groups}
    assert by_name["b01.mlp.down_proj"].modules == ("model.layers.1.mlp.down_proj",)
    assert len(by_name["b00.attn"].modules) == 4  # one width: the part stays whole
    assert sorted(m for g in space.groups for m in g.modules) == sorted(r.name for r in obj.refs)


def test_cost_table_is_exact_for_additive_costs():
    obj = SyntheticObjective(blocks=3)
    space = SearchSpace(obj.model_id, obj.refs, load_profile("prune-lowrank"))
    table = CostTable(space, obj.cost)
    rng = np.random.default_rng(0)
    points = (rng.random((20, len(space.dims))) * space.sizes).astype(int)
    size, flops = table.of(points)
    for p, b, f in zip(points, size, flops):
        exact = obj.cost(space.plan(space.to_params(p)))
        assert abs(b - exact.bytes) <= 2 and f == pytest.approx(exact.flops_per_token)
    assert table.min_bytes() == pytest.approx(obj.cost(space.plan(space.to_params(table.min_bytes_index()))).bytes, abs=2)
    assert table.cost_calls < 3 * 60  # deltas are shared between groups of equal shapes


def test_ladder_bisection_finds_the_frontier_in_log_steps():
    ladder = [np.array([i]) for i in range(64)]  # rung i feasible iff i <= 41
    obj = SyntheticObjective(blocks=1, seed=0)
    space = SearchSpace(obj.model_id, obj.refs, SMALL)
    strategy = LadderSampler("t", ladder, space, CostTable(space, obj.cost), obj.base16_bytes)
    results, steps = {}, 0
    while (point := strategy.next_rung(results)) is not None:
        results[tuple(point.tolist())] = int(point[0]) <= 41
        steps += 1
    assert max(k[0] for k, ok in results.items() if ok) == 41
    assert steps <= 7  # log2(64) + 1; rungs dominated by a failure are never tried


def test_run_writes_a_complete_run_directory(tmp_path):
    obj = SyntheticObjective(blocks=3, seed=1)
    budget = int(obj.base16_bytes * 0.5)
    result = run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=8, sampler="bo")
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("model", "budget_bytes", "base_size_bytes", "compressed_size_bytes", "size_reduction",
                "base_flops_per_token", "compressed_flops_per_token", "flops_reduction", "robustness", "satisfied",
                "trials", "feasible_trials", "wall_seconds", "sampler", "seed", "profile"):
        assert key in summary, key
    assert summary["satisfied"] is True and result.exit_code == 0
    assert summary["trials"] == 8 and summary["budget_bytes"] == budget
    assert summary["compressed_size_bytes"] <= budget
    assert summary["size_reduction"] == pytest.approx(1 - summary["compressed_size_bytes"] / obj.base16_bytes)
    assert all(v >= 0 for v in summary["robustness"].values())
    assert (tmp_path / "plan.yaml").exists() and (tmp_path / "study.db").exists()
    assert (tmp_path / "sensitivity.json").exists()
    plan = result.plan
    assert obj.cost(plan).bytes == summary["compressed_size_bytes"]
    assert min(obj.robustness(plan).values()) >= 0
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert len(rows) == 8 and "robustness:coherence" in rows[0] and "b00.attn:bits" in rows[0]
    pareto = list(csv.DictReader((tmp_path / "pareto.csv").open()))
    sizes = [int(r["bytes"]) for r in pareto]
    margins = [float(r["min_margin"]) for r in pareto]
    assert sizes == sorted(sizes) and margins == sorted(margins)  # bigger plans only if they buy margin


def test_trials_store_robustness_reason_and_optuna_constraints(tmp_path):
    obj = SyntheticObjective(blocks=2, nan_below_bits=5)
    result = run_study(obj, int(obj.base16_bytes * 0.6), profile=SMALL, run_dir=tmp_path, trials=6, sampler="random")
    trials = _study(result).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert trials
    for t in trials:
        assert set(t.constraints) == {"size", "robustness:coherence", "robustness:factual", "valid"}
        rob = t.user_attrs["robustness"]
        if t.user_attrs["reason"] == "NaN logits":
            assert t.constraints["valid"] == 1.0 and rob["coherence"] is None
        else:
            assert t.constraints["robustness:coherence"] == pytest.approx(-rob["coherence"])
        assert t.value == t.user_attrs["bytes"]  # the objective is the plain size: no penalty
    assert any(t.user_attrs["reason"] == "NaN logits" for t in trials)  # plans below 5 bits fail like NaN logits


def test_over_budget_points_are_pruned_without_evaluation(tmp_path):
    obj = SyntheticObjective(blocks=2)
    budget = int(obj.base16_bytes * 0.5)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize")
    study.enqueue_trial({})  # the untouched model: 16-bit, over budget
    run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=3, sampler="random", storage=storage, study_name="s")
    first = optuna.load_study(study_name="s", storage=storage).trials[0]
    assert first.state == optuna.trial.TrialState.PRUNED
    assert first.user_attrs["reason"].startswith("over budget") and "robustness" not in first.user_attrs
    assert obj.evaluations == 2


def test_impossible_budget_fails_at_once_with_the_minimum_size(tmp_path):
    obj = SyntheticObjective(blocks=2)
    space = SearchSpace(obj.model_id, obj.refs, SMALL)
    smallest = obj.cost(space.plan(space.to_params(CostTable(space, obj.cost).min_bytes_index()))).bytes
    with pytest.raises(InvalidInput, match=rf"smaller than the most compressed plan profile 'small' allows: .*\({smallest} bytes\)"):
        run_study(obj, smallest - 1, profile=SMALL, run_dir=tmp_path, trials=3)
    assert obj.evaluations == 0


def test_unsatisfiable_specs_exit_1_and_say_how_close(tmp_path):
    obj = SyntheticObjective(blocks=2)
    space = SearchSpace(obj.model_id, obj.refs, SMALL)
    budget = int(CostTable(space, obj.cost).min_bytes()) + 10  # only the most compressed plans fit
    result = run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=4, sampler="random")
    assert result.exit_code == 1 and result.plan is None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["satisfied"] is False and summary["feasible_trials"] == 0
    assert summary["min_margin"] < 0 and summary["compressed_size_bytes"] <= budget
    assert not (tmp_path / "plan.yaml").exists()


def test_rerun_resumes_and_keeps_finished_trials(tmp_path):
    obj = SyntheticObjective(blocks=2)
    budget = int(obj.base16_bytes * 0.5)
    first = run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=5, sampler="random")
    before = [(t.number, t.params, t.value) for t in _study(first).trials]
    evaluations = obj.evaluations
    second = run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=8, sampler="random")
    after = _study(second).trials
    assert len(after) == 8 and [(t.number, t.params, t.value) for t in after[:5]] == before
    assert obj.evaluations == evaluations + 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trials"] == 8
    # the wall time covers both sessions, as the per-trial seconds summed beside it do
    assert summary["wall_seconds"] >= summary["evaluation_seconds"] + summary["sampler_seconds"] - 0.01
    assert summary["wall_seconds"] == second.summary["wall_seconds"] > first.summary["wall_seconds"]


def test_sensitivity_profile_is_cached_and_shrinks_the_space(tmp_path):
    obj = SyntheticObjective(blocks=2)
    budget = int(obj.base16_bytes * 0.5)
    r1 = run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=2, sampler="greedy")
    profiled = obj.evaluations - 2
    # untouched + 4 block groups x 3 levels + the embedding once: its bits stop at 8, so the
    # 4- and 3-bit levels both profile it at 8 (an unprofiled group would look free to compress)
    assert profiled == 1 + 4 * 3 + 1
    cache = json.loads((tmp_path / "sensitivity.json").read_text())
    assert len(cache["entries"]) == 13
    assert [(e["knob"], e["value"]) for e in cache["entries"] if e["group"] == "embed"] == [("bits", 8)]
    n = obj.evaluations
    run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=3, sampler="greedy")
    assert obj.evaluations == n + 1  # the profile came from the cache
    from toggle.search.sensitivity import allowed_max
    space = SearchSpace(obj.model_id, obj.refs, SMALL)
    limit = allowed_max(space, r1.sensitivity)
    for e in cache["entries"]:
        col = space.dim_of(e["group"], e["knob"])
        idx = space.dims[col].choices.index(e["value"])
        if min(v for v in e["robustness"].values()) < 0:
            assert limit[col] < idx  # a level that violates alone is never proposed by BO


def test_no_trials_when_profiling_leaves_nothing_within_the_budget(tmp_path):
    """A budget the space could meet, but only with knob values profiling dropped: every proposal
    would be the same over-budget plan, so no trial runs and the summary says why."""
    from toggle.search.sensitivity import allowed_max
    obj = SyntheticObjective(blocks=2)
    first = run_study(obj, int(obj.base16_bytes * 0.5), profile=SMALL, run_dir=tmp_path / "a", trials=1, sampler="bo")
    space = SearchSpace(obj.model_id, obj.refs, SMALL)
    costs = CostTable(space, obj.cost)
    left = costs.min_bytes(allowed_max(space, first.sensitivity))
    assert costs.min_bytes() < left  # profiling dropped values that save bytes
    assert costs.min_bytes(space.sizes - 1) == costs.min_bytes()
    before = obj.evaluations
    result = run_study(obj, int(left) - 1, profile=SMALL, run_dir=tmp_path / "b", trials=6, sampler="bo")
    profiled = len(result.sensitivity.entries) + 1
    assert obj.evaluations - before == profiled  # profiling only, no trial
    assert result.summary["trials"] == 0 and not result.satisfied
    assert "the smallest plan left is" in result.summary["stopped"]
    assert format_bytes(left) in result.summary["stopped"]


def test_keyboard_interrupt_saves_outputs_and_resumes(tmp_path):
    obj = SyntheticObjective(blocks=2)
    budget = int(obj.base16_bytes * 0.5)
    real = obj.evaluate

    def interrupt_on_fourth(plan, stop_below=None):
        if obj.evaluations == 3:
            raise KeyboardInterrupt
        return real(plan)

    obj.evaluate = interrupt_on_fourth
    with pytest.raises(KeyboardInterrupt):
        run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=6, sampler="random")
    assert json.loads((tmp_path / "summary.json").read_text())["trials"] == 3
    obj.evaluate = real
    result = run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=6, sampler="random")
    assert result.summary["trials"] == 6


def test_interrupt_after_the_trials_still_writes_the_summary_of_this_study(tmp_path):
    """Ctrl-C in the held-out audit (the finish step): summary.json says what this study holds and
    that it was interrupted, never the previous run's figures beside this run's trials."""
    obj = SyntheticObjective(blocks=2)
    budget = int(obj.base16_bytes * 0.5)
    (tmp_path / "summary.json").write_text(json.dumps({"trials": 99, "budget_bytes": 1}))

    def interrupted(summary, plan):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(obj, budget, profile=SMALL, run_dir=tmp_path, trials=4, sampler="random", finish=interrupted)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["trials"] == 4 and summary["budget_bytes"] == budget


def test_no_plan_removes_an_earlier_best_plan(tmp_path):
    obj = SyntheticObjective(blocks=2)
    result = run_study(obj, int(obj.base16_bytes * 0.5), profile=SMALL, run_dir=tmp_path, trials=8, sampler="bo")
    assert result.satisfied and (tmp_path / "plan.yaml").is_file()
    # a rerun whose study holds no satisfying plan does not leave the earlier winner beside its trials
    real = obj.evaluate
    obj.evaluate = lambda plan, stop_below=None: dataclasses.replace(
        real(plan), robustness={p: -1.0 for p in obj.properties})
    result = run_study(obj, int(obj.base16_bytes * 0.5), profile=SMALL, run_dir=tmp_path, trials=4, sampler="random",
                       study_name="other")
    assert not result.satisfied and not (tmp_path / "plan.yaml").exists()


def test_bo_beats_uniform_and_random_at_equal_trials(tmp_path):
    obj = SyntheticObjective(blocks=4, seed=3)
    view = obj.profiling_view(seed=7)
    budget = int(obj.base16_bytes * 0.5)
    found = {}
    for sampler in ("uniform", "random", "bo"):
        r = run_study(obj, budget, profile=SMALL, run_dir=tmp_path / sampler, trials=16, sampler=sampler,
                      profiling_objective=view)
        found[sampler] = r.summary["compressed_size_bytes"] if r.satisfied else math.inf
    assert found["bo"] < found["uniform"] and found["bo"] < found["random"], found


def test_greedy_never_moves_a_knob_profiling_did_not_measure(tmp_path):
    """Sparsity is a knob here but not a profiled level: its effect on the properties is
    unknown, so the greedy path (and BO's warm starts taken from it) must leave it alone
    rather than treat it as free compression."""
    from toggle.search.sensitivity import AdditivePrior, allowed_max, greedy_path, run_profiling

    obj = SyntheticObjective(blocks=2)
    profile = parse_profile({"granularity": "block_part", "knobs": {"bits": [16, 8, 4], "sparsity": [0.0, 0.3, 0.5]},
                             "sensitivity": {"prompts": 2, "levels": {"bits": [4]}}}, name="bits-profiled")
    space = SearchSpace(obj.model_id, obj.refs, profile)
    prof = run_profiling(space, obj)
    prior = AdditivePrior(space, prof)
    sparsity_cols = [space.dim_of(g.name, "sparsity") for g in space.groups if space.dim_of(g.name, "sparsity") is not None]
    assert sparsity_cols and all(prior.unmeasured[c] for c in sparsity_cols)
    path, est = greedy_path(space, CostTable(space, obj.cost), prior.loss(), allowed_max(space, prof))
    assert len(path) > 1 and all(np.isfinite(est))
    assert all(p[c] == 0 for p in path for c in sparsity_cols)
    assert path[-1][space.dim_of("b00.mlp", "bits")] > 0  # bits, which were measured, did move


def test_adding_a_profiling_level_reuses_the_entries_already_measured(tmp_path):
    from toggle.rundir import RunDir
    from toggle.search.sensitivity import run_profiling

    obj = SyntheticObjective(blocks=2)
    knobs = {"bits": [16, 8, 4], "sparsity": [0.0, 0.3]}
    first = parse_profile({"knobs": knobs, "sensitivity": {"levels": {"bits": [4]}}}, name="p")
    second = parse_profile({"knobs": knobs, "sensitivity": {"levels": {"bits": [4], "sparsity": [0.3]}}}, name="p")
    cache = RunDir(tmp_path).store("sensitivity.json")
    run_profiling(SearchSpace(obj.model_id, obj.refs, first), obj, cache)
    n = obj.evaluations
    assert n == 1 + 4  # untouched + 4 block groups (the embedding keeps its default: 16 bits only)
    prof = run_profiling(SearchSpace(obj.model_id, obj.refs, second), obj, cache)
    assert obj.evaluations == n + 4  # only the new level, on the 4 block groups
    assert len(prof.entries) == 8
    third = parse_profile({"knobs": knobs, "methods": {"quantizer": "awq"},
                           "sensitivity": {"levels": {"bits": [4]}}}, name="p")
    run_profiling(SearchSpace(obj.model_id, obj.refs, third), obj, cache)
    assert obj.evaluations == n + 4 + 1 + 4  # another quantiser: nothing measured before applies


def test_warm_starts_run_from_conservative_to_bold_along_the_greedy_path():
    from toggle.search.study import warm_starts

    obj = SyntheticObjective(blocks=3)
    space = SearchSpace(obj.model_id, obj.refs, SMALL)
    costs = CostTable(space, obj.cost)
    # a path of ever cheaper points with growing estimated loss
    path = [space.untouched()]
    for col in range(len(space.dims)):
        nxt = path[-1].copy()
        nxt[col] = space.sizes[col] - 1
        path.append(nxt)
    est = [0.0, 0.04, 0.1, 0.14, 0.3, 0.39, 0.6, 0.9, 1.1] + [1.5] * (len(path) - 9)
    budget = costs.of(path[1])[0][0]  # everything but the untouched point fits
    starts = warm_starts(path, est, costs, budget, "size")
    index = [next(i for i, p in enumerate(path) if np.array_equal(p, s)) for s in starts]
    # per level (0.05, 0.15, 0.4, 1.0 of the margin), the cheapest point whose estimate stays under
    # it: 1 (0.04); 2, not 3 (a pruning bitmask makes 3 a few bytes dearer); 4, not 5; 6, not 7
    assert index == [1, 2, 4, 6]


class _WithVacuous(SyntheticObjective):
    """A second property no prompt constrains: its robustness is +inf (vacuously true)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.properties = [*self.properties, "vacuous"]

    def robustness(self, plan):
        props, self.properties = self.properties, self.properties[:-1]
        try:
            return {**super().robustness(plan), "vacuous": math.inf}
        finally:
            self.properties = props


def test_a_vacuously_true_property_counts_as_satisfied(tmp_path):
    from toggle.search.objective import Outcome

    assert Outcome({"a": 0.1, "b": math.inf}).feasible and Outcome({"a": 0.1, "b": math.inf}).min_margin == 0.1
    assert not Outcome({"a": 0.1, "b": -math.inf}).feasible and not Outcome({"a": math.nan}).feasible
    budget = int(SyntheticObjective(blocks=3).base16_bytes * 0.5)
    plain = run_study(SyntheticObjective(blocks=3, seed=1), budget, profile=SMALL, run_dir=tmp_path / "plain", trials=8,
                      sampler="uniform")
    obj = _WithVacuous(blocks=3, seed=1)
    result = run_study(obj, budget, profile=SMALL, run_dir=tmp_path / "vac", trials=8, sampler="uniform")
    # the uniform ladder bisects on feasibility alone: the same plans, judged the same
    assert result.summary["feasible_trials"] == plain.summary["feasible_trials"] > 0
    assert result.summary["compressed_size_bytes"] == plain.summary["compressed_size_bytes"]
    assert result.summary["satisfied"] is True and result.exit_code == 0
    assert result.summary["robustness"]["vacuous"] == "inf"  # strict JSON has no infinity
    scored = [t for t in _study(result).trials if "robustness" in t.user_attrs and not t.user_attrs.get("reason")]
    assert scored and all(t.user_attrs["robustness"]["vacuous"] == math.inf for t in scored)
    assert all(t.constraints["robustness:vacuous"] == 0.0 for t in scored)
    # the BO sampler's surrogate takes it too
    bo = run_study(_WithVacuous(blocks=3, seed=1), budget, profile=SMALL, run_dir=tmp_path / "bo", trials=8, sampler="bo")
    assert bo.summary["satisfied"] is True and bo.summary["feasible_trials"] > 0


def test_sensitivity_cache_keeps_a_vacuously_true_property_satisfied(tmp_path):
    from toggle.search.sensitivity import drop_tables, run_profiling
    from toggle.rundir import SENSITIVITY, RunDir

    obj = _WithVacuous(blocks=2)
    space = SearchSpace(obj.model_id, obj.refs, SMALL)
    store = RunDir(tmp_path).store(SENSITIVITY)
    run_profiling(space, obj, store)
    cache = json.loads((tmp_path / SENSITIVITY).read_text())
    assert cache["baseline"]["vacuous"] == "inf" and all(e["robustness"]["vacuous"] == "inf" for e in cache["entries"])
    n = obj.evaluations
    prof = run_profiling(space, obj, store)  # read back from the file
    assert obj.evaluations == n
    assert all(prof.margin(e) == min(v for k, v in e["robustness"].items() if k != "vacuous")
               for e in prof.entries if not e.get("reason"))
    tables = drop_tables(space, prof)
    assert all(np.all(row == 0) for row in tables["vacuous"])
    assert any(np.any(row > 0) for row in tables[obj.properties[0]])


class _Stricter(SyntheticObjective):
    """The same model scored on other prompts that are harder: every margin 0.3 lower."""

    def robustness(self, plan):
        return {k: v - 0.3 for k, v in super().robustness(plan).items()}


def test_a_would_be_best_plan_is_kept_only_if_it_holds_on_the_confirmation_prompts(tmp_path):
    obj = SyntheticObjective(blocks=3, seed=1)
    budget = int(obj.base16_bytes * 0.5)
    plain = run_study(obj, budget, profile=SMALL, run_dir=tmp_path / "plain", trials=12, sampler="bo")
    # without confirmation the winner holds on the calibration prompts only
    assert plain.plan is not None and min(_Stricter(blocks=3, seed=1).robustness(plain.plan).values()) < 0

    confirm = _Stricter(blocks=3, seed=1)
    result = run_study(SyntheticObjective(blocks=3, seed=1), budget, profile=SMALL, run_dir=tmp_path / "confirmed",
                       trials=12, sampler="bo", confirm=confirm)
    assert result.plan is not None and min(confirm.robustness(result.plan).values()) >= 0
    assert result.summary["compressed_size_bytes"] > plain.summary["compressed_size_bytes"]
    trials = _study(result).get_trials()
    checked = [t for t in trials if "confirmation" in t.user_attrs]
    # only would-be best plans are scored again: one confirmation evaluation each
    assert confirm.evaluations == len(checked) == result.summary["confirmations"]
    rejected = [t for t in checked if not t.user_attrs["confirmation"]["passed"]]
    assert len(rejected) == result.summary["confirmation_rejections"] >= 1
    for t in rejected:  # held on the calibration prompts; recorded with the confirmation's lower margins
        assert min(t.user_attrs["calibration_robustness"].values()) >= 0
        assert min(t.user_attrs["robustness"].values()) < 0
        assert max(t.constraints.values()) > 0  # an Optuna constraint says violated: the sampler learns it
        assert result.summary["best_trial"] != t.number
    # every confirmed trial was cheaper than every satisfying trial before it
    for t in checked:
        before = [u.user_attrs["bytes"] for u in trials if u.number < t.number and u.state.name == "COMPLETE"
                  and min((u.user_attrs.get("robustness") or {"x": -1}).values(), default=-1) >= 0]
        assert all(t.user_attrs["bytes"] < b for b in before)


def test_an_early_stopped_trial_is_never_counted_as_satisfying(tmp_path):
    # Under --objective margin a trial stops early on a margin below the best so far, which may be
    # positive: its margins are upper bounds, so it satisfies nothing as far as anyone knows.
    from toggle.rundir import closest_row, pareto_front, trial_rows

    def objective(trial):
        x = trial.suggest_int("x", 0, 10)
        partial = x > 5
        trial.set_user_attr("robustness", {"p": 0.003 + x / 1000})
        trial.set_user_attr("bytes", 100 + x)
        if partial:
            trial.set_user_attr("partial", True)
        trial.set_constraint("robustness:p", -(0.003 + x / 1000))
        return -(0.003 + x / 1000)

    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1, 7]}))
    study.optimize(objective, n_trials=2)
    rows = {r["params"]["x"]: r for r in trial_rows(study, ["x"])}
    assert rows[7]["partial"] and not rows[7]["feasible"]  # constraints say <= 0, the margin is only a bound
    assert rows[1]["feasible"] and not rows[1]["partial"]
    assert [r["params"]["x"] for r in pareto_front(list(rows.values()))] == [1]  # the bound is no point of it
    assert closest_row(list(rows.values()), 1000)["params"]["x"] == 1  # a scored margin before a larger bound
