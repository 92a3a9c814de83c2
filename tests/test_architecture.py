"""The shape of the package: layers, one direction of flow, no import cycles, modules of one idea.

The import graph is built from the source (``ast``), not by importing anything: every ``import`` and
``from ... import`` anywhere in a module counts, at module level, inside functions (lazy imports) and under
``if TYPE_CHECKING:`` alike. ``docs/architecture.md`` explains the layers; the order itself is written once,
here, in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "learndyn"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("sweep", "report"),
    ("phenomena", "tasks", "integrations"),
    ("training", "probes", "store", "checkpoint"),
    ("optim", "stats", "theory"),
    # "": the root package, learndyn.__version__
    ("validation", "config", "progress", "glossary", "lifeline", "optional", ""),
)
"""Top to bottom. A module may import from its own layer (without cycles) or from any layer below it."""

MAX_LINES = 600
ONE_IDEA: dict[str, str] = {}
"""Modules allowed over :data:`MAX_LINES` lines, each with the one idea it holds."""

PENDING: set[tuple[str, str]] = set()
"""Upward imports another branch of the same change removes; empty once the branches are merged."""

_STRING_IMPORTERS = {"import_module", "__import__", "find_spec"}
_MODULE_NAME = re.compile(rf"^{ROOT}(\.[A-Za-z_][A-Za-z0-9_]*)+$")


# ----------------------------------------------------------------------------------------------- the graph
def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(module: str) -> str:
    """``learndyn.cli.main`` -> ``cli``; ``learndyn.validation`` -> ``validation``; ``learndyn`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    package = _package_of(module)
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"{module}: package {package!r} has no layer; add it to LAYERS")


def _resolve(name: str) -> str | None:
    """The learndyn module ``name`` names (``learndyn.a.b.func`` -> ``learndyn.a.b``), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, tree: ast.AST) -> Iterator[tuple[str, int]]:
    """``(imported learndyn module, line)`` for every import statement in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            if base != ROOT and not base.startswith(ROOT + "."):
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                target = _resolve(f"{base}.{alias.name}") if alias.name != "*" else None
                target = target or _resolve(base)
                if target:
                    yield target, node.lineno


def _string_constant(node: ast.AST) -> str | None:
    """A string literal, or the literal head of an f-string (``f"learndyn.a.{x}"`` -> ``learndyn.a.``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value
    return None


def _string_imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """``(learndyn module, line)`` named by a string: an argument of ``import_module``/``__import__``/
    ``find_spec``, or any string literal that is exactly a learndyn module's dotted name."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            text = _string_constant(node.args[0])
            if name in _STRING_IMPORTERS and text and text.startswith(ROOT):
                target = _resolve(text.rstrip("."))
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if _MODULE_NAME.match(node.value) and node.value in MODULES:
                yield node.value, node.lineno


Located = dict[str, list[tuple[str, int]]]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (imports for annotations only, never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == (
            "TYPE_CHECKING"
        ):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]], Located, Located]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    runtime: dict[str, set[str]] = {m: set() for m in MODULES}
    where: Located = {m: [] for m in MODULES}
    by_string: Located = {m: [] for m in MODULES}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        typing_only = _type_checking_lines(tree)
        for target, line in _imports(module, tree):
            if target != module:
                edges[module].add(target)
                where[module].append((target, line))
                if line not in typing_only:
                    runtime[module].add(target)
        for target, line in dict.fromkeys(_string_imports(tree)):
            if target != module:
                by_string[module].append((target, line))
    return edges, runtime, where, by_string


EDGES, RUNTIME_EDGES, WHERE, BY_STRING = _graph()
"""All imports (``TYPE_CHECKING`` ones too: they count for the layers), and the imports that run."""


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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


# ----------------------------------------------------------------------------------------------- the rules
def test_every_package_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_imports_go_down_the_layers():
    upward = [
        f"{module}:{line} imports {target} (layer {_layer(module)} -> {_layer(target)})"
        for module, imports in WHERE.items()
        for target, line in imports
        if _layer(target) < _layer(module) and (module, target) not in PENDING
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules():
    """Imports that run form no cycle; an annotation-only import back (``if TYPE_CHECKING:``) within a
    package is allowed (it still counts for the layer and package rules)."""
    assert _cycles(RUNTIME_EDGES) == []


def test_no_import_cycles_between_packages():
    packages: dict[str, set[str]] = {}
    for module, targets in EDGES.items():
        for target in targets:
            if _package_of(target) != _package_of(module) and (module, target) not in PENDING:
                packages.setdefault(_package_of(module), set()).add(_package_of(target))
    assert _cycles(packages) == []


def test_nothing_is_imported_by_string_across_packages():
    crossing = [
        f"{module}:{line} names {target} in a string"
        for module, names in BY_STRING.items()
        for target, line in names
        if _package_of(target) != _package_of(module)
    ]
    assert not crossing, "\n".join(crossing)


def test_modules_hold_one_idea():
    long = {
        str(path.relative_to(SRC)): n
        for path in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    over = {name: n for name, n in long.items() if name not in ONE_IDEA}
    assert not over, f"modules over {MAX_LINES} lines (split them by concept, or say their one idea): {over}"
    stale = sorted(set(ONE_IDEA) - set(long))
    assert not stale, f"ONE_IDEA lists modules that are no longer long: {stale}"


# ------------------------------------------------------------------------------- the checker checks itself
def _check(source: str, module: str = "learndyn.store.fake") -> tuple[list[str], list[str]]:
    tree = ast.parse(source)
    MODULES.setdefault(module, SRC / (module.replace(".", "/") + ".py"))
    try:
        imports = [t for t, _ in _imports(module, tree)]
        return imports, list(dict.fromkeys(t for t, _ in _string_imports(tree)))
    finally:
        MODULES.pop(module)


@pytest.mark.parametrize(
    ("source", "imports", "strings"),
    [
        ("from learndyn.sweep.runner import run_sweep", ["learndyn.sweep.runner"], []),
        ("def f():\n    import learndyn.cli.main as m", ["learndyn.cli.main"], []),
        ("from learndyn.phenomena import registry", ["learndyn.phenomena.registry"], []),
        ("from learndyn import validation", ["learndyn.validation"], []),
        ("from . import recorder", ["learndyn.store.recorder"], []),
        ("from ..sweep import spec", ["learndyn.sweep.spec"], []),
        ("import importlib\nimportlib.import_module('learndyn.report.html')", [], ["learndyn.report.html"]),
        ("import importlib\nimportlib.import_module(f'learndyn.sweep.{x}')", [], ["learndyn.sweep"]),
        ("MODULES = ('learndyn.phenomena', 'numpy')", [], ["learndyn.phenomena"]),
        ('"""learndyn.phenomena"""', [], []),
        ("import numpy", [], []),
    ],
)
def test_the_checker_sees_every_kind_of_import(source, imports, strings):
    assert _check(source) == (imports, strings)


def test_the_checker_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
