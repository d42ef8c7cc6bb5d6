"""Module boundaries of lorastudio/: no module imports another that imports it back.

Every module is parsed with `ast` (nothing is imported), and every import statement counts, at any
level: top of the file, inside functions, under `if TYPE_CHECKING`. A lazy import inside a function
hides a cycle from Python's import machinery but not from the design, so it counts too.

Edges: `import lorastudio.a.b` → `lorastudio.a.b`; `from lorastudio.a import x` → `lorastudio.a.x`
when `x` is a submodule, else `lorastudio.a` (the names its `__init__` defines); relative imports
are resolved against the importing module. A package's `__init__` is the module named after the package. Implicit imports of parent
packages (importing `lorastudio.a.b` runs `lorastudio/a/__init__.py`) are not edges: a package
importing its own submodules is how packages work.

Known cycles in files whose owners have not broken them yet go in `KNOWN_CYCLES` with the reason:
the rule tests then xfail, naming them, while any other cycle still fails; an entry whose cycle is
gone fails `test_known_cycles_are_still_cycles`, so the list cannot go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "lorastudio"

# Cycles (sorted module names) not broken yet → why, and whose files they are. Empty now.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lorastudio modules that `name` (at `path`) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `from . import x` in a package's __init__ is relative to the package itself.
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{alias.name}" for alias in node.names} & modules.keys()
            out |= subs
            if target in modules and len(subs) < len(node.names):
                out.add(target)  # a name defined by the module itself, not only its submodules
    out.discard(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = all_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def two_cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    return {tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def longer_cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Groups of modules that import each other round a loop of three or more (no 2-cycle inside
    explains them all): each strongly connected component whose graph minus its 2-cycle edges is
    still cyclic."""
    pairs = two_cycles(graph)
    pruned = {a: {b for b in targets if tuple(sorted((a, b))) not in pairs} for a, targets in graph.items()}
    return {tuple(c) for c in strongly_connected(pruned)}


def describe(cycle: tuple[str, ...], graph: dict[str, set[str]]) -> str:
    edges = [f"{a} → {b}" for a in cycle for b in sorted(graph[a]) if b in cycle]
    return f"{' ↔ '.join(cycle)} ({'; '.join(edges)})"


# --- the checker itself ---------------------------------------------------------------------------

def test_graph_sees_lazy_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "lorastudio"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from lorastudio.sub import b, thing\n")
    (pkg / "sub" / "b.py").write_text("from .a import f\nimport lorastudio.c\n")
    (pkg / "c.py").write_text("if False:\n    from lorastudio.d import x\n")
    (pkg / "d.py").write_text("def g():\n    import lorastudio.c\n")
    (pkg / "e.py").write_text("from lorastudio import sub\n")  # a submodule: not the parent package
    graph = import_graph(pkg)
    assert graph["lorastudio.sub"] == {"lorastudio.sub.a"}
    assert graph["lorastudio.sub.a"] == {"lorastudio.sub", "lorastudio.sub.b"}
    assert graph["lorastudio.sub.b"] == {"lorastudio.sub.a", "lorastudio.c"}
    assert graph["lorastudio.e"] == {"lorastudio.sub"}
    assert two_cycles(graph) == {("lorastudio.sub", "lorastudio.sub.a"), ("lorastudio.sub.a", "lorastudio.sub.b"),
                                 ("lorastudio.c", "lorastudio.d")}
    assert longer_cycles(graph) == set()
    graph["lorastudio.d"] = {"lorastudio.sub.b"}  # c → d → sub.b → c: a loop of three
    assert longer_cycles(graph) == {("lorastudio.c", "lorastudio.d", "lorastudio.sub.b")}


# --- the rule -------------------------------------------------------------------------------------

def _check(found: set[tuple[str, ...]], graph: dict[str, set[str]], what: str) -> None:
    new = sorted(found - set(KNOWN_CYCLES))
    assert not new, f"{what}:\n" + "\n".join(describe(c, graph) for c in new)
    known = sorted(found & set(KNOWN_CYCLES))
    if known:
        pytest.xfail("; ".join(f"{describe(c, graph)}: {KNOWN_CYCLES[c]}" for c in known))


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    _check(two_cycles(graph), graph, "modules that import each other")


def test_no_longer_import_cycles():
    graph = import_graph()
    _check(longer_cycles(graph), graph, "import cycles of three or more modules")


def test_known_cycles_are_still_cycles():
    """A KNOWN_CYCLES entry whose cycle is gone must go too, so the list never hides a new one."""
    graph = import_graph()
    stale = set(KNOWN_CYCLES) - two_cycles(graph) - longer_cycles(graph)
    assert not stale, f"no longer cycles, remove from KNOWN_CYCLES: {sorted(stale)}"


def test_data_readers_and_schema_do_not_import_each_other():
    graph = import_graph()
    assert "lorastudio.data.schema" not in graph["lorastudio.data.readers"]
    assert graph["lorastudio.data.columns"] == set()  # the leaf both of them use
