"""Reports and the search's held-out audit: files, headline numbers, self-contained HTML, plots,
operating points, comparisons, and a report rebuilt from a run directory alone."""
import json
import re
import shutil

import pytest

from toggle.cli import main
from toggle.errors import InvalidInput
from toggle.plan import Plan
from toggle.report import write_report
from toggle.api import search as run_search

PROMPTS = """
- {id: c1, prompt: "The capital of France is", split: calibration}
- {id: c2, prompt: "Water boils at", split: calibration}
- {id: c3, prompt: "Once upon a time", split: calibration}
- {id: h1, prompt: "def add(a, b):", split: heldout}
- {id: h2, prompt: "Question: what is two plus two?", split: heldout}
- {id: h3, prompt: "The capital of Italy is", split: heldout}
"""
PLOTS = ("headline.png", "pareto.png", "plan_heatmap.png", "robustness.png", "convergence.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir):
    """A BO search (A) and a random search with --relax 0.5 (B) of the tiny model."""
    d = tmp_path_factory.mktemp("report")
    (d / "p.yaml").write_text(PROMPTS)
    (d / "s.stl").write_text("const eps = 0.2\ncoherence = always[0:7] (jsd <= eps)\n")
    common = dict(specs=[d / "s.stl"], prompts=d / "p.yaml", progress=False)
    a = run_search(str(tiny_llama_dir), "60KB", trials=8, out=d / "A", **common)
    b = run_search(str(tiny_llama_dir), "60KB", trials=5, out=d / "B", sampler="random", relax=0.5, **common)
    assert a.satisfied and b.satisfied, "the tiny searches are expected to find a plan"
    return d, a, b


def test_search_writes_the_heldout_audit_and_the_report(runs):
    d, a, _ = runs
    summary = json.loads((d / "A" / "summary.json").read_text())
    held = summary["heldout"]
    audit = json.loads((d / "A" / "heldout.json").read_text())
    assert audit["mode"] == "teacher" and audit["split"] == "heldout"
    assert [p["id"] for p in audit["prompts"]] == ["h1", "h2", "h3"]
    assert held["prompts"] == 3 and held["pass_rate"] == audit["pass_rate"]
    assert held["satisfied"] == audit["satisfied"] == all(p["satisfied"] for p in audit["prompts"])
    assert set(held["robustness"]) == {"coherence"}
    assert held["robustness"]["coherence"] == pytest.approx(min(p["robustness"]["coherence"] for p in audit["prompts"]))
    assert summary["specs"]["consts"] == {"eps": 0.2} and summary["specs"]["relax"] == 0.0
    calibration = json.loads((d / "A" / "calibration.json").read_text())
    assert set(calibration["per_prompt"]["coherence"]) == {"c1", "c2", "c3"}
    # the winner's trial was scored in early-exit chunks (other batch compositions): float32 sums
    # differ from the one-pass rescoring in the eighth digit
    assert calibration["robustness"]["coherence"] == pytest.approx(summary["robustness"]["coherence"], abs=1e-6)
    for name in ("report.md", "report.html", "space.json", *PLOTS):
        assert (d / "A" / name).is_file(), name
    # stated confidence: failed prompts of 3, one-sided 95% Clopper-Pearson upper bound
    from toggle.confidence import upper_bound

    failed = sum(not p["satisfied"] for p in audit["prompts"])
    assert held["confidence"]["violations"] == failed and held["confidence"]["prompts"] == 3
    assert held["confidence"]["upper_bound"] == pytest.approx(upper_bound(failed, 3))
    assert held["properties"]["coherence"]["prompts"] == 3
    bound = f"{100 * upper_bound(failed, 3):.1f}".removesuffix(".0")
    sentence = (f"violation rate {failed}/3, at most {bound}% at 95% confidence (one-sided Clopper-Pearson) "
                f"on these prompts")
    for name in ("report.md", "report.html"):
        assert sentence in (d / "A" / name).read_text(), name


def test_report_holds_the_headline_numbers(runs):
    d, a, _ = runs
    s = a.summary
    md = (d / "A" / "report.md").read_text()
    html = (d / "A" / "report.html").read_text()
    for text in (md, html):
        assert f"{100 * s['size_reduction']:.1f}% smaller" in text
        assert f"{s['flops_reduction']:.2f}x fewer" in text
        assert f"{100 * s['heldout']['pass_rate']:.1f}% of the prompts satisfy every property" in text
        assert f"trial {s['best_trial']}" in text
        assert f"{s['robustness']['coherence']:+.4f}" in text  # calibration robustness of the winner
    for plot in PLOTS:
        assert f"]({plot})" in md


def test_html_is_self_contained_with_every_plot_embedded(runs):
    d, _, _ = runs
    html = (d / "A" / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == len(PLOTS)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(?!data:)', html)  # no external asset, no link out
    assert "<link" not in html and "<script" not in html
    for plot in PLOTS:
        data = (d / "A" / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, plot


def test_report_is_rebuilt_from_the_run_directory_alone(runs, tmp_path, monkeypatch, capsys):
    d, a, _ = runs
    copy = tmp_path / "moved"
    shutil.copytree(d / "A", copy)
    for name in ("report.md", "report.html", *PLOTS):
        (copy / name).unlink()
    shutil.rmtree(copy / "operating_points")
    import toggle.load

    def no_model(*args, **kwargs):
        raise AssertionError("the report must not load a model")

    monkeypatch.setattr(toggle.load, "load_model", no_model)
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"size {100 * a.summary['size_reduction']:.1f}% smaller" in out
    rebuilt = (copy / "report.md").read_text().replace(str(copy), "RUN")
    original = (d / "A" / "report.md").read_text().replace(str(d / "A"), "RUN")
    assert rebuilt == original
    for name in PLOTS:
        assert (copy / name).is_file()


def test_operating_points_are_plans_from_the_front(runs, tiny_llama_dir, capsys):
    d, a, b = runs
    report = write_report(d / "A", compare=[d / "B"])
    points = {p.name: p for p in report.operating_points}
    assert set(points) == {"most_compressed", "safety_margin", "relaxed"}
    best = Plan.load(points["most_compressed"].path)
    winner = Plan.load(d / "A" / "plan.yaml")
    assert best.modules == winner.modules and best.methods == winner.methods
    assert points["most_compressed"].bytes == a.summary["compressed_size_bytes"]
    relaxed = Plan.load(points["relaxed"].path)
    assert relaxed.modules == Plan.load(d / "B" / "plan.yaml").modules
    # written beside the report of A, not into the compared run B's directory
    assert points["relaxed"].path.parent == d / "A" / "operating_points"
    assert not (d / "B" / "operating_points" / "relaxed.yaml").exists()
    assert points["relaxed"].bytes == b.summary["compressed_size_bytes"]
    safe = points["safety_margin"]
    if safe.trial is not None:  # the smallest plan keeping half the untouched model's margin (eps - 0)
        assert safe.min_margin >= 0.5 * 0.2 and safe.bytes >= points["most_compressed"].bytes
    else:
        trials = [t for t in _trials(d / "A") if t["feasible"]]
        assert all(t["min_margin"] < 0.1 for t in trials)
    # a device can apply an operating point directly (its calibration statistics resolve)
    code = main(["apply", str(points["most_compressed"].path), str(tiny_llama_dir), "--out", str(d / "art")])
    assert code == 0, capsys.readouterr().err


def test_report_of_an_interrupted_search_says_so(runs, tmp_path):
    d, a, _ = runs
    copy = tmp_path / "interrupted"
    shutil.copytree(d / "A", copy)
    summary = json.loads((copy / "summary.json").read_text())
    del summary["heldout"]
    (copy / "summary.json").write_text(json.dumps({**summary, "interrupted": True}))
    md = write_report(copy).markdown.read_text()
    assert (f"Note: the search was interrupted (Ctrl-C) after {summary['trials']} trials, before the held-out audit: "
            f"this is what those trials hold; rerun the same command to resume it") in md
    assert "interrupted" not in (d / "A" / "report.md").read_text()


def test_compare_refuses_another_model_and_takes_no_relaxed_point_from_other_specs(runs, tmp_path, capsys):
    d, a, b = runs
    assert set(a.summary["identity"]) == {"model", "trace", "spec_files", "consts", "prompts", "profile", "methods"}
    assert b.summary["identity"]["model"] == a.summary["identity"]["model"]
    assert b.summary["identity"]["consts"] != a.summary["identity"]["consts"]  # --relax 0.5

    def variant(name, **changes):
        other = tmp_path / name
        shutil.copytree(d / "B", other)
        summary = json.loads((other / "summary.json").read_text())
        summary["identity"].update(changes)
        (other / "summary.json").write_text(json.dumps(summary))
        return other

    other_model = variant("other-model", model="0123456789")
    with pytest.raises(InvalidInput, match=r"--compare: .*other-model is a search of other model weights"):
        write_report(d / "A", compare=[other_model])
    assert main(["report", str(d / "A"), "--compare", str(other_model)]) == 2
    assert "compare runs of the same model" in capsys.readouterr().err

    other_specs = variant("other-specs", spec_files="0123456789")
    points = {p.name: p for p in write_report(d / "A", compare=[other_specs]).operating_points}
    relaxed = points["relaxed"]
    assert relaxed.path is None and relaxed.trial is None
    assert relaxed.note == "not taken: that run has other spec files (only its thresholds may differ)"
    assert "not taken: that run has other spec files" in (d / "A" / "report.md").read_text()
    # a run with the same inputs after it still gives the point, once
    points = [p for p in write_report(d / "A", compare=[other_specs, d / "B"]).operating_points if p.name == "relaxed"]
    assert len(points) == 1 and points[0].bytes == b.summary["compressed_size_bytes"]


def test_compare_and_sibling_studies_reach_the_convergence_plot(runs, tiny_llama_dir, tmp_path):
    d, a, _ = runs
    report = write_report(d / "A", compare=[d / "B"])
    md = report.markdown.read_text()
    assert "| random relax 0.5 (B) |" in md and "| bo (A) |" in md
    # a baseline run into the same directory keeps the BO study in study.db: a sibling series
    shared = tmp_path / "shared"
    shutil.copytree(d / "A", shared)
    run_search(str(tiny_llama_dir), "60KB", trials=3, out=shared, sampler="random", specs=[d / "s.stl"],
               prompts=d / "p.yaml", progress=False)
    from toggle.report.data import load_run

    run = load_run(shared)
    assert run.summary["sampler"] == "random"
    # the study's name ends with its inputs' digest (the same for both samplers here)
    assert a.study_name.startswith("bo-size-60000-") and run.summary["study"].startswith("random-size-60000-")
    assert [s.label for s in run.siblings] == [f"bo (study {a.study_name})"]
    assert len(run.siblings[0].trials) == 8


def test_in_process_heldout_audit_matches_the_applied_artifact(runs, tiny_llama_dir, capsys):
    """The search audits its winner on simulated weights; the artifact gives the same verdict."""
    d, _, _ = runs
    assert main(["apply", str(d / "A" / "plan.yaml"), str(tiny_llama_dir), "--out", str(d / "winner")]) == 0
    assert main(["audit", str(d / "winner"), "--specs", str(d / "s.stl"), "--prompts", str(d / "p.yaml"),
                 "--json", str(d / "winner.json")]) in (0, 1)
    capsys.readouterr()
    artifact = json.loads((d / "winner.json").read_text())
    simulated = json.loads((d / "A" / "heldout.json").read_text())
    assert artifact["pass_rate"] == simulated["pass_rate"]
    for x, y in zip(artifact["prompts"], simulated["prompts"]):
        assert x["robustness"]["coherence"] == pytest.approx(y["robustness"]["coherence"], abs=2e-3)


def test_no_heldout_prompts_skips_the_audit_with_the_reason(runs, tiny_llama_dir, tmp_path):
    from toggle.compress.apply import PlanApplier
    from toggle.load import load_model
    from toggle.prompts import load_prompts
    from toggle.specs import load_specs
    from toggle.api import heldout_check
    from toggle.rundir import RunDir

    d, _, _ = runs
    (tmp_path / "cal.yaml").write_text("- {prompt: hello}\n- {prompt: world}\n")
    lm = load_model(str(tiny_llama_dir))
    block = heldout_check(Plan.load(d / "A" / "plan.yaml"), lm, load_specs([d / "s.stl"]),
                          load_prompts(tmp_path / "cal.yaml"), PlanApplier(lm.model), RunDir(tmp_path))
    assert "no prompts in split 'heldout'" in block["skipped"]
    assert not (tmp_path / "heldout.json").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory"),
    ("empty", "not a toggle run directory (no summary.json)"),
    ("bad-csv", "trials.csv: line 3: "),
    ("bad-json", "summary.json: not valid JSON"),
])
def test_report_bad_input_exits_2(runs, tmp_path, capsys, case, message):
    d, _, _ = runs
    target = tmp_path / "run"
    if case == "empty":
        target.mkdir()
    elif case in ("bad-csv", "bad-json"):
        shutil.copytree(d / "A", target)
        if case == "bad-csv":
            lines = (target / "trials.csv").read_text().splitlines()
            lines[2] = lines[2] + ",extra"
            (target / "trials.csv").write_text("\n".join(lines) + "\n")
        else:
            (target / "summary.json").write_text("{not json")
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _trials(run_dir):
    from toggle.rundir import RunDir

    return RunDir(run_dir).read_trials()[0]


def test_read_trials_rejects_a_foreign_csv(tmp_path):
    from toggle.rundir import RunDir

    (tmp_path / "trials.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InvalidInput, match="line 1: expected the columns number, state"):
        RunDir(tmp_path).read_trials()


def test_the_report_says_what_the_base_model_fails_and_why_no_trial_ran(runs, tmp_path):
    d, _, _ = runs
    copy = tmp_path / "noted"
    shutil.copytree(d / "A", copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary.update(satisfied=False, best_trial=None, stopped="the smallest plan left is 1.2 MB, over the budget",
                   base_failures={"note": "the base model itself fails sure (s.stl:2) on 3 of 3 prompts"})
    (copy / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(copy)]) == 0
    text = (copy / "report.md").read_text()
    assert ("**VIOLATED**: no plan within the budget was evaluated: the smallest plan left is 1.2 MB, over the "
            "budget.") in text
    assert "Note: the base model itself fails sure (s.stl:2) on 3 of 3 prompts." in text


def test_a_vacuous_property_reads_n_a_in_the_report(runs, tmp_path):
    # calibration.json and summary.json store +inf robustness (a property nothing on the prompts
    # checked) as "inf"; the column reads calibration.json, else (an older run) summary.json
    d, _, _ = runs
    copy = tmp_path / "vacuous"
    shutil.copytree(d / "A", copy)
    calibration = json.loads((copy / "calibration.json").read_text())
    name = next(iter(calibration["robustness"]))
    calibration["robustness"][name] = "inf"
    (copy / "calibration.json").write_text(json.dumps(calibration))
    assert main(["report", str(copy)]) == 0
    rows = [line for line in (copy / "report.md").read_text().splitlines() if line.startswith(f"| {name} |")]
    assert rows and rows[0].split("|")[3].strip() == "n/a"


def test_the_report_lists_only_the_files_the_run_has(runs, tmp_path):
    d, _, _ = runs
    copy = tmp_path / "partial"
    shutil.copytree(d / "A", copy)
    (copy / "heldout.json").unlink()
    assert main(["report", str(copy)]) == 0
    files = (copy / "report.md").read_text().split("## Files", 1)[1]
    assert "plan.yaml (best plan)" in files and "summary.json" in files
    assert "heldout.json" not in files and "sensitivity.json" not in files


def test_heldout_check_keeps_the_properties_it_can_check_without_gold_answers(runs, tiny_llama_dir, tmp_path):
    from toggle.api import heldout_check
    from toggle.compress.apply import PlanApplier
    from toggle.load import load_model
    from toggle.prompts import load_prompts
    from toggle.rundir import RunDir
    from toggle.specs import load_specs

    d, _, _ = runs
    (tmp_path / "gold.stl").write_text("fact = always (gold_p_ratio >= 0.5)\n")
    (tmp_path / "p.yaml").write_text("- {prompt: 'Paris is in', answer: France}\n"
                                     "- {prompt: 'def add(a, b):', split: heldout}\n"
                                     "- {prompt: 'Once upon a time', split: heldout}\n")
    lm = load_model(str(tiny_llama_dir))
    specs = load_specs([d / "s.stl", tmp_path / "gold.stl"])
    block = heldout_check(Plan.load(d / "A" / "plan.yaml"), lm, specs, load_prompts(tmp_path / "p.yaml"),
                          PlanApplier(lm.model), RunDir(tmp_path))
    assert "skipped" not in block and block["prompts"] == 2
    assert set(block["robustness"]) == {"coherence"}  # checked on both held-out prompts
    assert block["unchecked"] == {"fact": "no held-out prompt has a gold answer"}
    only_gold = load_specs([tmp_path / "gold.stl"])
    block = heldout_check(Plan.load(d / "A" / "plan.yaml"), lm, only_gold, load_prompts(tmp_path / "p.yaml"),
                          PlanApplier(lm.model), RunDir(tmp_path))
    assert block["skipped"].endswith("property fact needs gold answers, but no heldout prompt has an `answer`; add "
                                     f"answers or leave {tmp_path / 'gold.stl'} out of --specs")


def test_a_searched_plan_applies_to_the_same_weights_at_another_path(runs, tiny_llama_dir, tmp_path, capsys):
    d, a, _ = runs
    assert Plan.load(d / "A" / "plan.yaml").meta["fingerprint"].startswith("dir-")
    copy = tmp_path / "moved-model"
    shutil.copytree(tiny_llama_dir, copy)
    assert main(["apply", str(d / "A" / "plan.yaml"), str(copy), "--out", str(tmp_path / "art")]) == 0, \
        capsys.readouterr().err
