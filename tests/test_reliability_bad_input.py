"""Bad input everywhere: exit code 2 and one line naming the file, line or field and what would
be valid; never a traceback.

Every case runs the real command line in a subprocess (`python -m toggle.cli ...`), as a user
would, and checks the exit code, that stderr holds no traceback, and that the last line of
stderr is toggle's one-line error with the expected words (a spec checker may list several
errors, one `file:line:col: what` line each).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

PROMPTS_OK = """\
- {prompt: "The capital of France is"}
- {prompt: "Water boils at"}
- {prompt: "def add(a, b):", split: heldout}
"""
SPEC_OK = "const eps = 0.2\ncoherence = always[0:3] (jsd <= eps)\n"
PROFILE_OK = """\
granularity: block
knobs: {bits: [16, 8, 4]}
embedding: {bits: [16]}
sensitivity: {prompts: 1, levels: {bits: [4]}}
"""

# The progress line each long stage prints as it starts ("toggle: loading MODEL"): not a message.
STAGE_LINE = re.compile(r"toggle: (loading|tracing|held-out audit|writing the report)\b")


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOGGLE_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-m", "toggle.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def d(tmp_path_factory, tiny_llama_dir) -> Path:
    """A directory of broken inputs (and a few good ones to pair them with)."""
    d = tmp_path_factory.mktemp("bad-input")
    files = {
        # prompt suites
        "ok.yaml": PROMPTS_OK,
        "bad-json.jsonl": '{"prompt": "fine"}\n{"prompt": "x", oops}\n',
        "prompt-int.jsonl": '{"prompt": 5}\n',
        "tags-int.yaml": '- {prompt: "hi", tags: 5}\n',
        "answer-list.yaml": '- {prompt: "hi", answer: [1]}\n',
        "bad-split.jsonl": '{"prompt": "hi", "split": "cal"}\n',
        "unknown-field.jsonl": '{"prompt": "hi", "colour": "red"}\n',
        "dup-id.yaml": '- {id: a, prompt: "one"}\n- {id: a, prompt: "two"}\n',
        "empty.jsonl": "",
        "empty.yaml": "[]\n",
        "heldout-only.yaml": '- {prompt: "hi", split: heldout}\n',
        "calibration-only.yaml": '- {prompt: "hi"}\n- {prompt: "ho", split: calibration}\n',
        "bad-yaml.yaml": "- {prompt: [unclosed\n",
        "prompts.txt": "The capital of France is\n",
        # specs
        "ok.stl": SPEC_OK,
        "unknown-signal.stl": "coherence = always[0:3] (jsdd <= 0.1)\n",
        "reversed.stl": "coherence = always[3:1] (jsd <= 0.1)\n",
        "syntax.stl": "coherence = always[0:3] (jsd <= \n",
        "duplicate.stl": "a = always[0:3] (jsd <= 0.1)\na = always[0:3] (kl <= 0.1)\n",
        "bad-const.stl": "const eps = lots\na = always[0:3] (jsd <= eps)\n",
        "gold.stl": "factual = always[0:1] (gold_p_ratio >= 0.8)\n",
        # search profiles
        "ok-profile.yaml": PROFILE_OK,
        "profile-unknown-key.yaml": PROFILE_OK + "bogus: 1\n",
        "profile-empty-values.yaml": "knobs: {bits: []}\n",
        "profile-unknown-knob.yaml": "knobs: {bits: [16, 4], colour: [1]}\n",
        "profile-bits.yaml": "knobs: {bits: [16, 9]}\n",
        "profile-sparsity.yaml": "knobs: {sparsity: [0.0, 1.5]}\n",
        "profile-granularity.yaml": "granularity: layer\nknobs: {bits: [16, 4]}\n",
        "profile-not-mapping.yaml": "- bits\n",
        # other files
        "notes.txt": "not a model\n",
        "garbage.gguf": "definitely not gguf",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    m = str(tiny_llama_dir)
    plans = {
        "plan-ok.yaml": {"model": m, "modules": {"model.layers.0.mlp.up_proj": {"bits": 4}}},
        "plan-unknown-module.yaml": {"model": m, "modules": {"model.layers.0.nope": {"bits": 4}}},
        "plan-bits-17.yaml": {"model": m, "modules": {"model.layers.0.mlp.up_proj": {"bits": 17}}},
        "plan-bits-1.yaml": {"model": m, "modules": {"model.layers.0.mlp.up_proj": {"bits": 1}}},
        "plan-sparsity-1.yaml": {"model": m, "modules": {"model.layers.0.mlp.up_proj": {"bits": 4, "sparsity": 1.0}}},
        "plan-sparsity-neg.yaml": {"model": m, "modules": {"model.layers.0.mlp.up_proj": {"sparsity": -0.1}}},
        "plan-rank-0.yaml": {"model": m, "modules": {"model.layers.0.mlp.up_proj": {"rank_ratio": 0}}},
        "plan-other-model.yaml": {"model": "other-model", "modules": {"model.layers.0.mlp.up_proj": {"bits": 4}}},
        "plan-unknown-key.yaml": {"model": m, "modulez": {}},
        "plan-quantizer.yaml": {"model": m, "methods": {"quantizer": "magic"}},
        "plan-stats-escape.yaml": {"model": m, "meta": {"calibration_stats": "../../etc/passwd"},
                                   "modules": {"model.layers.0.mlp.up_proj": {"bits": 4}}},
    }
    import yaml

    for name, plan in plans.items():
        (d / name).write_text(yaml.safe_dump({"toggle_plan": 1, **plan}))
    (d / "plan-bad-yaml.yaml").write_text("model: [\n")
    _broken_models(d, tiny_llama_dir)
    _artifacts(d, tiny_llama_dir)
    return d


def _broken_models(d: Path, tiny: Path) -> None:
    (d / "not-a-model").mkdir()
    (d / "not-a-model" / "readme.txt").write_text("hello")
    # truncated safetensors: the header promises more bytes than the file holds
    shutil.copytree(tiny, d / "truncated")
    weights = d / "truncated" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    # only a pickle checkpoint
    (d / "pickled").mkdir()
    shutil.copy(tiny / "config.json", d / "pickled")
    (d / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    # a config that maps to the directory's own Python code: must not run without the flag
    shutil.copytree(tiny, d / "remote-code")
    config = json.loads((d / "remote-code" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "remote-code" / "config.json").write_text(json.dumps(config))
    (d / "remote-code" / "evil.py").write_text(f"open({str(d / 'PWNED')!r}, 'w').write('ran')\n")
    # GGUF files: an architecture transformers cannot read, and a truncated one
    import gguf

    w = gguf.GGUFWriter(str(d / "bert.gguf"), "bert")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (d / "truncated.gguf").write_bytes((d / "bert.gguf").read_bytes()[:40])
    # a decoder whose blocks toggle cannot find (an encoder-style BERT with an LM head)
    from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig

    bert = AutoModelForCausalLM.from_config(BertConfig(
        vocab_size=384, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        is_decoder=True))
    bert.save_pretrained(d / "bert-dir")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(d / "bert-dir")


def _artifacts(d: Path, tiny: Path) -> None:
    """A real toggle artifact, and copies whose manifest is broken or points outside."""
    from toggle.api import write_artifact
    from toggle.load import load_model
    from toggle.plan import ModuleSetting, Plan

    lm = load_model(str(tiny))
    plan = Plan(lm.model_id, {"model.layers.0.mlp.up_proj": ModuleSetting(bits=4)})
    write_artifact(lm, plan, d / "artifact")
    edits = {
        "artifact-escape": {"weights": "../../etc/passwd"},
        "artifact-absolute": {"weights": "/etc/passwd"},
        "artifact-symlink": {"weights": "linked.safetensors"},
        "artifact-version": {"format_version": 99},
        "artifact-no-modules": {"modules": [1, 2]},
    }
    for name, change in edits.items():
        shutil.copytree(d / "artifact", d / name)
        manifest = json.loads((d / name / "toggle.json").read_text())
        manifest.update(change)
        (d / name / "toggle.json").write_text(json.dumps(manifest))
    (d / "artifact-symlink" / "linked.safetensors").symlink_to("/etc/passwd")
    shutil.copytree(d / "artifact", d / "artifact-bad-json")
    (d / "artifact-bad-json" / "toggle.json").write_text("{not json")
    shutil.copytree(d / "artifact", d / "artifact-truncated")  # a copy cut short
    weights = d / "artifact-truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    shutil.copytree(d / "artifact", d / "artifact-bad-tokenizer")
    (d / "artifact-bad-tokenizer" / "tokenizer.json").write_text("{bad")


S = ("--specs", "{d}/ok.stl", "--prompts", "{d}/ok.yaml", "--profile", "{d}/ok-profile.yaml", "--out", "{d}/run")


def search(*extra: str, model: str = "{m}", budget: str = "100KB") -> tuple:
    """A search command with good inputs except what `extra` replaces (later options win)."""
    return ("search", model, "--budget", budget, *S, *extra)


# (id, command, words the one-line error must contain)
CASES = [
    # budgets
    ("budget-unknown-unit", search(budget="4XB"), ["--budget", "'4XB'", "unknown unit 'XB'", "GiB", "bpw"]),
    ("budget-negative", search(budget="-1GB"), ["--budget", "'-1GB'", "must be positive", "4GB"]),
    ("budget-zero", search(budget="0"), ["--budget", "'0'", "at least 1 byte"]),
    ("budget-words", search(budget="lots"), ["--budget", "'lots' is not a size", "3.5GiB"]),
    ("budget-bpw-range", search(budget="40bpw"), ["--budget", "bits per weight must be in (0, 32]"]),
    ("budget-infinite", search(budget="1e400"), ["--budget", "too large"]),
    ("budget-below-profile", search(budget="1KB"),
     ["--budget", "smaller than the most compressed plan", "ok-profile.yaml"]),
    # models
    ("model-missing", search(model="{d}/no-such-model"), ["no-such-model", "no such model", "smollm2-135m"]),
    ("model-text-file", search(model="{d}/notes.txt"), ["notes.txt", "not a model", ".gguf file"]),
    ("model-empty-dir", search(model="{d}/not-a-model"), ["not-a-model", "no config.json"]),
    ("model-truncated-safetensors", search(model="{d}/truncated"),
     ["truncated/model.safetensors", "truncated safetensors file", "the file holds"]),
    ("model-pickle-only", search(model="{d}/pickled"), ["pickled", "no safetensors weights", "pickle files are not loaded"]),
    ("model-remote-code", search(model="{d}/remote-code"), ["remote-code", "auto_map", "--trust-remote-code"]),
    ("model-gguf-unsupported-arch", search(model="{d}/bert.gguf"),
     ["bert.gguf", "GGUF architecture 'bert' is not supported", "llama"]),
    ("model-gguf-truncated", search(model="{d}/truncated.gguf"), ["truncated.gguf", "damaged or truncated GGUF"]),
    ("model-not-gguf", search(model="{d}/garbage.gguf"), ["garbage.gguf", "not a GGUF file"]),
    ("model-unsupported-architecture", ("modules", "{d}/bert-dir"),
     ["bert-dir", "BertLMHeadModel is not a supported architecture", "model.layers"]),
    # prompt suites
    ("prompts-bad-json-line", search("--prompts", "{d}/bad-json.jsonl"), ["bad-json.jsonl:2:", "not valid JSON"]),
    ("prompts-prompt-not-text", search("--prompts", "{d}/prompt-int.jsonl"),
     ["prompt-int.jsonl:1:", "field 'prompt'", "expected non-empty text"]),
    ("prompts-tags-not-list", search("--prompts", "{d}/tags-int.yaml"), ["tags-int.yaml", "item 1", "field 'tags'"]),
    ("prompts-answer-not-text", search("--prompts", "{d}/answer-list.yaml"), ["answer-list.yaml", "item 1", "field 'answer'"]),
    ("prompts-bad-split", search("--prompts", "{d}/bad-split.jsonl"),
     ["bad-split.jsonl:1:", "field 'split'", "expected one of calibration, confirmation, heldout"]),
    ("prompts-unknown-field", search("--prompts", "{d}/unknown-field.jsonl"),
     ["unknown-field.jsonl:1:", "'colour'", "valid fields"]),
    ("prompts-duplicate-id", search("--prompts", "{d}/dup-id.yaml"), ["dup-id.yaml", "item 2", "used twice"]),
    ("prompts-empty-jsonl", search("--prompts", "{d}/empty.jsonl"), ["empty.jsonl", "the suite is empty"]),
    ("prompts-empty-yaml", search("--prompts", "{d}/empty.yaml"), ["empty.yaml", "the suite is empty"]),
    ("prompts-bad-yaml", search("--prompts", "{d}/bad-yaml.yaml"), ["bad-yaml.yaml:", "not valid YAML"]),
    ("prompts-unknown-format", search("--prompts", "{d}/prompts.txt"), ["prompts.txt", "expected .yaml, .yml or .jsonl"]),
    ("prompts-missing", search("--prompts", "{d}/nope.jsonl"), ["nope.jsonl", "no such prompt suite file"]),
    ("prompts-no-calibration-split", search("--prompts", "{d}/heldout-only.yaml"),
     ["heldout-only.yaml", "no prompts in split 'calibration'"]),
    ("prompts-no-gold-answers", search("--specs", "{d}/gold.stl"), ["ok.yaml", "gold-answer signals", "has an answer"]),
    # specs
    ("spec-unknown-signal", search("--specs", "{d}/unknown-signal.stl"),
     ["unknown-signal.stl:1:", "unknown signal", "did you mean jsd", "hidden_cos"]),
    ("spec-reversed-interval", search("--specs", "{d}/reversed.stl"), ["reversed.stl:1:", "reversed interval [3:1]"]),
    ("spec-syntax", search("--specs", "{d}/syntax.stl"), ["syntax.stl:1:", "syntax error"]),
    ("spec-duplicate-property", search("--specs", "{d}/duplicate.stl"), ["duplicate.stl:2:", "'a'"]),
    ("spec-bad-const", search("--specs", "{d}/bad-const.stl"), ["bad-const.stl:1:13", "malformed const eps", "not a number"]),
    ("spec-missing", search("--specs", "{d}/nope.stl"), ["nope.stl", "no such spec file"]),
    ("spec-set-unknown-const", search("--set", "nope=1"), ["--set nope", "unknown const", "eps"]),
    ("spec-set-not-a-number", search("--set", "eps=big"), ["--set 'eps=big'", "NAME=NUMBER"]),
    ("specs-check", ("specs", "check", "{d}/unknown-signal.stl"), ["unknown-signal.stl:1:", "unknown signal"]),
    # search options
    ("trials-zero", search("--trials", "0"), ["--trials", "0 is not valid", ">= 1"]),
    ("relax-out-of-range", search("--relax", "2"), ["--relax", "[0, 1)"]),
    ("seed-negative", search("--seed", "-1"), ["--seed", "-1 is not valid", ">= 0"]),
    ("storage-bad-scheme", search("--storage", "foo://bar"), ["--storage 'foo://bar'", "postgresql://user@host/db"]),
    ("storage-no-driver", search("--storage", "mysql://me:secret@localhost/db"),
     ["--storage 'mysql://***@localhost/db'", "driver is not installed"]),
    ("storage-empty-journal", search("--storage", "journal:"), ["--storage 'journal:'", "journal:PATH needs a file path"]),
    ("objective-unknown", search("--objective", "speed"), ["--objective", "invalid choice", "size"]),
    # search profiles
    ("profile-unknown-key", search("--profile", "{d}/profile-unknown-key.yaml"),
     ["profile-unknown-key.yaml", "unknown key(s) bogus", "valid keys"]),
    ("profile-empty-values", search("--profile", "{d}/profile-empty-values.yaml"),
     ["profile-empty-values.yaml", "knobs.bits", "non-empty list"]),
    ("profile-unknown-knob", search("--profile", "{d}/profile-unknown-knob.yaml"),
     ["profile-unknown-knob.yaml", "knobs", "colour", "bits, group_size, scale_bits, quantizer, sparsity, rank_ratio"]),
    ("profile-bits-out-of-range", search("--profile", "{d}/profile-bits.yaml"),
     ["profile-bits.yaml", "knobs.bits", "9", "2..8, or 16"]),
    ("profile-sparsity-out-of-range", search("--profile", "{d}/profile-sparsity.yaml"),
     ["profile-sparsity.yaml", "knobs.sparsity", "[0, 1)"]),
    ("objective-flops-quant-only", search("--objective", "flops"),
     ["--objective flops", "ok-profile.yaml", "no pruning or low rank", "same FLOPs", "--objective size"]),
    ("profile-granularity", search("--profile", "{d}/profile-granularity.yaml"),
     ["profile-granularity.yaml", "granularity", "block, block_part, block_part_width, module"]),
    ("profile-not-a-mapping", search("--profile", "{d}/profile-not-mapping.yaml"), ["profile-not-mapping.yaml", "mapping"]),
    ("profile-missing", search("--profile", "nope"), ["nope: no such search profile", "default"]),
    # plans
    ("plan-unknown-module", ("apply", "{d}/plan-unknown-module.yaml", "{m}", "--out", "{d}/out"),
     ["unknown module(s) model.layers.0.nope", "toggle modules MODEL"]),
    ("plan-bits-17", ("apply", "{d}/plan-bits-17.yaml", "{m}", "--out", "{d}/out"),
     ["plan-bits-17.yaml", "modules.model.layers.0.mlp.up_proj.bits", "17", "2..8, or 16"]),
    ("plan-bits-1", ("apply", "{d}/plan-bits-1.yaml", "{m}", "--out", "{d}/out"),
     ["plan-bits-1.yaml", "up_proj.bits: 1 is not valid", "2..8, or 16"]),
    ("plan-sparsity-1", ("apply", "{d}/plan-sparsity-1.yaml", "{m}", "--out", "{d}/out"),
     ["plan-sparsity-1.yaml", "up_proj.sparsity: 1.0 is not valid", "[0, 1)"]),
    ("plan-sparsity-negative", ("apply", "{d}/plan-sparsity-neg.yaml", "{m}", "--out", "{d}/out"),
     ["plan-sparsity-neg.yaml", "up_proj.sparsity: -0.1", "[0, 1)"]),
    ("plan-rank-zero", ("apply", "{d}/plan-rank-0.yaml", "{m}", "--out", "{d}/out"),
     ["plan-rank-0.yaml", "up_proj.rank_ratio: 0", "(0, 1]"]),
    ("plan-other-model", ("apply", "{d}/plan-other-model.yaml", "{m}", "--out", "{d}/out"),
     ["plan-other-model.yaml", "made for 'other-model'"]),
    ("plan-unknown-key", ("apply", "{d}/plan-unknown-key.yaml", "{m}", "--out", "{d}/out"),
     ["plan-unknown-key.yaml", "unknown key(s) modulez", "valid keys"]),
    ("plan-unknown-quantizer", ("apply", "{d}/plan-quantizer.yaml", "{m}", "--out", "{d}/out"),
     ["plan-quantizer.yaml", "methods.quantizer: 'magic'", "rtn, awq, gptq"]),
    ("plan-bad-yaml", ("apply", "{d}/plan-bad-yaml.yaml", "{m}", "--out", "{d}/out"), ["plan-bad-yaml.yaml:2:", "not valid YAML"]),
    ("plan-missing", ("apply", "{d}/nope.yaml", "{m}", "--out", "{d}/out"), ["nope.yaml", "no such plan file"]),
    ("plan-stats-path-escapes", ("apply", "{d}/plan-stats-escape.yaml", "{m}", "--out", "{d}/out"),
     ["plan-stats-escape.yaml", "meta.calibration_stats", "'../../etc/passwd'", "plan's directory"]),
    ("apply-out-is-foreign-dir", ("apply", "{d}/plan-ok.yaml", "{m}", "--out", "{d}/not-a-model"),
     ["--out", "not-a-model", "not a toggle artifact", "new or empty directory"]),
    # artifacts: the manifest is validated before anything it names is opened
    ("artifact-weights-escape", ("modules", "{d}/artifact-escape"),
     ["artifact-escape/toggle.json", "weights: '../../etc/passwd'", "file name inside the artifact directory"]),
    ("artifact-weights-absolute", ("modules", "{d}/artifact-absolute"),
     ["artifact-absolute/toggle.json", "weights: '/etc/passwd'", "inside the artifact directory"]),
    ("artifact-weights-symlink-out", ("modules", "{d}/artifact-symlink"),
     ["artifact-symlink/toggle.json", "points outside the artifact directory"]),
    ("artifact-format-version", ("modules", "{d}/artifact-version"), ["toggle.json", "format_version: 99", "version 1"]),
    ("artifact-modules-not-mapping", ("modules", "{d}/artifact-no-modules"), ["toggle.json", "modules: expected a mapping"]),
    # audit
    ("audit-no-heldout-split", ("audit", "{d}/artifact", "--base", "{m}", "--specs", "{d}/ok.stl",
                                "--prompts", "{d}/calibration-only.yaml"),
     ["calibration-only.yaml", "no prompts in split 'heldout'", "split: heldout", "--split calibration"]),
    ("audit-missing-artifact", ("audit", "{d}/nope", "--specs", "{d}/ok.stl"), ["nope", "no such artifact"]),
    ("audit-artifact-truncated", ("audit", "{d}/artifact-truncated", "--specs", "{d}/ok.stl", "--prompts", "{d}/ok.yaml"),
     ["artifact-truncated/model.safetensors", "truncated safetensors file", "the file holds"]),
    ("audit-artifact-bad-tokenizer", ("audit", "{d}/artifact-bad-tokenizer", "--specs", "{d}/ok.stl", "--prompts",
                                      "{d}/ok.yaml"), ["artifact-bad-tokenizer", "cannot load the tokenizer"]),
    ("audit-manifest-escape", ("audit", "{d}/artifact-escape", "--specs", "{d}/ok.stl", "--prompts", "{d}/ok.yaml"),
     ["artifact-escape/toggle.json", "'../../etc/passwd'", "inside the artifact directory"]),
    ("artifact-manifest-not-json", ("modules", "{d}/artifact-bad-json"), ["artifact-bad-json/toggle.json", "not valid JSON"]),
]


@pytest.mark.parametrize("case_id, command, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(d, tiny_llama_dir, tmp_path, case_id, command, words):
    args = [a.format(d=d, m=tiny_llama_dir) for a in command]
    result = run_cli(*args, cache=tmp_path / "cache")
    err = result.stderr
    assert "Traceback" not in err, err[-3000:]
    assert result.returncode == 2, (result.returncode, err[-2000:])
    lines = [line for line in err.strip().splitlines()
             if line.strip() and not line.startswith("(see ") and not STAGE_LINE.match(line)]
    assert lines, "no message at all"
    message = lines[0]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    if case_id.startswith("spec"):
        # a spec checker lists every error it found, one `file:line:col: what` line each
        assert all(".stl:" in line for line in lines[1:]), err[-2000:]
    else:
        assert len(lines) == 1, err[-2000:]
        assert message.startswith("toggle"), message
    assert not (d / "PWNED").exists()  # no model code ran
    assert not (d / "run" / "plan.yaml").exists()  # nothing was searched


def test_a_malformed_const_is_reported_once_not_again_where_it_is_used(tmp_path):
    from toggle.errors import ToggleError
    from toggle.specs import load_specs

    spec = tmp_path / "s.stl"
    spec.write_text("const eps = lots\na = always[0:3] (jsd <= eps)\nb = always[0:3] (jsdd <= 0.1)\n")
    with pytest.raises(ToggleError) as e:
        load_specs([str(spec)])
    lines = e.value.message.splitlines()
    assert len(lines) == 2, lines  # the bad const, and the really unknown signal
    assert "s.stl:1:13: malformed const eps: 'lots' is not a number" in lines[0]
    assert "s.stl:3:" in lines[1] and "'jsdd'" in lines[1]
