"""The import graph of widthlab has no cycle: every `import` / `from ... import` statement of every module (at any
depth, function-level imports included), read with ast, never executed."""
import ast
from pathlib import Path

from conftest import REPO

SRC = Path(REPO) / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "widthlab").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the widthlab modules it imports}; `from pkg import name` counts pkg.name when that is a module."""
    mods = _modules()

    def owner(name: str | None) -> str | None:  # the module a dotted name lives in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {o for t in targets if (o := owner(t)) and o != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_widthlab_modules():
    graph = import_graph()
    assert "widthlab.cli" in graph and "widthlab.toy.model" in graph  # the walk found the package
    assert "widthlab.lightning_cli" in graph["widthlab.cli"]  # function-level imports count
    assert cycles(graph) == []


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_toy_model_is_a_package_of_its_own():
    graph = import_graph()
    assert {"widthlab.toy.model", "widthlab.toy.data", "widthlab.toy.results"} <= set(graph)
    assert not any((SRC / "widthlab" / f).exists() for f in ("toy.py", "toy_data.py", "toy_results.py"))
    # the LM toolkit does not depend on the toy model (the command line reaches it by name only)
    assert not any(m.startswith("widthlab.toy") for n, deps in graph.items() if not n.startswith("widthlab.toy")
                   for m in deps)
