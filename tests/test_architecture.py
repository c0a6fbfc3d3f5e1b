"""The import graph of the package: acyclic, and no private names across modules.

Every module of ``phasenet/`` is parsed with :mod:`ast` (nothing is imported), and
every import statement counts, at the top of a module or inside a function:
``import a.b``, ``from a.b import name`` (an edge to ``a.b``, or to the submodule
``a.b.name`` when that is a module), relative imports resolved.

The package root ``phasenet/__init__.py`` is a node like any other: it imports
``phasenet.pipeline.build`` etc., so no submodule may import ``phasenet`` itself
(the version lives in :mod:`phasenet.version` for that reason). What is *not* an
edge: the implicit import of the parent packages that Python performs before a
submodule (``import phasenet.io.cif`` runs ``phasenet/__init__``), since every
submodule has it and it is not a choice of the importing module; and the root's
lazily loaded public names (``importlib.import_module`` in ``__getattr__``), which
load only on first use; and imports under ``if TYPE_CHECKING:``, which never run
(annotations only).

Private names (``_x``, dunders excepted) never cross modules: neither ``from
phasenet.m import _x`` nor ``alias._x`` on an imported phasenet module.
"""

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "phasenet"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str, modules) -> bool:
    return (REPO_ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def _resolve(module: str, node: ast.ImportFrom, modules) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module, modules):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_type_checking(node) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if not isinstance(node, ast.If):
        return False
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _scan(modules):
    """(edges {module: {imported phasenet modules}}, private-name violations, third-party imports)."""
    edges, private, external = {}, [], {}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        out, aliases, ext = set(), {}, set()
        type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                     for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "phasenet":
                        out.add(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
                    else:
                        ext.add(a.name)
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, node, modules)
                if src.split(".")[0] != "phasenet":
                    ext.add(src)
                    continue
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if sub in modules:
                        out.add(sub)
                        aliases[a.asname or a.name] = sub
                    else:
                        out.add(src)
                        if _private(a.name):
                            private.append(f"{mod}: from {src} import {a.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                private.append(f"{mod}: {node.value.id}.{node.attr} ({aliases[node.value.id]})")
        out.discard(mod)
        unknown = {m for m in out if m not in modules}
        assert not unknown, f"{mod} imports modules that do not exist: {sorted(unknown)}"
        edges[mod] = out
        external[mod] = ext
    return edges, private, external


def _find_cycle(edges) -> list[str] | None:
    colour = dict.fromkeys(edges, 0)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m):
        colour[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if colour[n] == 1:
                return stack[stack.index(n):] + [n]
            if colour[n] == 0:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(edges):
        if colour[m] == 0:
            found = visit(m)
            if found:
                return found
    return None


def test_scanner_sees_function_level_and_relative_imports(tmp_path):
    """The scanner itself: a cycle through a function-level import is found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(edges) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    edges, _, _ = _scan(_modules())
    # function-level: generate imports the kernels only inside warm_up
    assert "phasenet.synth.kernels" in edges["phasenet.synth.generate"]
    # "from pkg import submodule" is an edge to the submodule
    assert "phasenet.io.hdf5" in edges["phasenet.synth.generate"]


def test_import_graph_is_acyclic():
    edges, _, _ = _scan(_modules())
    cycle = _find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_names_across_modules():
    _, private, _ = _scan(_modules())
    assert not private, "private names used across modules:\n" + "\n".join(private)


def test_synth_kernels_are_a_leaf_and_numba_stays_in_them():
    edges, _, external = _scan(_modules())
    for leaf in ("phasenet.synth.kernels", "phasenet.synth.relax"):
        assert not edges[leaf], f"{leaf} imports {sorted(edges[leaf])}"
    numba_users = {m for m, ext in external.items() if m.startswith("phasenet.synth.")
                   and any(e.split(".")[0] == "numba" for e in ext)}
    assert numba_users == {"phasenet.synth.kernels", "phasenet.synth.relax"}
    # nothing below phasenet.synth imports the package root or a command
    for m, out in edges.items():
        if m.startswith("phasenet.synth."):
            assert not {o for o in out if o == "phasenet" or o.startswith("phasenet.cli")}, m


def test_tests_import_the_root_conftest_by_its_package_name():
    """A folder's own conftest.py shadows a bare ``conftest``: test modules import the
    root's constants as ``tests.conftest``."""
    import re

    bad = [str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests").rglob("*.py")
           if re.search(r"^\s*(from conftest import|import conftest)", p.read_text(), flags=re.M)]
    assert not bad, f"import tests.conftest instead of conftest in: {bad}"


def _top_level_names(tree) -> set[str]:
    """Names a module defines at its top level (defs, classes, assignments, imports),
    including those bound inside top-level if/try blocks."""
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            names.add(n.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    names.add((a.asname or a.name).split(".")[0])
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                for extra in ("orelse", "finalbody"):
                    visit(getattr(node, extra, []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return names


def test_every_imported_phasenet_name_exists():
    """``from phasenet.x import name`` (top-level or inside a function) names a submodule
    or something ``x`` defines: a moved name cannot hide in a function that no test runs."""
    modules = _modules()
    defined = {m: _top_level_names(ast.parse(p.read_text())) for m, p in modules.items()}
    missing = []
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            src = _resolve(mod, node, modules)
            if src.split(".")[0] != "phasenet" or src not in modules:
                continue
            for a in node.names:
                if a.name != "*" and f"{src}.{a.name}" not in modules and a.name not in defined[src]:
                    if not (src == "phasenet" and a.name in _lazy_exports()):
                        missing.append(f"{mod}: from {src} import {a.name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)


def _lazy_exports() -> set[str]:
    """The package root's lazily loaded public names (``_LAZY`` in phasenet/__init__.py)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_LAZY" for t in node.targets):
            return {k.value for k in node.value.keys}
    return set()
