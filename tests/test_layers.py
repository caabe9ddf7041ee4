"""The layering of funnel_tw/ (docs/architecture.md): imports point down, and never in a circle.

Every import counts, whether at module level, inside a function or under TYPE_CHECKING: a
back-pointer that only the type checker sees is still a circle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "funnel_tw"

# Lowest first. A unit (a top-level module or subpackage of funnel_tw) may import from units of
# a lower rank only; units of the same rank are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_version", "keys"),
    ("config",),
    ("wireguard", "netstack", "options", "turn"),  # turn: the reactor's end-of-turn queue
    ("overlay",),
    ("tls",),
    ("flow",),
    ("web",),
    ("plugin",),  # the handler plugin API: schema, context, helpers
    ("serve",),
    ("peerapi", "inspect"),  # inspect: the request inspector (capture seam, page, API)
    ("daemon",),  # signals, sd_notify, metrics endpoint, access log, the local API socket
    ("relay",),
    ("node",),
    ("demo", "testing"),  # testing: the plugin authors' test kit
    ("cli",),
    ("__main__", "__init__"),  # __init__: the public facade, names loaded on first use
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# the sans-IO cores: fed bytes and time, no reactor, no sockets
SANS_IO = ("wireguard", "netstack")
MAX_LINES = 700


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The funnel_tw modules (and external top-level packages) that ``name`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from pkg import module`` imports that module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for source, targets in sorted(edges.items()):
        unit = unit_of(source)
        for target in sorted(targets):
            if unit in SANS_IO and target.split(".")[0] == "twisted":
                out.append(f"{source} -> {target}: the sans-IO {unit}/ imports Twisted")
            if not target.startswith("funnel_tw"):
                continue
            other = unit_of(target)
            if other == unit:
                continue
            if RANK[other] >= RANK[unit]:
                out.append(f"{source} -> {target}: {unit} may not import {other}")
    return out


class LayerTests(SynchronousTestCase):
    def test_every_unit_has_a_layer(self) -> None:
        units = {unit_of(name) for name in modules()}
        self.assertEqual(sorted(units - set(RANK)), [])

    def test_imports_point_down(self) -> None:
        self.assertEqual(violations(graph()), [])

    def test_no_import_circles(self) -> None:
        self.assertEqual(cycles(graph()), [])

    def test_modules_are_small(self) -> None:
        big = {
            name: n
            for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES
        }
        self.assertEqual(big, {})

    def test_the_check_sees_a_circle_and_an_upward_import(self) -> None:
        edges = {
            "funnel_tw.serve.a": {"funnel_tw.peerapi.b"},
            "funnel_tw.peerapi.b": {"funnel_tw.serve.a"},
            "funnel_tw.netstack.c": {"twisted.internet"},
        }
        self.assertEqual(cycles(edges), [["funnel_tw.peerapi.b", "funnel_tw.serve.a"]])
        self.assertEqual(
            violations(edges),
            [
                "funnel_tw.netstack.c -> twisted.internet: the sans-IO netstack/ imports Twisted",
                "funnel_tw.serve.a -> funnel_tw.peerapi.b: serve may not import peerapi",
            ],
        )
