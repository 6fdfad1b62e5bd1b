"""No stale result: a rerun into the same run directory with other inputs starts a new study and
says why; the same inputs resume; an explicit --study with other inputs is refused (exit 2)."""
import pytest

from search_inputs import write_search_inputs
from toggle.api import search
from toggle.errors import InvalidInput


def test_each_input_that_changes_a_result_starts_a_new_study(tiny_llama_dir, tmp_path, capsys):
    write_search_inputs(tmp_path)
    run = tmp_path / "run"
    inputs = dict(specs=[tmp_path / "s.stl"], prompts=tmp_path / "p.yaml", profile=str(tmp_path / "profile.yaml"))

    def again(**changed):
        result = search(str(tiny_llama_dir), "100KB", trials=2, sampler="random", out=run, **{**inputs, **changed})
        notes = [line for line in capsys.readouterr().err.splitlines() if "starting a new study" in line]
        return result, notes

    first, notes = again()
    assert notes == [] and first.summary["trials"] == 2
    same, notes = again()
    assert same.study_name == first.study_name and notes == [] and same.summary["trials"] == 2  # resumed
    names = {first.study_name}
    (tmp_path / "s2.stl").write_text("# another file, the same property\n" + (tmp_path / "s.stl").read_text())
    (tmp_path / "p2.yaml").write_text((tmp_path / "p.yaml").read_text() + '- {prompt: "def add(a, b):"}\n')
    profile = (tmp_path / "profile.yaml").read_text()
    (tmp_path / "profile2.yaml").write_text(profile.replace("sparsity: [0.0, 0.3]", "sparsity: [0.0, 0.5]"))
    for changed, why in [({"overrides": {"eps": 0.1}}, "spec constants (--set / --relax)"),
                         ({"relax": 0.5}, "spec constants (--set / --relax)"),
                         ({"specs": [tmp_path / "s2.stl"]}, "spec files"),
                         ({"prompts": tmp_path / "p2.yaml"}, "prompt suite"),
                         ({"profile": str(tmp_path / "profile2.yaml")}, "search profile")]:
        result, notes = again(**changed)
        assert result.study_name not in names, changed
        assert len(notes) == 1 and why in notes[0] and result.study_name in notes[0], (changed, notes)
        assert result.notes == (notes[0].removeprefix("toggle: "),)
        assert result.summary["trials"] == 2  # the new study's own trials, none of the old ones
        names.add(result.study_name)
    # a study named explicitly is not reused for other inputs
    with pytest.raises(InvalidInput, match=r"--study: '.+' in .+ was run with other spec constants \(--set / --relax\); "
                                           r"pass another --study name"):
        search(str(tiny_llama_dir), "100KB", trials=2, sampler="random", out=run, study=result.study_name,
               **{**inputs, "profile": str(tmp_path / "profile2.yaml"), "overrides": {"eps": 0.3}})
    # nor for another budget or objective: its trials were judged feasible against its own
    named = dict(trials=2, sampler="random", out=tmp_path / "named", study="mine", **inputs)
    search(str(tiny_llama_dir), "100KB", **named)
    with pytest.raises(InvalidInput, match=r"--study: 'mine' in .+ was run with --budget 100.0 KB \(100000 bytes\), "
                                           r"not --budget 90.0 KB \(90000 bytes\): its trials were judged against that"):
        search(str(tiny_llama_dir), "90KB", **named)
    with pytest.raises(InvalidInput, match=r"--study: 'mine' .* was run with --objective size, not --objective margin"):
        search(str(tiny_llama_dir), "100KB", objective="margin", **named)
    assert search(str(tiny_llama_dir), "100KB", **{**named, "trials": 3}).summary["trials"] == 3  # the same: resumed
