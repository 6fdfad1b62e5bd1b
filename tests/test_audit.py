"""toggle audit: exit codes, JSON fields, the base model against itself, free mode, artifacts of
every kind, the in-process audit the search runs, and bad input."""
from functools import partial
import json
import math
import shutil

import pytest

from toggle.api import audit
from toggle.audit import AuditResult, audit_models
from toggle.cli import main
from toggle.errors import InvalidInput
from toggle.api import write_artifact
from toggle.load import load_model
from toggle.modules import compressible_modules
from toggle.plan import Methods, ModuleSetting, Plan
from toggle.prompts import load_prompts
from toggle.specs import load_specs

write_gguf = partial(write_artifact, fmt="gguf")

PROMPTS = """
- {id: c1, prompt: "The capital of France is", answer: Paris}
- {id: c2, prompt: "Water boils at"}
- {id: c3, prompt: "Once upon a time"}
- {id: h1, prompt: "def add(a, b):", split: heldout}
- {id: h2, prompt: "Question: what is two plus two? Answer:", answer: four, split: heldout}
- {id: h3, prompt: "The capital of Italy is", split: heldout}
- {id: h4, prompt: "Once upon a time a small robot", split: heldout}
"""
# Every kind of signal: distributions, hidden states, attention, gold answers.
SPECS = """
const eps = 0.2
coherence = always[0:7] (jsd <= eps)
option hidden_layer = -1
context = always[0:7] (hidden_cos >= 0.98)
long_range = always[0:7] (attn_cos >= 0.98)
agree = always[0:7] (top1_agree >= 0.5 and p_ratio >= 0.9 and kl <= 0.01)
factual = always (gold_p_ratio >= 0.5)
"""
MARGINS_OF_THE_BASE = {"coherence": 0.2, "context": 0.02, "long_range": 0.02, "agree": 0.01, "factual": 0.5}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_llama_dir):
    """Prompts, specs, a copy of the tiny model and three artifacts of it: 8-bit (toggle and
    GGUF formats, nearly lossless) and 2-bit (toggle format, broken)."""
    d = tmp_path_factory.mktemp("audit")
    (d / "p.yaml").write_text(PROMPTS)
    (d / "s.stl").write_text(SPECS)
    (d / "jsd.stl").write_text("const eps = 0.2\ncoherence = always[0:7] (jsd <= eps)\n")
    shutil.copytree(tiny_llama_dir, d / "copy")
    lm = load_model(str(tiny_llama_dir))
    blocks = [r.name for r in compressible_modules(lm.model) if r.block is not None]
    q8 = Plan.uniform(lm.model_id, blocks, ModuleSetting(bits=8), Methods(group_size=32, symmetric=True))
    q2 = Plan.uniform(lm.model_id, blocks, ModuleSetting(bits=2), Methods(group_size=32))
    write_artifact(lm, q8, d / "q8")
    write_artifact(lm, q2, d / "q2")
    write_gguf(lm, q8, d / "q8.gguf")
    return d


