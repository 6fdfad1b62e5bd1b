"""The shipped prompt suite keeps its promised shape; tools/check_prompts.py catches bad suites;
the confirmation and held-out splits are what tools/build_heldout.py builds, from sources apart
from the calibration prompts, from each other and from the benchmarks' pydoc_data text."""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from toggle.files import default_prompts

TOOLS = Path(__file__).resolve().parent.parent / "tools"
# sha256 of the calibration items (json, sorted keys): the split every search candidate is scored
# on. Changing it changes what the search optimises and how long it takes; do so on purpose.
CALIBRATION_SHA256 = "3a0b84afea954b2c477883160e21cde87e6b1408bbf8e0edd953acc9a9e4f256"


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_prompts = _load_tool("check_prompts")
build_heldout = _load_tool("build_heldout")


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    """Every run of n consecutive words (lowercase letters and digits) of the text."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def derived_from(prompt: str, sources: list[str], n: int) -> bool:
    """True when the prompt shares a run of n words with one of the sources."""
    own = shingles(prompt, n)
    return any(own & shingles(source, n) for source in sources)


def _splits(with_confirmation: bool = False):
    items, errors = check_prompts.validate(default_prompts())
    assert errors == []
    assert all(set(item.tags) & set(check_prompts.KINDS) for item in items)  # each has a kind
    calibration, heldout = [i for i in items if i.split == "calibration"], [i for i in items if i.split == "heldout"]
    if with_confirmation:
        return calibration, [i for i in items if i.split == "confirmation"], heldout
    return calibration, heldout


def test_calibration_split_is_unchanged():
    calibration, _ = _splits()
    assert len(calibration) == 30
    raw = [item for item in yaml.safe_load(default_prompts().read_text(encoding="utf-8"))
           if item.get("split", "calibration") == "calibration"]
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    assert digest == CALIBRATION_SHA256
    facts = [item for item in calibration if "fact" in item.tags]
    assert len(facts) == 10 and all(item.answer for item in facts)
    assert sum("long" in item.tags for item in calibration) == 4
    for kind in ("instruction", "code", "narrative", "dialogue", "summary"):
        assert any(kind in item.tags for item in calibration), kind


def test_heldout_split_has_its_promised_shape():
    _, heldout = _splits()
    assert len(heldout) >= 200
    facts = [item for item in heldout if "fact" in item.tags]
    assert len(facts) >= 30 and all(item.answer for item in facts)
    assert all(1 <= len(item.answer.split()) <= 3 for item in facts)
    assert sum("docs" in item.tags for item in heldout) >= 150
    long = [item for item in heldout if "long" in item.tags]
    assert len(long) >= 10 and all(item.answer is None for item in long)
    assert len(long) <= len(heldout) // 10  # the audit runs every prompt: most stay short
    for kind in ("instruction", "summary", "continuation", "code"):
        assert sum(kind in item.tags for item in heldout) >= 20, kind


def test_heldout_prompts_are_not_derived_from_calibration_ones():
    calibration, heldout = _splits()
    sources = [item.prompt for item in calibration]
    derived = [item.id for item in heldout if derived_from(item.prompt, sources, 8)]
    assert derived == []
    assert not {i.prompt.strip().lower() for i in heldout} & {i.prompt.strip().lower() for i in calibration}
    calibration_answers = {item.answer.lower() for item in calibration if item.answer}
    assert [i.id for i in heldout if i.answer and i.answer.lower() in calibration_answers] == []


def test_derived_from_catches_a_reworded_copy():
    source = "Answer with one word: what is the capital of Japan?"
    assert derived_from("Answer with one word: what is the capital of Peru?", [source], 8)
    assert derived_from("answer WITH one word - what is the capital of Japan", [source], 8)
    assert not derived_from("Answer with one word: which planet is known as the Red Planet?", [source], 8)


def test_heldout_split_uses_no_pydoc_data_text():
    """benchmarks/textdata.py scores perplexity on pydoc_data's topics: the prompts stay apart."""
    tree = ast.parse((TOOLS / "build_heldout.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith("pydoc") for name in imported)
    assert "pydoc_data" not in build_heldout.MODULES + build_heldout.LONG_MODULES
    topics = pytest.importorskip("pydoc_data.topics").topics
    _, heldout = _splits()
    text = set().union(*(shingles(value, 10) for value in topics.values()))
    assert [item.id for item in heldout if shingles(item.prompt, 10) & text] == []


def test_heldout_split_is_what_the_build_script_makes():
    header = re.search(r"Generated by tools/build_heldout.py \(Python (\d+)\.(\d+)\.",
                       default_prompts().read_text(encoding="utf-8"))
    assert header, "the heldout split lost its generated-by comment"
    if tuple(map(int, header.groups())) != sys.version_info[:2]:
        pytest.skip(f"built with Python {'.'.join(header.groups())}; docstrings differ between versions")
    built = build_heldout.build()
    _, confirmation, heldout = _splits(with_confirmation=True)
    assert [(i["id"], i["prompt"], i.get("answer"), i["split"], tuple(i["tags"])) for i in built] == \
        [(i.id, i.prompt, i.answer, i.split, i.tags) for i in confirmation + heldout]
    assert build_heldout.main(["--check"]) == 0


def test_confirmation_split_comes_from_other_sources_than_the_other_splits():
    """The search confirms its new best plans on this split: it must tell something the calibration
    prompts do not, and leave the held-out split unseen (no shared module, docstring or question)."""
    calibration, confirmation, heldout = _splits(with_confirmation=True)
    assert 25 <= len(confirmation) <= 40
    kinds = Counter(item.tags[0] for item in confirmation)
    assert kinds["fact"] >= 3 and kinds["long"] >= 2 and all(kinds[k] >= 3 for k in ("instruction", "code", "summary"))
    confirm_modules = set(build_heldout.CONFIRM_MODULES + build_heldout.CONFIRM_LONG_MODULES)
    assert not confirm_modules & set(build_heldout.MODULES + build_heldout.LONG_MODULES)
    assert "pydoc_data" not in confirm_modules
    heldout_questions = {q for _, q, _, _ in build_heldout.FACTS}
    assert not {q for _, q, _, _ in build_heldout.CONFIRM_FACTS} & heldout_questions
    assert not {i.prompt for i in confirmation} & {i.prompt for i in heldout + calibration}
    assert not {i.id for i in confirmation} & {i.id for i in heldout + calibration}
    assert [i.id for i in confirmation if derived_from(i.prompt, [c.prompt for c in calibration], 8)] == []
    calibration_answers = {item.answer.lower() for item in calibration if item.answer}
    assert [i.id for i in confirmation if i.answer and i.answer.lower() in calibration_answers] == []


def test_build_check_fails_on_an_edited_split(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    text = default_prompts().read_text(encoding="utf-8")
    suite.write_text(text.replace("Explain in one sentence", "Explain in two sentences", 1), encoding="utf-8")
    assert build_heldout.main(["--suite", str(suite), "--check"]) == 1
    assert "generated splits DIFFER from a rebuild" in capsys.readouterr().out


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
    assert "item 1 (one): field 'split': 'training' is not one of ['calibration', 'confirmation', 'heldout']" in text
    assert "item 2 (Two Words): unknown field(s) ['colour']" in text
    assert "item 2 (Two Words): field 'prompt': must be a non-empty string" in text
    assert check_prompts.main([str(suite), "--no-tokens"]) == 2


def test_validate_rejects_unknown_tags_and_tags_without_a_kind(tmp_path):
    suite = tmp_path / "tags.yaml"
    suite.write_text(
        "- {id: a, prompt: 'x', tags: [fact, geography]}\n"
        "- {id: b, prompt: 'x', tags: [fact, astrology]}\n"
        "- {id: c, prompt: 'x', tags: [docs]}\n",
        encoding="utf-8",
    )
    items, errors = check_prompts.validate(suite)
    assert [item.id for item in items] == ["a"]
    assert "item 1 (b): field 'tags': ['astrology'] not allowed" in errors[0]
    assert "item 2 (c): field 'tags': ['docs'] has no kind" in errors[1]


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
