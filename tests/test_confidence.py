"""Stated confidence: the one-sided Clopper-Pearson bound, its level option, and how the audit
reports it per property and for all properties together."""
import math

import pytest

from toggle.audit import AuditResult
from toggle.audit.core import PromptAudit, PropertyAudit
from toggle.cli import main
from toggle.confidence import Confidence, check_level, upper_bound
from toggle.errors import InvalidInput


def test_one_sided_upper_bounds_at_95_percent():
    assert upper_bound(0, 30) == pytest.approx(0.0950, abs=5e-5)
    assert upper_bound(0, 200) == pytest.approx(0.0149, abs=5e-5)
    # 0 of n: the bound solves (1 - p)^n = 1 - level exactly
    assert upper_bound(0, 30) == pytest.approx(1 - 0.05 ** (1 / 30), rel=1e-12)
    assert upper_bound(1, 10) == pytest.approx(0.3942, abs=5e-5)
    assert upper_bound(5, 5) == 1.0 and upper_bound(0, 0) == 1.0
    assert upper_bound(0, 30, 0.99) == pytest.approx(1 - 0.01 ** (1 / 30), rel=1e-12)


def test_the_sentence_and_the_dict():
    c = Confidence.of(0, 30)
    assert c.sentence() == "violation rate 0/30, at most 9.5% at 95% confidence (one-sided Clopper-Pearson) on these prompts"
    d = Confidence.of(3, 30, 0.9).to_dict()
    assert d["violations"] == 3 and d["prompts"] == 30 and d["violation_rate"] == 0.1 and d["level"] == 0.9
    assert d["upper_bound"] == pytest.approx(upper_bound(3, 30, 0.9)) and d["method"] == "one-sided Clopper-Pearson"
    # a level just below 1 is not rounded up to 100%
    assert "at 99.9999% confidence" in Confidence.of(0, 30, 0.999999).sentence()
    assert "at 99% confidence" in Confidence.of(0, 30, 0.99).sentence()
    assert "at 0.0000001% confidence" in Confidence.of(0, 30, 1e-9).sentence()  # nor a tiny one down to 0%


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1, "abc", "nan", True, 0.3, 1e-300])
def test_a_level_outside_half_to_1_is_refused(level):
    with pytest.raises(InvalidInput, match=r"--confidence: .* is not valid; expected a level from 0.5 up to \(not "
                                           r"including\) 1"):
        check_level(level)
    assert check_level("0.9") == 0.9 and check_level(0.5) == 0.5


def test_the_audit_states_rates_and_bounds_per_property_and_overall():
    rows = [PromptAudit(f"p{i}", "x", {"a": -1.0 if i == 0 else 0.5, "b": math.inf}) for i in range(30)]
    props = {"a": PropertyAudit("a", "f", 30, 29, -1.0, 0.5), "b": PropertyAudit("b", "g", 30, 30, math.inf, math.inf)}
    r = AuditResult("art", "base", "teacher", "heldout", props, rows)
    d = r.to_dict()
    assert d["confidence"]["violations"] == 1 and d["confidence"]["prompts"] == 30
    assert d["confidence"]["upper_bound"] == pytest.approx(upper_bound(1, 30))
    # +inf (vacuously true on every prompt) holds: no violation
    assert d["properties"]["b"]["confidence"]["violations"] == 0
    assert d["properties"]["b"]["confidence"]["upper_bound"] == pytest.approx(0.0950, abs=5e-5)
    assert d["properties"]["a"]["confidence"]["violation_rate"] == pytest.approx(1 / 30)
    assert sum(p.satisfied for p in r.prompts) == 29


def test_cli_refuses_a_bad_level_before_loading_anything(tmp_path, capsys):
    for command in (["audit", str(tmp_path)], ["search", str(tmp_path), "--budget", "1MB"]):
        code = main([*command, "--confidence", "1.2"])
        err = capsys.readouterr().err
        assert code == 2 and err.strip() == ("toggle: error: --confidence: 1.2 is not valid; expected a level "
                                             "from 0.5 up to (not including) 1, e.g. 0.95"), err


def test_a_chance_constraint_is_audited_on_its_share(tmp_path):
    # `on 90% of prompts` over 12 prompts allows one failure, as the search counts it
    from toggle.audit.core import _property_audit
    from toggle.audit.view import verdict
    from toggle.specs import load_specs

    (tmp_path / "c.stl").write_text("coh = always (jsd <= 0.1) on 90% of prompts\nall = always (kl <= 1)\n")
    share, every = load_specs([tmp_path / "c.stl"]).properties
    one_fails = [PromptAudit(f"p{i}", "x", {"coh": -0.01 if i == 0 else 0.02 + i / 100, "all": 0.5}) for i in range(12)]
    props = {p.name: _property_audit(p, one_fails, True) for p in (share, every)}
    r = AuditResult("art", "base", "teacher", "heldout", props, one_fails)
    assert props["coh"].required_share == 0.9 and props["coh"].holds == 11
    assert r.satisfied and r.exit_code == 0
    assert r.robustness["coh"] == pytest.approx(0.03)  # the second smallest: one failure allowed
    assert r.to_dict()["properties"]["coh"]["required_share"] == 0.9
    assert verdict(r).startswith("PASS: every property holds on 12 heldout prompts (teacher mode), coh on the share")
    two_fail = [PromptAudit(p.id, p.prompt, {"coh": -0.01 if i < 2 else 0.5, "all": 0.5}) for i, p in enumerate(one_fails)]
    props = {p.name: _property_audit(p, two_fail, True) for p in (share, every)}
    r = AuditResult("art", "base", "teacher", "heldout", props, two_fail)
    assert not r.satisfied and r.exit_code == 1 and r.robustness["coh"] == pytest.approx(-0.01)
    # a property without a share still needs every prompt
    props = {p.name: _property_audit(p, [PromptAudit("p", "x", {"coh": 0.5, "all": -0.1})], True) for p in (share, every)}
    assert not props["all"].satisfied and props["coh"].satisfied
