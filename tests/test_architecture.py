"""The package's shape: no import cycles (imports inside functions count too), few imports inside
functions, and the registries a contributor extends (methods, signals, formats, samplers)."""
from __future__ import annotations

import ast
from pathlib import Path

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
