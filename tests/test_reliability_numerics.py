"""Numerical faults: a candidate whose model gives NaN or infinite logits, zero-norm hidden
states or empty attention rows is infeasible with the reason recorded, and the search goes on.

The faults are injected into the real pipeline (toggle.api.search on a tiny model) by
forward hooks that break the model's outputs whenever the plan being evaluated is "poisoned":
every third plan the applier puts into the model.
"""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from toggle.signals import SignalOptions
from toggle.trace import StepOutputs, check_outputs

TRIALS = 8
PROMPTS = '- {prompt: "The capital of France is"}\n- {prompt: "Water boils at"}\n'
SPEC = """\
option hidden_layer = -1
const eps = 0.3
coherence = always[0:3] (jsd <= eps)
context = always[0:3] (hidden_cos >= 0.5)
"""
PROFILE = """\
granularity: block
knobs: {bits: [16, 8, 4]}
embedding: {bits: [16]}
methods: {quantizer: rtn, group_size: 32, symmetric: auto}
sensitivity: {prompts: 1, levels: {bits: [4]}}
"""
REASONS = {"nan": "NaN or infinite logits", "inf": "NaN or infinite logits",
           "zero": "zero-norm or non-finite hidden states"}


def _poison_every_third_plan(monkeypatch, kind: str) -> list[bool]:
    """Patch PlanApplier.apply so every third plan breaks the model's outputs in `kind`'s way;
    returns the list of poisoned flags, one per applied plan."""
    from toggle.compress.apply import PlanApplier

    original = PlanApplier.apply
    applied: list[bool] = []

    def apply(self, plan):
        out = original(self, plan)
        if not hasattr(self.model, "_poison_hooks"):
            self.model._poison = False
            self.model._poison_hooks = _install_hooks(self.model, kind)
        applied.append(len(applied) % 3 == 2)
        self.model._poison = applied[-1]
        return out

    monkeypatch.setattr(PlanApplier, "apply", apply)
    return applied


def _install_hooks(model, kind: str):
    def logits(module, _inputs, output):
        if model._poison and kind in ("nan", "inf"):
            output = output.clone()
            output[..., 0] = math.nan if kind == "nan" else math.inf
            return output
        return None

    def block(module, _inputs, output):
        if model._poison and kind == "zero":
            if isinstance(output, tuple):
                return (torch.zeros_like(output[0]), *output[1:])
            return torch.zeros_like(output)
        return None

    hooks = [model.get_output_embeddings().register_forward_hook(logits)]
    hooks += [layer.register_forward_hook(block) for layer in model.model.layers]
    return hooks


@pytest.mark.parametrize("kind", ["nan", "inf", "zero"])
def test_broken_candidates_are_infeasible_and_the_search_goes_on(kind, tiny_llama_dir, tmp_path, monkeypatch):
    from toggle.api import search as run_search

    for name, text in {"p.yaml": PROMPTS, "s.stl": SPEC, "profile.yaml": PROFILE}.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("TOGGLE_CACHE_DIR", str(tmp_path / "cache"))
    applied = _poison_every_third_plan(monkeypatch, kind)
    run = tmp_path / "run"
    result = run_search(str(tiny_llama_dir), "1MB", specs=[str(tmp_path / "s.stl")], prompts=str(tmp_path / "p.yaml"),
                        profile=str(tmp_path / "profile.yaml"), trials=TRIALS, out=run, seed=0, progress=False)

    assert any(applied), "no plan was poisoned: the test injected nothing"
    rows = list(csv.DictReader((run / "trials.csv").read_text().splitlines()))
    assert len(rows) == TRIALS  # the search went on to the end
    broken = [r for r in rows if REASONS[kind] in r["reason"]]
    assert broken, [r["reason"] for r in rows]
    for r in broken:
        assert r["feasible"] in ("False", "false", "0"), r
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trials"] == TRIALS
    if summary.get("best_trial") is not None:  # the winner is never a broken candidate
        assert str(summary["best_trial"]) not in {r["number"] for r in broken}
    assert result.summary == summary


@pytest.mark.parametrize("field, value, reason", [
    ("logprobs", math.nan, "NaN or infinite logits"),
    ("logprobs", -math.inf, "NaN or infinite logits"),
    ("hidden", 0.0, "zero-norm or non-finite hidden states"),
    ("hidden", math.inf, "zero-norm or non-finite hidden states"),
    ("attn", 0.0, "empty or non-finite attention rows"),
    ("attn", math.nan, "empty or non-finite attention rows"),
])
def test_output_checks_name_the_fault_and_where(field, value, reason):
    good = dict(logprobs=torch.log_softmax(torch.randn(5, 7), -1), hidden=torch.randn(5, 4),
                attn=torch.rand(5, 3) + 0.1)
    assert check_outputs(StepOutputs(steps=(2, 3), answer_steps=(0, 0), **good), SignalOptions()) is None
    broken = dict(good)
    broken[field] = good[field].clone()
    broken[field][3] = value  # one whole row: the second prompt's second step
    problem = check_outputs(StepOutputs(steps=(2, 3), answer_steps=(0, 0), **broken), SignalOptions())
    assert problem is not None and problem.startswith(reason), problem
    assert "at 1 " in problem, problem
