"""The layering of ARCHITECTURE.md, enforced: imports point down, never in a cycle.

Every module of ``src/shardwise`` belongs to one layer (the longest matching prefix in
:data:`LAYERS`). A module may import from its own layer and the layers below it; the
client package may import a service's contract, its ``protocol`` module (the wire
messages) and its typed ``client``, and nothing else of a service. Imports under
``if TYPE_CHECKING:`` and inside functions count for the layering (a dependency is a
dependency) but not for cycles: they do not run while the module loads.

A control test plants a violation and a cycle in a copy of the graph and checks that
both are reported, so this test can fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("shardwise.errors", "shardwise.clock", "shardwise.placement")),
    ("model", ("shardwise.model",)),
    ("storage", ("shardwise.storage",)),
    ("raft core", ("shardwise.raft",)),
    ("net", ("shardwise.net",)),
    ("raft host", ("shardwise.raft.host", "shardwise.raft.worker", "shardwise.raft.hosting")),
    ("sql", ("shardwise.sql",)),
    (
        "services",
        (
            "shardwise.service",
            "shardwise.metrics",
            "shardwise.shardserver",
            "shardwise.controller",
            "shardwise.kvgroup",
        ),
    ),
    (
        "clients",
        (
            "shardwise.client",
            "shardwise.dbapi",
            "shardwise.clusterfile",
            "shardwise.embedded",
            "shardwise.sqlalchemy_dialect",
        ),
    ),
    ("cli", ("shardwise.cli",)),
    ("testing", ("shardwise.testing",)),
)
"""Bottom first. The root package ``shardwise`` is outside the layers: it only names
the public entry points, imported lazily on first use."""

SERVICES = ("shardwise.shardserver", "shardwise.controller", "shardwise.kvgroup")


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    runs_at_import: bool
    """At module level and not under ``TYPE_CHECKING``: it runs when the module loads."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            runs = at_import
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                runs = False
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, False)
                for stmt in child.orelse:
                    visit_stmt(stmt, at_import)
                continue
            visit_stmt(child, runs)

    def visit_stmt(node: ast.AST, runs: bool) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            if target.startswith("shardwise"):
                found.append(Import(module, target, getattr(node, "lineno", 0), runs))
        visit(node, runs)

    visit(tree, True)
    return found


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), index)
    return None if best is None else best[1]


def violations(edges: Iterable[Import]) -> list[str]:
    found = []
    for edge in edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is None or target is None:
            continue
        if target > source:
            found.append(
                f"{edge.source}:{edge.line} ({LAYERS[source][0]}) imports {edge.target} "
                f"({LAYERS[target][0]}), a layer above it"
            )
        if (
            edge.source.startswith("shardwise.client")
            and edge.target.startswith(SERVICES)
            and not edge.target.endswith((".protocol", ".client"))
        ):
            found.append(
                f"{edge.source}:{edge.line} imports {edge.target}: a client may import a "
                "service's contract (its protocol and client modules) only"
            )
    return found


def loaded_by(target: str) -> list[str]:
    """What importing ``target`` runs: its own module and each parent package's
    ``__init__`` (importing ``a.b.c`` runs ``a``, ``a.b``, then ``a.b.c``)."""
    parts = target.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]


def cycles(edges: Iterable[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module among the imports that
    run when a module loads (Tarjan's algorithm, iterative)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.runs_at_import:
            for target in loaded_by(edge.target):
                # A module inside package P is loaded by P's import already under way,
                # so importing a sibling does not run P's __init__ again.
                if target == "shardwise" or edge.source.startswith(target + "."):
                    continue
                if target != edge.source:
                    graph.setdefault(edge.source, set()).add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
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
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    modules = all_modules()
    return [e for name, path in modules.items() for e in imports_of(name, path, modules)]


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in all_modules() if m != "shardwise" and layer_of(m) is None]
    assert not unplaced, f"modules outside every layer of LAYERS: {unplaced}"


def test_imports_point_down(edges: list[Import]) -> None:
    found = violations(edges)
    assert not found, "\n".join(found)


def test_no_import_cycles(edges: list[Import]) -> None:
    found = cycles(edges)
    assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_a_planted_violation_and_cycle(edges: list[Import]) -> None:
    planted = [
        *edges,
        Import("shardwise.placement.ring", "shardwise.cli.main", 1, True),
        Import("shardwise.cli.main", "shardwise.placement.ring", 1, True),
        Import("shardwise.client.kv", "shardwise.shardserver.store", 1, True),
    ]
    reported = violations(planted)
    assert any(
        "shardwise.placement.ring:1 (base) imports shardwise.cli.main" in r for r in reported
    )
    assert any("contract" in r for r in reported)
    assert any(
        "shardwise.placement.ring" in c and "shardwise.cli.main" in c for c in cycles(planted)
    )


def loaded_modules(statement: str) -> set[str]:
    """The shardwise modules and top-level libraries a fresh interpreter loads for
    ``statement``."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    return set(out.split())


@pytest.mark.parametrize(
    ("statement", "must_not_load"),
    [
        # The pure layers load no I/O half and nothing above them.
        ("import shardwise.sql.planner", ("shardwise.raft.host", "shardwise.net.transport")),
        ("import shardwise.raft", ("shardwise.raft.host", "shardwise.net", "asyncio")),
        ("import shardwise.storage", ("shardwise.storage.file", "shardwise.raft")),
        ("import shardwise.model.config", ("shardwise.controller", "shardwise.raft", "sqlglot")),
        ("import shardwise.placement", ("shardwise.model", "shardwise.raft", "numpy.random")),
        # A shard server that serves only keys never loads the SQL parser, and no server
        # loads numpy (only the placement library's batch lookups use it): each of 15
        # idle processes of a local cluster would carry it.
        ("import shardwise.shardserver.server", ("sqlglot", "shardwise.sql.planner", "numpy")),
        ("import shardwise.controller.server", ("sqlglot", "numpy")),
    ],
)
def test_pure_layers_are_pure_when_imported(statement: str, must_not_load: tuple[str, ...]) -> None:
    loaded = loaded_modules(statement)
    assert not [m for m in must_not_load if m in loaded], f"{statement} loaded {must_not_load}"


def test_lazy_package_names_are_not_shadowed_by_submodules() -> None:
    """A package that exports names lazily (``shardwise.sql``) must not have a submodule
    of the same name: importing the submodule would replace the exported function with
    the module object."""
    import shardwise.sql  # noqa: PLC0415

    submodules = {p.stem for p in Path(shardwise.sql.__file__).parent.glob("*.py")}
    assert not submodules & set(shardwise.sql.__all__)


MAX_MODULE_LINES = 650
"""A module past ~600 lines is a question to ask; past this, the answer is to split it."""


def test_no_module_is_too_long() -> None:
    long = {
        name: lines
        for name, path in all_modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
