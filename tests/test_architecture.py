"""The package's shape: no import cycles (imports inside functions count too), few imports inside
functions, and the registries a contributor extends (methods, signals, formats, samplers)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from toggle.errors import InvalidInput

PACKAGE = Path(__file__).resolve().parent.parent / "toggle"
MAX_FUNCTION_IMPORTS = 12


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported toggle module, the import node, whether it sits inside a function) per import."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    inside: set[int] = set()
    typing_only: set[int] = set()  # under `if TYPE_CHECKING:`: never executed, no cycle at run time
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from X import y`: y is a submodule of X when such a module exists, else a name in X
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
        for target in targets:
            if target.split(".")[0] == "toggle" and target in modules:
                yield target, node, id(node) in inside


def _graph():
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    in_function = []
    for name, path in modules.items():
        for target, node, nested in _imports(name, path, modules):
            if target == name:
                continue
            edges[name].add(target)
            # Importing a submodule runs its packages' __init__ first, unless the importer is inside them.
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if not name.startswith(parent + "."):
                    edges[name].add(parent)
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        in_function.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return edges, sorted(set(in_function))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_counting_imports_inside_functions():
    edges, _ = _graph()
    assert len(edges) > 40  # the walk found the package
    assert _cycles(edges) == []


def test_a_cycle_is_found_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_few_imports_inside_functions_each_commented():
    _, nested = _graph()
    assert len(nested) <= MAX_FUNCTION_IMPORTS, nested
    for where in nested:
        file, line = where.rsplit(":", 1)
        lines = (PACKAGE.parent / file).read_text().splitlines()
        window = "\n".join(lines[max(0, int(line) - 4):int(line) + 1])
        assert "#" in window, f"{where}: an import inside a function needs a comment saying why"


# --- each registry is the one place a contributor extends (docs/architecture.md) --------------

def test_a_method_added_to_the_registry_is_used_by_plans_applier_cost_and_writer(tiny_llama_dir, tmp_path, monkeypatch):
    from toggle.api import write_artifact
    from toggle.compress import registry
    from toggle.compress.apply import PlanApplier
    from toggle.compress.quant import quantize_rtn
    from toggle.cost import CostModel
    from toggle.formats import read_artifact
    from toggle.load import load_model
    from toggle.plan import Methods, ModuleSetting, Plan

    def floor(w, cfg, gram=None, mask=None, prepared=None):
        return quantize_rtn(w * 0.999, cfg)

    monkeypatch.setitem(registry.METHODS["quantizer"], "floor",
                        registry.Method("floor", "quantizer", "RTN on slightly shrunk weights", quantize=floor))
    lm = load_model(str(tiny_llama_dir))
    name = "model.layers.0.mlp.up_proj"
    plan = Plan.from_dict({"model": lm.model_id, "methods": {"quantizer": "floor", "group_size": 32},
                           "modules": {name: {"bits": 4}}})
    rtn = Plan(lm.model_id, {name: ModuleSetting(bits=4)}, Methods(group_size=32))
    applier = PlanApplier(lm.model)
    floored, plain = (applier.effective_weight(name, ModuleSetting(bits=4), p.methods) for p in (plan, rtn))
    assert not torch_equal(floored, plain)
    assert CostModel(lm.model).of(plan).bytes == CostModel(lm.model).of(rtn).bytes
    info = write_artifact(lm, plan, tmp_path / "art", applier=applier)
    back = read_artifact(info.path)
    assert torch_equal(back.model.get_submodule(name).weight, floored)
    assert write_artifact(lm, plan, tmp_path / "m.gguf", "gguf", applier=applier).encodings[name] == ["Q4_1"]


def test_a_signal_added_to_the_registry_is_known_to_the_spec_parser(tmp_path, monkeypatch):
    from toggle import signals
    from toggle.specs import load_specs

    signal = signals.Signal("base_p_example", "the base model's probability of its greedy token",
                            "p(b)", signals.LOGPROBS, signals.STEP, lambda x: x.lp.gather(-1, x.b).squeeze(-1).exp())
    monkeypatch.setitem(signals.SIGNALS, signal.name, signal)
    (tmp_path / "s.stl").write_text("confident = always ((base_p_example >= 0.9) -> (top1_agree >= 0.5))\n")
    specs = load_specs([tmp_path / "s.stl"])
    assert specs.signals == ["base_p_example", "top1_agree"] and specs.needs == {signals.LOGPROBS}


def test_a_sampler_added_to_the_registry_runs_a_study(tmp_path, monkeypatch):
    from toggle.search import study
    from toggle.search.profile import parse_profile
    from toggle.search.sampler import RandomSearchSampler
    from toggle.search.synthetic import SyntheticObjective

    class Fixed(RandomSearchSampler):
        name = "fixed"

    monkeypatch.setitem(study.SAMPLERS, "fixed", (lambda c: Fixed(c.space, c.costs, c.budget_bytes, seed=c.seed), False))
    obj = SyntheticObjective(blocks=2, seed=0)
    profile = parse_profile({"knobs": {"bits": [16, 8, 4]}}, name="p")
    result = study.run_study(obj, obj.base16_bytes, profile=profile, run_dir=tmp_path, trials=3, sampler="fixed")
    assert result.summary["trials"] == 3 and result.summary["sampler"] == "fixed"


def test_a_format_added_to_the_registry_is_priced_by_the_cost_model(tiny_llama_dir, monkeypatch):
    from toggle import formats
    from toggle.cost import CostModel
    from toggle.load import load_model
    from toggle.modules import stored_other_tensors
    from toggle.plan import ModuleSetting, Plan

    class Dense16(formats.ToggleFormat):
        name, label = "dense16", "dense 16-bit"

        def problem(self, ref, setting, methods):
            return None if setting.untouched else "dense16 stores untouched 16-bit weights only"

        def module_bytes(self, ref, setting, methods):
            return 2 * ref.numel, ("dense",)

        def other_bytes(self, model, refs):
            return sum(2 * t.numel() for t in stored_other_tensors(model, refs).values())

    monkeypatch.setitem(formats.FORMATS, "dense16", Dense16())
    lm = load_model(str(tiny_llama_dir))
    costs = CostModel(lm.model, fmt="dense16")
    assert costs.of(Plan(lm.model_id)).bytes == costs.base16_bytes
    name = costs.refs[1].name
    assert not costs.usable(costs.refs[1], ModuleSetting(bits=4), Plan(lm.model_id).methods)
    with pytest.raises(InvalidInput, match=f"modules.{name}: cannot be stored in dense 16-bit"):
        costs.of(Plan(lm.model_id, {name: ModuleSetting(bits=4)}))


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.float(), b.float()))
