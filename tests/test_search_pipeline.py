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
    assert "trial 7" in lines[0] and "3 of 12 trials" in lines[0]
    assert lines[1] == "size: 90.0 MB vs 270.0 MB 16-bit dense (66.7% smaller)"
    assert lines[2] == "FLOPs per token: 1e+08 vs 2.5e+08 (2.50x fewer)"
    assert len(lines) == 4  # no loaded file size known: no line for it
    summary.update(loaded_size_bytes=98_400_000, loaded_format="Q4_1")
    assert final_lines(SearchResult(Path("runs/x"), summary, Plan(model="m"), "s", "sqlite://"))[3] == \
        "the loaded Q4_1 GGUF weights file is 98.4 MB: the plan is 8.5% smaller than that"
    summary.update(satisfied=False, min_margin=-0.2)
    assert "no plan satisfies every property within 100.0 MB after 12 trials; closest plan: trial 7, minimum margin -0.2000" \
        in final_lines(SearchResult(Path("runs/x"), summary, None, "s", "sqlite://"))[0]
