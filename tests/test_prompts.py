"""Prompt suites: YAML and JSONL, defaults, splits, fingerprints, errors that name the file,
line / item and field, tokenisation through the chat template, and fuzzing."""
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toggle.errors import ToggleError
from toggle.load import load_model
from toggle.prompts import encode, load_prompts, suite_from_records

RECORDS = [
    {"id": "cap", "prompt": "What is the capital of France?", "answer": "Paris", "tags": ["fact"]},
    {"prompt": "Write a haiku about rain.", "split": "heldout"},
    {"id": "code", "prompt": "def add(a, b):", "chat": False, "tags": "code"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_yaml_and_jsonl_give_the_same_suite(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text(yaml.safe_dump(RECORDS))
    j = write_jsonl(tmp_path / "s.jsonl", RECORDS)
    a, b = load_prompts(y), load_prompts(j)
    assert a.prompts == b.prompts
    assert a.fingerprint == b.fingerprint
    cap, second, code = a.prompts
    assert (cap.id, cap.answer, cap.split, cap.tags, cap.chat) == ("cap", "Paris", "calibration", ("fact",), None)
    assert (second.id, second.split, second.answer) == ("p2", "heldout", None)
    assert (code.chat, code.tags) == (False, ("code",))
    # a byte-order mark, as some Windows editors write, changes nothing in either form
    for path in (y, j):
        bom = path.with_name("bom-" + path.name)
        bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        assert load_prompts(bom).prompts == a.prompts


def test_splits_subsets_and_fingerprints(tmp_path):
    suite = load_prompts(write_jsonl(tmp_path / "s.jsonl", RECORDS))
    assert [p.id for p in suite.split("calibration")] == ["cap", "code"]
    assert [p.id for p in suite.split("heldout")] == ["p2"]
    assert suite.split("all") is suite
    assert suite.split("calibration").fingerprint != suite.fingerprint
    assert [p.id for p in suite.subset(["code", "cap"])] == ["cap", "code"]
    changed = load_prompts(write_jsonl(tmp_path / "t.jsonl", [dict(RECORDS[0], answer="Lyon")] + RECORDS[1:]))
    assert changed.fingerprint != suite.fingerprint
    with pytest.raises(ToggleError, match="split 'train'"):
        suite.split("train")
    with pytest.raises(ToggleError, match="no prompt with id nope"):
        suite.subset(["nope"])


def test_yaml_mapping_form_sets_chat_for_all(tmp_path):
    path = tmp_path / "s.yml"
    path.write_text(yaml.safe_dump({"chat": False, "prompts": [{"prompt": "a"}, {"prompt": "b", "chat": True}]}))
    assert [p.chat for p in load_prompts(path)] == [False, True]


@pytest.mark.parametrize("lines, expected", [
    (['{"prompt": "ok"}', '', '{"prompt": "x", "split": "train"}'],
     "F:3: field 'split': 'train' is not valid; expected one of calibration, confirmation, heldout"),
    (['{"prompt": "ok"}', '{"prompt": '], "F:2:12: not valid JSON"),
    (['{"prompt": ""}'], "F:1: field 'prompt': expected non-empty text"),
    (['{"text": "hi"}'], "F:1: unknown field(s) 'text'; valid fields: id, prompt, answer, split, tags, chat"),
    (['["prompt"]'], "F:1: expected a prompt object"),
    (['{"prompt": "a", "tags": [1]}'], "F:1: field 'tags': expected a list of words"),
    (['{"prompt": "a", "chat": "yes"}'], "F:1: field 'chat': 'yes' is not valid; expected true or false"),
    (['{"prompt": "a", "answer": ""}'], "F:1: field 'answer': expected non-empty text"),
    (['{"prompt": "a", "id": "x"}', '', '{"prompt": "b", "id": "x"}'],
     "F:3: field 'id': 'x' is used twice (first at F:1)"),
    (['', '  '], "F: the suite is empty"),
    (['{"prompt": "a", "answer": 1.10}'], "F:1: field 'answer': 1.1 was read as a number, which may not be the text "
                                          "written; quote it"),
    (['{"prompt": "bad \\ud800 text"}'], "F:1: field 'prompt': holds a lone surrogate"),
])
def test_jsonl_errors(tmp_path, lines, expected):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ToggleError) as e:
        load_prompts(path)
    assert e.value.exit_code == 2
    assert str(e.value).replace(str(path), "F").startswith(expected), str(e.value)


@pytest.mark.parametrize("text, expected", [
    ("- prompt: ok\n- prompt: x\n  split: dev\n", "F: item 2: field 'split': 'dev' is not valid"),
    ("- prompt: ok\n- {prompt: x, colour: red}\n", "F: item 2: unknown field(s) 'colour'"),
    ("- prompt: [unclosed\n", "F:2:1: not valid YAML"),
    ("prompt: x\n", "F: unknown top-level key(s) 'prompt'"),
    ("just text\n", "F: expected a list of prompt objects, got str"),
    ("[]\n", "F: the suite is empty"),
    ("", "F: the suite is empty"),
    ("- 3\n", "F: item 1: expected a prompt object"),
    ("- {prompt: 'Pi to two places is', answer: 3.10}\n", "F: item 1: field 'answer': 3.1 was read as a number"),
    ("- {prompt: 'Time', answer: 12:30}\n", "F: item 1: field 'answer': 750 was read as a number"),
])
def test_yaml_errors(tmp_path, text, expected):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ToggleError) as e:
        load_prompts(path)
    assert str(e.value).replace(str(path), "F").startswith(expected), str(e.value)


def test_jsonl_strings_may_hold_line_separators(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 raw inside a string; str.splitlines would cut it there
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"prompt": "Line one\u2028line two", "answer": "x\u2029y"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    (prompt,) = load_prompts(path).prompts
    assert prompt.text == "Line one\u2028line two" and prompt.answer == "x\u2029y"


def test_file_errors(tmp_path):
    with pytest.raises(ToggleError, match="no such prompt suite"):
        load_prompts(tmp_path / "none.yaml")
    (tmp_path / "s.txt").write_text("- prompt: a\n")
    with pytest.raises(ToggleError, match="expected .yaml, .yml or .jsonl"):
        load_prompts(tmp_path / "s.txt")
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ToggleError, match="not UTF-8"):
        load_prompts(tmp_path / "b.yaml")
    with pytest.raises(ToggleError, match="is a directory"):
        load_prompts(tmp_path)


def test_encode_applies_the_chat_template_around_the_text(tiny_llama_dir):
    tok = load_model(str(tiny_llama_dir)).tokenizer
    chat, plain = suite_from_records([{"prompt": "Water boils at 100 degrees.", "answer": "Celsius"},
                                      {"prompt": "Water boils at 100 degrees.", "answer": "Celsius", "chat": False}])
    e = encode(chat, tok)
    assert e.chat and tok.decode(e.ids).startswith("<|user|>")
    assert tok.decode(e.ids).endswith("<|assistant|>")
    a, b = e.content
    assert tok.decode(e.ids[a:b]).strip() == "Water boils at 100 degrees."
    assert tok.decode(e.answer_ids) == "Celsius"
    p = encode(plain, tok)
    assert not p.chat and tok.decode(p.ids) == "Water boils at 100 degrees."
    assert tok.decode(p.answer_ids) == " Celsius"  # a plain continuation gets its space
    assert tok.decode(p.ids[p.content[0]:p.content[1]]) == "Water boils at 100 degrees."


def test_chat_without_template_is_an_error(tiny_llama_dir):
    tok = load_model(str(tiny_llama_dir)).tokenizer
    tok.chat_template = None
    (prompt,) = suite_from_records([{"prompt": "hi", "chat": True}])
    with pytest.raises(ToggleError, match="has no chat template; set chat: false"):
        encode(prompt, tok)
    (auto,) = suite_from_records([{"prompt": "hi"}])
    assert not encode(auto, tok).chat


def test_shipped_suite_when_present():
    from toggle.files import default_prompts

    if not default_prompts().exists():
        pytest.skip("prompts/default.yaml not in this checkout yet")
    suite = load_prompts()
    assert len(suite.split("calibration")) > 0 and len(suite.split("heldout")) > 0
    assert any(p.answer for p in suite.split("calibration"))


values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                   st.lists(st.text(max_size=4), max_size=3))
objects = st.one_of(values, st.dictionaries(st.sampled_from(["id", "prompt", "answer", "split", "tags", "chat", "x"]),
                                            values, max_size=6))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(objects, max_size=4))
def test_fuzz_loaders(tmp_path, items):
    j = tmp_path / "f.jsonl"
    j.write_text("".join(json.dumps(i) + "\n" for i in items))
    y = tmp_path / "f.yaml"
    y.write_text(yaml.safe_dump(items))
    for path in (j, y):
        try:
            suite = load_prompts(path)
        except ToggleError:
            continue
        assert all(p.text.strip() for p in suite)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_fuzz_raw_text(tmp_path, text):
    for name in ("r.jsonl", "r.yaml"):
        path = tmp_path / name
        path.write_text(text)
        try:
            load_prompts(path)
        except ToggleError:
            pass
