"""The shipped examples stay valid: specs parse, the prompt suite loads with both splits."""
from pathlib import Path

import pytest

from toggle.prompts import load_prompts
from toggle.specs import load_specs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_example_specs_parse_with_their_properties_and_constants():
    specs = load_specs([str(EXAMPLES / "assistant.stl")])
    assert specs.names == ["greedy_prefix", "settles", "confident"]
    assert specs.signals == ["entropy_delta", "kl", "top1_agree"]
    (consts,) = load_specs([str(EXAMPLES / "assistant.stl")], {"kl_max": 0.5}, 0.0).consts.values()
    assert consts["kl_max"].value == 0.5


def test_example_prompts_have_both_splits_and_gold_answers():
    suite = load_prompts(str(EXAMPLES / "support_prompts.jsonl"))
    assert len(suite.split("calibration")) == 4 and len(suite.split("heldout")) == 2
    assert sorted(p.answer for p in suite if p.answer) == ["Jupiter", "Tokyo"]


def test_example_script_compiles():
    source = (EXAMPLES / "search_apply_audit.py").read_text()
    compile(source, "search_apply_audit.py", "exec")
    assert "run_search" in source and "audit(" in source
