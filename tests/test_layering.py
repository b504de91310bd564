"""The import graph of the hepms package: no cycle, no upward import, no private name of another
module, no detour through the package face.

The graph is built from the source with ``ast`` (nothing is imported). An edge ``a -> b`` is any
``import`` / ``from ... import`` of hepms module ``b`` in module ``a``, **including imports inside
functions**: a lazy import only postpones the dependency (to keep ``hepms --help`` fast), it does
not remove it, and a cycle through one works only as long as nobody calls the function during
import. Imports under ``if TYPE_CHECKING:`` are not edges (they never run). Importing a package
is an edge to its ``__init__``; ``from pkg import module`` is an edge to that module.
"""
from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hepms"

# Layers, bottom first: a module may import from its own layer or below, never from above.
# A new module must be placed here (the test says so).
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: no hepms dependencies beyond the ops: the package face (version, lazy names), the
    #    compiled extension and its reference, the configuration engine, small leaf helpers
    ("hepms", "hepms._C", "hepms._reference", "hepms.ops", "hepms.config_engine", "hepms.console", "hepms.atomic",
     "hepms.physics", "hepms.metrics"),
    # 1: jagged arrays, the machine description, the ONNX translation of the ops
    ("hepms.jagged", "hepms._machine", "hepms.onnx_ops"),
    # 2: the feature spec (events -> feature tensors, written once)
    ("hepms.features",),
    # 3: datasets; the event generator (groups its candidates with hepms.features)
    ("hepms.data", "hepms.generate"),
    # 4: networks (and their padded reference for tests and benchmarks)
    ("hepms.nn", "hepms._padded_reference"),
    # 5: training
    ("hepms.train",),
    # 6: the run configuration (its schema takes choices and defaults from the layers below)
    ("hepms.config",),
    # 7: applications: runs and scans, model selection, the model file, export, coffea
    ("hepms.study", "hepms.select", "hepms.model_file", "hepms.export", "hepms.coffea"),
    # 8: the command line
    ("hepms.cli",),
)

# No known exceptions: a private name imported across modules, or the lazy package face used
# inside the package, fails the tests below.
PRIVATE_ALLOWED: set[tuple[str, str, str]] = set()
FACE_ALLOWED: set[str] = set()


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules(PACKAGE)
KNOWN = set(MODULES) | {"hepms._C"}  # the compiled extension has no source here


def _resolve(name: str) -> Optional[str]:
    while name and name not in KNOWN:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> Iterator[tuple[str, Optional[str], int]]:
    """``(imported module, imported name or None, line)`` for every hepms import in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(nodes: list[ast.stmt]) -> Iterator[ast.AST]:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.orelse)
                continue
            yield node
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from walk([c for c in children if isinstance(c, (ast.stmt, ast.excepthandler))])

    for node in walk(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hepms":
                    yield _resolve(alias.name), None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != "hepms":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in KNOWN:
                    yield full, None, node.lineno
                else:
                    yield _resolve(base), alias.name, node.lineno


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m, p) if t and t != m} for m, p in MODULES.items()}


def _layer(module: str) -> Optional[int]:
    for rank, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names if n != "hepms"):
            return rank
    return 0 if module == "hepms" else None


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert {"hepms.config", "hepms.study.plan", "hepms.nn.layers", "hepms.train.trainer"} <= set(graph)
    assert "hepms.ops" in graph["hepms.nn.layers"] and "hepms.config" in graph["hepms.study.plan"]
    assert "hepms.train.trainer" in graph["hepms.config"]  # a lazy import (inside a function) is an edge


def test_no_import_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = itertools.count()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    assert not cycles, f"modules that import each other (directly or in a circle): {cycles}"


def test_no_upward_import() -> None:
    unplaced = sorted(m for m in MODULES if _layer(m) is None)
    assert not unplaced, f"place these modules in LAYERS of {__file__}: {unplaced}"
    upward = [(a, b) for a, targets in _graph().items() for b in sorted(targets)
              if _layer(b) is not None and _layer(b) > _layer(a)]
    assert not upward, f"imports from a higher layer (see LAYERS): {upward}"


def test_no_private_name_of_another_module() -> None:
    found = []
    sources = dict(MODULES)
    sources.update(_modules(REPO / "benchmarks"))
    sources.update({f"analyses.{p.stem}": p for p in (REPO / "analyses").rglob("*.py")})
    for module, path in sources.items():
        for target, name, line in _imports(module, path):
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                if (module, target, name) not in PRIVATE_ALLOWED:
                    found.append(f"{path.relative_to(REPO)}:{line}: {name} from {target}")
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_modules_import_what_they_use_not_the_package_face() -> None:
    """``import hepms; hepms.segment_sum(...)`` inside the package goes through the lazy face
    (``hepms/__init__.py``'s ``_LAZY``): the dependency on hepms.ops is then invisible."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    lazy = next(node.value for node in tree.body if isinstance(node, ast.AnnAssign | ast.Assign)
                and "_LAZY" in ast.unparse(node.targets[0] if isinstance(node, ast.Assign) else node.target))
    names = {name for name in ast.literal_eval(_keys_only(lazy))}
    found = []
    for module, path in MODULES.items():
        if module == "hepms" or module in FACE_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "hepms" and node.attr in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: hepms.{node.attr}")
    assert not found, "use the defining module (e.g. from hepms.ops import ...):\n" + "\n".join(found)


def _keys_only(node: ast.expr) -> str:
    """The public names of ``_LAZY = {**dict.fromkeys((names...), module), ...}`` as a tuple literal."""
    names: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and ast.unparse(sub.func) == "dict.fromkeys":
            names.extend(ast.literal_eval(sub.args[0]))
        elif isinstance(sub, ast.Dict):
            names.extend(k.value for k in sub.keys if isinstance(k, ast.Constant))
    assert names, "could not read hepms._LAZY"
    return repr(tuple(names))
