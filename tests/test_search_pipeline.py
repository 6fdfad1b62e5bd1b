"""The wiring module, with stand-ins for the evaluator and cost model (their real versions are
built in other modules); the end-to-end run on a model lives in the integration tests."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from toggle.plan import ModuleSetting, Plan
from toggle.api import default_run_dir, final_lines
from toggle.search.objective import ModelObjective
from toggle.search.sensitivity import spread as _spread
from toggle.search.study import SearchResult
from toggle.units import parse_budget


def test_model_objective_adapts_evaluation_and_cost():
    evaluation = SimpleNamespace(robustness={"coherence": 0.25}, feasible=True, reason=None,
                                 per_prompt={"coherence": [0.25, 0.5]}, timings={"forward": 1.0}, partial=False,
                                 prompts_evaluated=2)
    cost = SimpleNamespace(bytes=1234, flops_per_token=99.0, bitops_per_token=1.0)
    evaluator = SimpleNamespace(evaluate=lambda plan, prompts=None, stop_below=None: evaluation)
    cost_model = SimpleNamespace(of=lambda plan: cost, base16_bytes=5000, base_flops_per_token=200.0)
    obj = ModelObjective("m", [], ["coherence"], evaluator, cost_model)
    out = obj.evaluate(Plan(model="m"))
    assert out.robustness == {"coherence": 0.25} and out.feasible and out.per_prompt == {"coherence": [0.25, 0.5]}
    assert obj.cost(Plan(model="m")).bytes == 1234 and obj.base16_bytes == 5000 and obj.base_flops_per_token == 200.0
    evaluation.reason, evaluation.robustness = "NaN logits", {"coherence": -math.inf}
    assert not obj.evaluate(Plan(model="m")).feasible


def test_profiling_subset_is_spread_over_the_suite():
    assert _spread(list(range(10)), 4) == [0, 2, 5, 7]
    assert _spread([1, 2], 4) == [1, 2]


def test_default_run_dir_names_model_and_budget():
    assert default_run_dir("smollm2-135m", parse_budget("100MB")) == Path("runs/smollm2-135m-100MB")
    assert default_run_dir("/models/My Model", parse_budget("4.5bpw")) == Path("runs/My_Model-4.5bpw")


def test_final_lines_report_size_and_flop_reduction():
    summary = {"satisfied": True, "best_trial": 7, "min_margin": 0.01, "feasible_trials": 3, "trials": 12,
               "budget_bytes": 100_000_000, "compressed_size_bytes": 90_000_000, "base_size_bytes": 270_000_000,
               "size_reduction": 2 / 3, "compressed_flops_per_token": 1e8, "base_flops_per_token": 2.5e8,
               "flops_reduction": 2.5}
    lines = final_lines(SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://"))
    assert "trial 7" in lines[0] and "3 of 12 trials satisfied the specs" in lines[0]
    repeats = final_lines(SearchResult(Path("runs/x"), dict(summary, feasible_plans=1), Plan(model="m"), "s", "s://"))
    assert "3 of 12 trials (1 distinct plan) satisfied the specs" in repeats[0]  # a plan proposed again is one plan
    confirmed = final_lines(SearchResult(Path("runs/x"), dict(summary, best_confirmed=True), Plan(model="m"), "s", "s://"))
    assert "(minimum margin +0.0100 over the calibration and confirmation prompts)" in confirmed[0]
    assert lines[1] == "size: 90.0 MB vs 270.0 MB 16-bit dense (66.7% smaller)"
    assert lines[2] == "FLOPs per token: 1e+08 vs 2.5e+08 (2.50x fewer)"
    assert len(lines) == 4  # no loaded file size known: no line for it
    summary.update(loaded_size_bytes=98_400_000, loaded_format="Q4_1")
    assert final_lines(SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://"))[3] == \
        "the loaded Q4_1 GGUF weights file is 98.4 MB: the plan is 8.5% smaller than that"
    # a plan larger than its reference is said to be larger, not "-53.3% smaller"
    larger = dict(summary, compressed_size_bytes=831_200, base_size_bytes=542_300, size_reduction=1 - 831_200 / 542_300,
                  loaded_size_bytes=700_000, loaded_format=None)
    lines = final_lines(SearchResult(Path("runs/x"), larger, Plan(model="m"), "s", "sqlite://"))
    assert lines[1] == "size: 831.2 KB vs 542.3 KB 16-bit dense (53.3% larger)"
    assert lines[3] == "the loaded weights file is 700.0 KB: the plan is 18.7% larger than that"
    # a winner from the allocator path BO bisects first is said to be one, with what BO's own proposals gave
    summary.update(winner_strategy="allocator path",
                   trials_by_strategy={"allocator path": {"trials": 7, "feasible": 2}, "bo": {"trials": 5, "feasible": 0}})
    assert ("the winner is a point of the measured-error allocator's path, which BO bisects first; its 5 "
            "model-guided proposals after that found no smaller satisfying plan") in final_lines(
        SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://"))
    summary.update(trials_by_strategy={"allocator path": {"trials": 9, "feasible": 2}, "uniform": {"trials": 3, "feasible": 0}},
                   trials=12)
    assert ("the winner is a point of the measured-error allocator's path, which BO bisects first; the bisections took "
            "all 12 trials, none was left for a model-guided proposal (more --trials leave some)") in final_lines(
        SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://"))
    summary.update(winner_strategy="uniform", trials_by_strategy={"allocator path": {"trials": 7, "feasible": 2},
                                                                  "bo": {"trials": 5, "feasible": 0}})
    assert ("the winner is a uniform setting, which BO bisects after the measured-error allocator's path; its 5 "
            "model-guided proposals after that found no smaller satisfying plan") in final_lines(
        SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://"))
    assert not any("BO bisects" in line for line in final_lines(  # the uniform baseline sampler's own winner
        SearchResult(Path("runs/x"), dict(summary, sampler="uniform"), Plan(model="m"), "s", "sqlite://")))
    summary.update(winner_strategy="bo")
    assert not any("allocator" in line for line in final_lines(
        SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://")))
    summary.update(satisfied=False, min_margin=-0.2)
    assert "no plan satisfies every property within 100.0 MB after 12 trials; closest plan: trial 7, minimum margin -0.2000" \
        in final_lines(SearchResult(Path("runs/x"), summary, None, "s", "sqlite://"))[0]
    # a confirmation split no plan reached: no line about it
    assert not any(line.startswith("confirmation:") for line in final_lines(SearchResult(
        Path("runs/x"), dict(summary, confirmation_prompts=31, confirmations=0), None, "s", "sqlite://")))
    assert any(line.startswith("confirmation: 2 would-be best plans") for line in final_lines(SearchResult(
        Path("runs/x"), dict(summary, confirmation_prompts=31, confirmations=2), None, "s", "sqlite://")))
    # a closest plan whose margin could not be scored (summary.json's None: -inf) is still named
    summary.update(min_margin=None)
    assert final_lines(SearchResult(Path("runs/x"), summary, None, "s", "sqlite://"))[0].endswith(
        "; closest plan: trial 7, minimum margin -inf")
    # properties the base model fails against itself, and a search that stopped before its trials, are said so
    summary.update(base_failures={"note": "the base model itself fails sure (s.stl:2) on 3 of 3 prompts"},
                   best_trial=None, stopped="the smallest plan left is 1.2 MB, over the budget")
    lines = final_lines(SearchResult(Path("runs/x"), summary, None, "s", "sqlite://"))
    assert "note: the base model itself fails sure (s.stl:2) on 3 of 3 prompts" in lines
    assert lines[0].endswith("; no plan within the budget was evaluated: the smallest plan left is 1.2 MB, over the budget")


def test_a_winner_failing_the_heldout_audit_exits_1_naming_the_property():
    summary = {"satisfied": True, "best_trial": 3, "min_margin": 0.02, "feasible_trials": 2, "trials": 4,
               "budget_bytes": 60_000, "heldout": {
                   "pass_rate": 28 / 30, "satisfied": False, "prompts": 30, "reason": None,
                   "confidence": {"violations": 2, "prompts": 30, "violation_rate": 2 / 30, "upper_bound": 0.1951,
                                  "level": 0.95, "method": "one-sided Clopper-Pearson"},
                   "properties": {"coherence": {"violations": 2, "prompts": 30}, "factual": {"violations": 0, "prompts": 5}}}}
    result = SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://")
    assert result.satisfied and result.heldout_failed and result.exit_code == 1
    lines = final_lines(result)
    assert "held-out audit: VIOLATED (93.3% of 30 prompts satisfy every property)" in lines
    assert ("held-out, all properties: violation rate 2/30, at most 19.5% at 95% confidence (one-sided "
            "Clopper-Pearson) on these prompts") in lines
    assert "the winner fails the held-out audit: coherence on 2 of 30 prompts" in lines
    summary["heldout"] = {"skipped": "no prompts in split 'heldout'"}  # no held-out prompts: no failure
    assert SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://").exit_code == 0


def test_the_trial_line_says_n_a_for_a_property_nothing_checked_yet():
    from toggle.search.progress import Progress

    line = Progress(False, 12, 0, 1000.0).trial_status(None, {"coherence": -0.25, "factual": float("inf"),
                                                               "context": None}, None)
    assert line == "no feasible plan yet | last: coherence=-0.250 factual=n/a context=-inf"


def test_the_trial_line_shows_the_best_plan_in_the_objectives_terms_and_an_eta():
    from toggle.search.progress import Progress

    bar = Progress(False, 10, 2, 1000.0, base_flops=9e6)
    best = {"bytes": 500, "flops_per_token": 3e6, "min_margin": 0.0123}
    assert bar.trial_status(best, {}, "over budget").startswith("best 500 B (-50.0%) | last: over budget")
    assert bar.trial_status(best, {}, None, "flops").startswith("best 3e+06 FLOPs/token (3.00x fewer, 500 B)")
    assert bar.trial_status(best, {}, None, "margin").startswith("best margin +0.0123 (500 B)")
    start, _ = bar._since
    assert bar.eta(2, start + 5) is None  # no trial of this session finished yet
    assert bar.eta(6, start + 40) == "0:40"  # 4 trials in 40 s, 4 left