def _run(capsys, *args):
    code = main(["audit", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("mode", ["teacher", "free"])
def test_base_model_against_itself_has_zero_divergence(files, tiny_llama_dir, mode):
    """Two separate loads of the same weights (a copied directory): nothing diverges."""
    r = audit(files / "copy", base=str(tiny_llama_dir), specs=[files / "s.stl"], prompts=files / "p.yaml", mode=mode)
    # teacher mode compares with the base outputs recorded while generating (float rounding
    # apart from this pass's); free mode scores both models by the same teacher-forced pass
    tol = 1e-5 if mode == "teacher" else 0.0
    assert r.satisfied and r.pass_rate == 1.0 and r.exit_code == 0 and r.feasible
    assert r.signals["jsd"]["max"] <= tol and r.signals["kl"]["max"] <= tol
    assert r.signals["top1_agree"]["min"] == 1.0 and r.signals["p_ratio"]["min"] == pytest.approx(1.0, abs=tol)
    assert r.signals["gold_p_ratio"]["min"] == 1.0
    for cos in ("hidden_cos", "attn_cos"):
        assert r.signals[cos]["min"] == pytest.approx(1.0, abs=max(tol, 1e-12))
    for name, margin in MARGINS_OF_THE_BASE.items():
        assert r.properties[name].min == pytest.approx(margin, abs=max(tol, 1e-12)), name
    assert [p.id for p in r.prompts] == ["h1", "h2", "h3", "h4"]
    # the gold property applies to the one held-out prompt with an answer
    assert r.properties["factual"].prompts == 1 and r.properties["coherence"].prompts == 4
    # the same greedy text on both sides
    for p in r.worst():
        assert p.base_text == p.compressed_text and p.base_text


def test_a_json_path_that_cannot_be_written_is_named_before_the_audit(files, capsys, monkeypatch):
    import toggle.api

    monkeypatch.setattr(toggle.api, "load_model", lambda *a, **k: pytest.fail("the model must not be loaded"))
    code, out, err = _run(capsys, files / "q8", "--specs", files / "jsd.stl", "--prompts", files / "p.yaml",
                          "--json", files)
    assert code == 2 and f"--json {files}: is a directory; expected a file name" in err


def test_cli_pass_writes_the_json_contract(files, tiny_llama_dir, capsys):
    code, out, err = _run(capsys, files / "q8", "--specs", files / "jsd.stl", "--prompts", files / "p.yaml",
                          "--json", files / "q8.json")
    assert code == 0, err
    assert "PASS: every property holds on all 4 heldout prompts (teacher mode)" in out
    assert "coherence" in out and "holds on" in out
    data = json.loads((files / "q8.json").read_text())
    assert data["satisfied"] is True and data["pass_rate"] == 1.0
    assert data["mode"] == "teacher" and data["split"] == "heldout"
    assert data["artifact"] == str((files / "q8").resolve())
    assert data["base"] == str(tiny_llama_dir.resolve())  # from the artifact's manifest
    assert data["prompts_audited"] == 4 and data["prompts_passed"] == 4
    props = data["properties"]["coherence"]
    assert props["prompts"] == 4 and props["holds"] == 4 and props["share"] == 1.0
    assert 0 < props["min"] <= props["median"] <= 0.2
    assert [p["id"] for p in data["prompts"]] == ["h1", "h2", "h3", "h4"]
    for p in data["prompts"]:
        assert p["satisfied"] is True and set(p["robustness"]) == {"coherence"} and p["base_text"]
    assert data["specs"]["consts"] == {"eps": 0.2}
    # stated confidence: 0 of 4 violated, one-sided 95% bound 1 - 0.05^(1/4)
    assert props["confidence"]["violations"] == 0 and props["confidence"]["prompts"] == 4
    assert data["confidence"]["upper_bound"] == pytest.approx(1 - 0.05 ** 0.25) == props["confidence"]["upper_bound"]
    assert data["confidence"]["level"] == 0.95 and data["confidence"]["violation_rate"] == 0.0
    assert ("all properties: violation rate 0/4, at most 52.7% at 95% confidence (one-sided Clopper-Pearson) on these "
            "prompts") in " ".join(out.split())


def test_cli_violation_exits_1_and_shows_the_worst_prompts(files, capsys):
    code, out, err = _run(capsys, files / "q2", "--specs", files / "jsd.stl", "--prompts", files / "p.yaml",
                          "--json", files / "q2.json")
    data = json.loads((files / "q2.json").read_text())
    assert code == 1, err
    assert data["satisfied"] is False and data["pass_rate"] < 1.0
    assert data["properties"]["coherence"]["min"] < 0
    assert data["pass_rate"] == sum(p["satisfied"] for p in data["prompts"]) / 4
    assert "VIOLATED" in out and "worst prompts" in out
    worst = [p for p in data["prompts"] if p["id"] in data["worst"]]
    assert worst and all(p["base_text"] and p["compressed_text"] for p in worst)
    assert data["worst"][0] == min(data["prompts"], key=lambda p: p["margin"])["id"]
    failed = sum(not p["satisfied"] for p in data["prompts"])
    assert data["confidence"]["violations"] == failed == data["properties"]["coherence"]["confidence"]["violations"]


def test_the_api_lists_as_many_worst_prompts_as_asked(files):
    from toggle.api import audit
    from toggle.errors import InvalidInput

    r = audit(files / "q2", specs=files / "jsd.stl", prompts=files / "p.yaml", worst=2)
    assert len(r.worst()) == 2 and len(r.to_dict()["worst"]) == 2
    listed = [p for p in r.prompts if p.id in r.to_dict()["worst"]]
    assert all(p.base_text and p.compressed_text for p in listed)  # each listed prompt has its texts
    with pytest.raises(InvalidInput, match="worst: -1 is not valid"):
        audit(files / "q2", specs=files / "jsd.stl", prompts=files / "p.yaml", worst=-1)


def test_confidence_level_moves_the_bound(files, capsys):
    code, out, _ = _run(capsys, files / "q8", "--specs", files / "jsd.stl", "--prompts", files / "p.yaml",
                        "--confidence", "0.8", "--json", files / "q8-80.json")
    data = json.loads((files / "q8-80.json").read_text())
    assert code == 0 and data["confidence"]["level"] == 0.8
    assert data["confidence"]["upper_bound"] == pytest.approx(1 - 0.2 ** 0.25)
    assert "at most 33.1% at 80% confidence" in " ".join(out.split())


def test_relax_and_set_move_the_verdict(files, capsys):
    """--set loosens a threshold: the same artifact then passes (and the JSON records it)."""
    code, _, _ = _run(capsys, files / "q2", "--specs", files / "jsd.stl", "--prompts", files / "p.yaml",
                      "--set", "eps=1.0", "--json", files / "q2-loose.json")
    data = json.loads((files / "q2-loose.json").read_text())
    assert code == 0 and data["satisfied"] and data["specs"]["overrides"] == {"eps": 1.0}


def test_free_mode_scores_along_the_compressed_models_own_path(files):
    teacher = audit(files / "q2", specs=[files / "jsd.stl"], prompts=files / "p.yaml", mode="teacher")
    free = audit(files / "q2", specs=[files / "jsd.stl"], prompts=files / "p.yaml", mode="free")
    assert free.mode == "free" and not free.satisfied
    # free mode generated the compressed model's text for every prompt, the base text for the worst
    assert all(p.compressed_text is not None for p in free.prompts)
    assert all(p.base_text is not None for p in free.worst())
    # the paths differ, so do the robustness values
    assert {p.id: p.compressed_text for p in free.prompts} != {p.id: p.base_text for p in teacher.prompts}
    assert free.properties["coherence"].min != teacher.properties["coherence"].min


def test_gguf_artifact_needs_base_and_then_matches_the_toggle_artifact(files, tiny_llama_dir, capsys):
    code, _, err = _run(capsys, files / "q8.gguf", "--specs", files / "jsd.stl", "--prompts", files / "p.yaml")
    assert code == 2 and "does not record its base model; pass --base MODEL" in err and "Traceback" not in err
    gguf = audit(files / "q8.gguf", base=str(tiny_llama_dir), specs=[files / "jsd.stl"], prompts=files / "p.yaml")
    toggle = audit(files / "q8", specs=[files / "jsd.stl"], prompts=files / "p.yaml")
    assert gguf.satisfied and toggle.satisfied
    for a, b in zip(gguf.prompts, toggle.prompts):
        assert a.robustness["coherence"] == pytest.approx(b.robustness["coherence"], abs=1e-4)


def test_in_process_audit_of_a_plan_matches_its_artifact(files, tiny_llama_dir):
    """What the search does with its winner (applier + plan, no artifact) gives the artifact's numbers."""
    from toggle.compress.apply import PlanApplier

    lm = load_model(str(tiny_llama_dir))
    specs, suite = load_specs([files / "jsd.stl"]), load_prompts(files / "p.yaml")
    plan = _plan_of(files / "q2")
    applier = PlanApplier(lm.model)
    simulated = audit_models(lm, lm, specs, suite, applier=applier, plan=plan)
    artifact = audit(files / "q2", specs=[files / "jsd.stl"], prompts=files / "p.yaml")
    for a, b in zip(simulated.prompts, artifact.prompts):
        assert a.robustness["coherence"] == pytest.approx(b.robustness["coherence"], abs=2e-3)
        assert a.compressed_text == b.compressed_text and a.compressed_text  # 4 prompts: all among the worst 5
    # the model holds its own weights again afterwards
    again = audit_models(lm, lm, specs, suite)
    assert again.signals["jsd"]["max"] < 1e-6


def _plan_of(artifact):
    manifest = json.loads((artifact / "toggle.json").read_text())
    return Plan.from_dict(manifest["plan"])


@pytest.mark.parametrize("case, message", [
    ("missing", "no such artifact"),
    ("no-heldout", "no prompts in split 'heldout'"),
    ("no-gold", "needs gold answers, but no heldout prompt has an `answer`"),
    ("not-a-model", "not a model"),
])
def test_bad_input_exits_2_with_a_message(files, tmp_path, capsys, case, message):
    prompts, specs, artifact = files / "p.yaml", files / "jsd.stl", files / "q8"
    if case == "missing":
        artifact = tmp_path / "nope"
    elif case == "no-heldout":
        prompts = tmp_path / "cal.yaml"
        prompts.write_text("- {prompt: hello}\n- {prompt: world}\n")
    elif case == "no-gold":
        prompts = tmp_path / "nogold.yaml"
        prompts.write_text("- {prompt: hello, answer: x}\n- {prompt: world, split: heldout}\n")
        specs = files / "s.stl"
    elif case == "not-a-model":
        artifact = tmp_path / "notes.txt"
        artifact.write_text("hi")
    code, out, err = _run(capsys, artifact, "--specs", specs, "--prompts", prompts)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("toggle: error: ")


def test_the_split_and_mode_are_checked_before_any_model_is_loaded(files, monkeypatch):
    import toggle.load

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(toggle.load, "load_model", no_loading)
    with pytest.raises(InvalidInput, match="--mode: 'sampled' is not valid"):
        audit(files / "q8", specs=[files / "jsd.stl"], prompts=files / "p.yaml", mode="sampled")
    with pytest.raises(InvalidInput, match="--split: 'test' is not valid"):
        audit(files / "q8", specs=[files / "jsd.stl"], prompts=files / "p.yaml", split="test")


def test_calibration_split_and_all(files):
    r = audit(files / "q8", specs=[files / "jsd.stl"], prompts=files / "p.yaml", split="all")
    assert r.split == "all" and len(r.prompts) == 7
    r = audit(files / "q8", specs=[files / "jsd.stl"], prompts=files / "p.yaml", split="calibration")
    assert [p.id for p in r.prompts] == ["c1", "c2", "c3"]


def test_cli_audits_the_confirmation_split(files, capsys):
    (files / "pc.yaml").write_text(PROMPTS + '- {id: k1, prompt: "The sun rises in the", split: confirmation}\n')
    code, out, _ = _run(capsys, files / "q8", "--specs", files / "jsd.stl", "--prompts", files / "pc.yaml",
                        "--split", "confirmation", "--json", files / "conf.json")
    report = json.loads((files / "conf.json").read_text())
    assert code == 0 and report["split"] == "confirmation" and [p["id"] for p in report["prompts"]] == ["k1"]
    code, _, err = _run(capsys, files / "q8", "--specs", files / "jsd.stl", "--prompts", files / "p.yaml",
                        "--split", "confirmation")
    assert code == 2 and "no prompts in split 'confirmation' (7 prompts: 4 heldout, 3 calibration)" in err
    assert "--split heldout" in err


def test_unscorable_candidate_is_a_violation_with_the_reason(files, tiny_llama_dir):
    """A candidate giving NaN logits fails the audit (exit 1) with the reason, never a crash."""
    import torch

    lm = load_model(str(tiny_llama_dir))
    broken = load_model(str(files / "copy"))
    with torch.no_grad():
        broken.model.get_submodule(compressible_modules(broken.model)[1].name).weight.fill_(float("nan"))
    r = audit_models(broken, lm, load_specs([files / "jsd.stl"]), load_prompts(files / "p.yaml"))
    assert isinstance(r, AuditResult)
    assert not r.feasible and not r.satisfied and r.exit_code == 1 and r.pass_rate == 0.0
    assert "NaN or infinite logits" in r.reason
    data = r.to_dict()
    assert data["robustness"] == {"coherence": None} and data["reason"] == r.reason
    assert math.isinf(r.properties["coherence"].min)
    json.dumps(data, allow_nan=False)  # the JSON is strict: no NaN / Infinity


def test_token_signals_compare_the_two_models_own_continuations_in_free_mode(files, tiny_llama_dir):
    (files / "tok.stl").write_text("match = always[0:7] (token_match >= 0.5)\n"
                                   "stops = always[0:5] ((base_stop >= 0.5) -> eventually[0:2] (cand_stop >= 0.5))\n")
    same = audit(files / "copy", base=str(tiny_llama_dir), specs=[files / "tok.stl"], prompts=files / "p.yaml",
                 mode="free")
    assert same.satisfied and same.signals["token_match"]["min"] == 1.0  # same weights, same text
    assert same.properties["match"].min == pytest.approx(0.5)
    broken = audit(files / "q2", specs=[files / "tok.stl"], prompts=files / "p.yaml", mode="free")
    # 2-bit writes other text: some position differs from the base's own continuation
    assert not broken.satisfied and broken.signals["token_match"]["min"] == 0.0
    assert broken.properties["match"].min == pytest.approx(-0.5)
    assert {broken.signals[s]["min"] for s in ("base_stop", "cand_stop")} <= {0.0, 1.0}


def test_texts_shown_in_the_terminal_carry_no_control_characters():
    from toggle.audit.view import _short

    shown = _short("a\x1b[31mred\x00 line\nbreak \u202eevil \u00e9\U0001F600", 100)
    assert shown == "a\\x1b[31mred\\x00 line break \\u202eevil \u00e9\U0001F600"


def test_the_verdict_names_the_split_in_plain_words():
    from types import SimpleNamespace as N

    from toggle.audit.view import verdict

    r = N(prompts=[N(satisfied=True)] * 30, engine="torch", split="all", mode="teacher", feasible=True,
          satisfied=True, properties={})
    assert verdict(r) == "PASS: every property holds on all 30 prompts (teacher mode)"
    assert verdict(N(**{**vars(r), "split": "heldout"})) == "PASS: every property holds on all 30 heldout prompts (teacher mode)"


def test_a_prompts_json_row_keeps_each_verdict_where_json_has_no_infinity():
    from toggle.audit.core import PromptAudit
    row = PromptAudit("p", "text", {"late": math.inf, "never": -math.inf, "close": 0.25}).to_dict()
    assert row["robustness"] == {"late": None, "never": None, "close": 0.25}  # both infinities are null
    assert row["holds"] == {"late": True, "never": False, "close": True}
    assert row["satisfied"] is False and json.loads(json.dumps(row)) == row
