"""The shipped prompt suite keeps its promised shape; tools/check_prompts.py catches bad suites."""
from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

from toggle.files import default_prompts

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_prompts.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("check_prompts", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_prompts = _load_tool()


def test_default_suite_is_valid_and_balanced():
    items, errors = check_prompts.validate(default_prompts())
    assert errors == []
    assert len(items) >= 56
    splits = Counter(item.split for item in items)
    assert splits["calibration"] == splits["heldout"] == len(items) // 2
    for split in ("calibration", "heldout"):
        in_split = [item for item in items if item.split == split]
        facts = [item for item in in_split if "fact" in item.tags]
        assert len(facts) >= 8 and all(item.answer for item in facts)
        assert all(1 <= len(item.answer.split()) <= 3 for item in facts)
        assert sum("long" in item.tags for item in in_split) >= 4
        for kind in ("instruction", "code", "narrative", "dialogue", "summary"):
            assert any(kind in item.tags for item in in_split), (split, kind)


def test_validate_names_item_and_field(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        "- {id: one, prompt: 'What is 2+2?', split: calibration}\n"
        "- {id: one, prompt: 'Again', split: training}\n"
        "- {id: Two Words, prompt: '', colour: red}\n",
        encoding="utf-8",
    )
    items, errors = check_prompts.validate(suite)
    assert [item.id for item in items] == ["one"]
    text = "\n".join(errors)
    assert f"{suite}: item 1 (one): field 'id': 'one' already used by item 0" in text
    assert "item 1 (one): field 'split': 'training' is not one of ['calibration', 'heldout']" in text
    assert "item 2 (Two Words): unknown field(s) ['colour']" in text
    assert "item 2 (Two Words): field 'prompt': must be a non-empty string" in text
    assert check_prompts.main([str(suite), "--no-tokens"]) == 2


def test_validate_rejects_non_list(tmp_path):
    suite = tmp_path / "map.yaml"
    suite.write_text("prompt: hello\n", encoding="utf-8")
    assert check_prompts.validate(suite) == ([], [f"{suite}: the top level must be a list of prompt objects"])


def test_contains_answer_matches_whole_words_only():
    assert check_prompts.contains_answer("A spider has 8 legs.", "8")
    assert not check_prompts.contains_answer("There are 18 of them.", "8")
    assert check_prompts.contains_answer('stands for "Hypertext Markup Language."', "HyperText Markup Language")


@pytest.mark.integration
def test_long_prompts_exceed_300_tokens_and_short_ones_stay_short(builtin_model):
    items, _ = check_prompts.validate(default_prompts())
    for item in items:
        n = check_prompts.chat_ids(builtin_model.tokenizer, item.prompt)["input_ids"].shape[1]
        if "long" in item.tags:
            assert n >= 300, (item.id, n)
        else:
            assert n <= check_prompts.SHORT_MAX_TOKENS, (item.id, n)
