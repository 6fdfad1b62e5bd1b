"""The shipped examples stay valid: specs parse, the prompt suite loads with both splits, the
search-apply-audit script runs end to end."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toggle import api
from toggle.api import write_artifact
from toggle.errors import InvalidInput
from toggle.load import load_model
from toggle.plan import ModuleSetting, Plan
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


def test_example_script_runs_end_to_end_with_the_default_profile(tiny_llama_dir, tmp_path):
    """The example (search with the default profile, whose pruner is Wanda, then apply and audit)
    on a tiny model; then a Wanda-pruned plan of that run goes through the same API calls."""
    (tmp_path / "p.yaml").write_text(
        "- {prompt: 'The capital of France is', split: calibration}\n- {prompt: 'Water boils at', split: calibration}\n"
        "- {prompt: 'Once upon a time', split: heldout}\n")
    (tmp_path / "s.stl").write_text("const eps = 0.3\ncoherence = always[0:3] (jsd <= eps)\n")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES.parent))
    done = subprocess.run([sys.executable, str(EXAMPLES / "search_apply_audit.py"), str(tiny_llama_dir), "200KB", "3",
                           "--specs", str(tmp_path / "s.stl"), "--prompts", str(tmp_path / "p.yaml"), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert "satisfied=True" in done.stdout and "held-out audit (free-running)" in done.stdout
    assert (out / "artifact" / "toggle.json").is_file()

    plan = Plan.load(out / "plan.yaml")
    assert plan.profile == "default" and plan.methods.pruner == "wanda"
    name = "model.layers.0.mlp.up_proj"
    pruned = plan.with_setting(name, ModuleSetting(bits=8, sparsity=0.5))
    pruned.save(out / "pruned.yaml")  # beside calibration_stats.safetensors, which its meta names
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises(InvalidInput, match="wanda needs calibration activation statistics"):
        write_artifact(lm, pruned, tmp_path / "no-stats")  # what the example did before toggle.api.apply
    info = api.apply(out / "pruned.yaml", str(tiny_llama_dir), tmp_path / "pruned-artifact")
    assert info.encodings[name] == ["bitmask"]
    report = api.audit(tmp_path / "pruned-artifact", specs=[str(tmp_path / "s.stl")], prompts=str(tmp_path / "p.yaml"))
    assert report.prompts and report.split == "heldout"
