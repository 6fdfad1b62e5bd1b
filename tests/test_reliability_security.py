"""Security: the package never unpickles, never evaluates text, loads YAML safely and runs a
model's own code only behind --trust-remote-code; files a user hands over cannot make toggle
run code or read outside the directories they belong to.

The source scan works on tokens and syntax trees (not raw text), so a message that says
"pickle files are not loaded" is not a finding while `import pickle` is; each rule is also
checked against a snippet that breaks it, so the scan cannot silently pass.
"""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "toggle"
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all",
               "Loader", "UnsafeLoader", "FullLoader"}


def findings(source: str, name: str = "<snippet>") -> list[str]:
    """Every unsafe construct in a Python source, as `name:line: what`."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):  # names only: not strings, not comments
        if tok.type == tokenize.NAME and tok.string in UNSAFE_MODULES:
            out.append(f"{name}:{tok.start[0]}: uses {tok.string}")
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call):
            f = node.func
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(f, ast.Name) and f.id in UNSAFE_BUILTINS:
                out.append(f"{name}:{line}: calls {f.id}()")
            dotted = _dotted(f)
            if dotted == "torch.load" and not _is_true(kw.get("weights_only")):
                out.append(f"{name}:{line}: torch.load without weights_only=True")
            if dotted.endswith(("np.load", "numpy.load")) and "allow_pickle" in kw and not _is_false(kw["allow_pickle"]):
                out.append(f"{name}:{line}: numpy load with allow_pickle")
            if dotted.endswith("read_pickle"):
                out.append(f"{name}:{line}: read_pickle")
            if _is_true(kw.get("trust_remote_code")):
                out.append(f"{name}:{line}: trust_remote_code=True")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml" \
                and node.attr in UNSAFE_YAML:
            out.append(f"{name}:{line}: yaml.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "yaml" and any(a.name in UNSAFE_YAML for a in node.names):
            out.append(f"{name}:{line}: from yaml import an unsafe loader")
    return out


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def test_package_source_has_no_unsafe_loading_or_evaluation():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    problems = [p for f in files for p in findings(f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    assert problems == []


@pytest.mark.parametrize("snippet, what", [
    ("import pickle\n", "uses pickle"),
    ("from joblib import load\n", "uses joblib"),
    ("x = eval(text)\n", "calls eval()"),
    ("exec(code)\n", "calls exec()"),
    ("import torch\nw = torch.load(path)\n", "torch.load without weights_only=True"),
    ("import torch\nw = torch.load(path, weights_only=False)\n", "torch.load without weights_only=True"),
    ("import yaml\nd = yaml.load(text)\n", "yaml.load"),
    ("import yaml\nd = yaml.load(text, Loader=yaml.Loader)\n", "yaml.Loader"),
    ("from yaml import FullLoader\n", "from yaml import an unsafe loader"),
    ("m = AutoModel.from_pretrained(p, trust_remote_code=True)\n", "trust_remote_code=True"),
    ("import numpy as np\na = np.load(p, allow_pickle=True)\n", "numpy load with allow_pickle"),
])
def test_the_scan_catches_each_unsafe_construct(snippet, what):
    assert any(what in p for p in findings(snippet)), findings(snippet)


@pytest.mark.parametrize("snippet", [
    'raise ValueError("pickle files are not loaded for safety")\n',  # a message, not a use
    "# never eval( spec text\n",
    "import torch\nw = torch.load(path, weights_only=True)\n",
    "import yaml\nd = yaml.safe_load(text)\n",
    "model.eval()\n",
    "m = AutoModel.from_pretrained(p, trust_remote_code=trust_remote_code)\n",
])
def test_the_scan_passes_safe_code(snippet):
    assert findings(snippet) == []


PAYLOAD = '!!python/object/apply:os.system ["touch {marker}"]'


@pytest.mark.parametrize("kind", ["plan", "prompts", "profile"])
def test_yaml_tags_that_would_run_code_are_refused(kind, tiny_llama_dir, tmp_path, capsys):
    """A YAML file a user is handed (plan, prompt suite, search profile) cannot run code."""
    from toggle.cli import main

    marker = tmp_path / "PWNED"
    bad = tmp_path / f"{kind}.yaml"
    payload = PAYLOAD.format(marker=marker)
    if kind == "plan":
        bad.write_text(f"toggle_plan: 1\nmodel: {payload}\nmodules: {{}}\n")
        args = ["apply", str(bad), str(tiny_llama_dir), "--out", str(tmp_path / "out")]
    elif kind == "prompts":
        bad.write_text(f"- prompt: {payload}\n")
        args = ["search", str(tiny_llama_dir), "--budget", "1MB", "--prompts", str(bad), "--out", str(tmp_path / "run")]
    else:
        bad.write_text(f"knobs: {payload}\n")
        args = ["search", str(tiny_llama_dir), "--budget", "1MB", "--profile", str(bad), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{kind}.yaml" in err and "not valid YAML" in err, err
    assert not marker.exists()


def test_spec_text_is_parsed_not_evaluated(tmp_path):
    """A spec whose formula is Python code is a syntax error, never run."""
    from toggle.errors import ToggleError
    from toggle.specs import load_specs

    marker = tmp_path / "PWNED"
    spec = tmp_path / "evil.stl"
    spec.write_text(f"p = __import__('os').system('touch {marker}')\n")
    with pytest.raises(ToggleError) as e:
        load_specs([str(spec)])
    assert "evil.stl:1:" in e.value.message
    assert not marker.exists()


@pytest.mark.parametrize("weights", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.safetensors"])
def test_artifact_manifest_cannot_name_a_file_outside_its_directory(weights, tiny_llama_dir, tmp_path):
    """load_compressed validates toggle.json before opening anything it names."""
    import json

    from toggle.errors import ToggleError
    from toggle.api import write_artifact
    from toggle.formats import read_artifact
    from toggle.load import load_model
    from toggle.plan import ModuleSetting, Plan

    lm = load_model(str(tiny_llama_dir))
    art = tmp_path / "artifact"
    write_artifact(lm, Plan(lm.model_id, {"model.layers.0.mlp.up_proj": ModuleSetting(bits=4)}), art)
    read_artifact(str(art))  # the untouched artifact loads
    manifest = json.loads((art / "toggle.json").read_text())
    manifest["weights"] = weights
    (art / "toggle.json").write_text(json.dumps(manifest))
    with pytest.raises(ToggleError) as e:
        read_artifact(str(art))
    assert "toggle.json" in e.value.message and repr(weights) in e.value.message, e.value.message
    assert "inside the artifact directory" in e.value.message, e.value.message


def test_yaml_aliases_and_repeated_keys_are_refused(tmp_path):
    """A plan of a few hundred bytes with nested aliases expanded to a 2 GB manifest; a repeated
    key silently took the last value."""
    from toggle.errors import InvalidInput
    from toggle.files import parse_yaml

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b]\n"
    with pytest.raises(InvalidInput, match=r"plan.yaml:2:8: not valid YAML: alias \*a is not read here"):
        parse_yaml(laughs, "plan.yaml")
    with pytest.raises(InvalidInput, match=r"plan.yaml:3:3: not valid YAML: key 'up' appears twice"):
        parse_yaml("modules:\n  up: {bits: 4}\n  up: {bits: 8}\n", "plan.yaml")
    assert parse_yaml("modules:\n  up: {bits: 4}\n  down: {bits: 8}\n", "plan.yaml") == {
        "modules": {"up": {"bits": 4}, "down": {"bits": 8}}}


def test_a_control_character_in_yaml_is_one_line():
    from toggle.errors import InvalidInput
    from toggle.files import parse_yaml

    with pytest.raises(InvalidInput, match="s.yaml: not valid YAML: .*special characters are not allowed"):
        parse_yaml("- prompt: a\x1f\n", "s.yaml")
