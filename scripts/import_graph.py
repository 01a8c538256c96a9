"""Print the package import graph of ``sidecar``; fail on a cycle or an upward arrow.

Usage: ``python scripts/import_graph.py [ROOT]`` (ROOT: the repository, default: this script's).

A package is ``sidecar.X``: a subpackage (``sidecar/verify/``) or a top-level module
(``sidecar/receipts.py``). Every import counts, wherever it stands (inside a function or an
``if TYPE_CHECKING:`` block too): a deferred import is still an arrow a reader must follow.
Read from the source with ``ast``; nothing is imported.

Output: one ``sidecar.X -> sidecar.Y`` line per arrow, sorted, then one ``cycle:`` line per set
of packages that import each other (a strongly connected component) and one ``upward:`` line
per arrow against the layer order of issue 10, ``errors <- config <- providers <- verify <-
proxy <- cli`` (a layer imports only layers to its left; packages outside the order, such as
``receipts`` or ``simulator``, are free but still may not close a cycle).

Exit status: 0 when there is no cycle and no upward arrow, else 1.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE = "sidecar"
# Issue 10's order, bottom first: each layer may import only the layers before it.
LAYERS = ("errors", "config", "providers", "verify", "proxy", "cli")


def package_of(module: str) -> str | None:
    """``sidecar.verify.tdx`` -> ``verify``; ``sidecar`` itself and other roots -> ``None``."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return parts[1]


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            # ``from sidecar import verify`` names a package, not a symbol of sidecar/__init__.
            if target == PACKAGE:
                yield from (f"{PACKAGE}.{alias.name}" for alias in node.names)


def edges(root: Path) -> set[tuple[str, str]]:
    """Every ``(from package, to package)`` arrow between distinct packages under ``root``."""
    found: set[tuple[str, str]] = set()
    # ``from sidecar import __version__`` names a symbol, not a package: keep real ones only.
    known = {path.stem for path in (root / PACKAGE).glob("*.py")} | {
        path.parent.name for path in (root / PACKAGE).glob("*/__init__.py")}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = _module_name(root, path)
        source = package_of(module)
        if source is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target in _imported(tree, module, path.name == "__init__.py"):
            destination = package_of(target)
            if destination in known and destination != source:
                found.add((source, destination))
    return found


def cycles(arrows: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for source, destination in arrows:
        graph.setdefault(source, set()).add(destination)
        graph.setdefault(destination, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def upward(arrows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The arrows from a layer of ``LAYERS`` to one above it, sorted."""
    rank = {name: position for position, name in enumerate(LAYERS)}
    return sorted((source, destination) for source, destination in arrows
                  if source in rank and destination in rank
                  and rank[destination] > rank[source])


def main(argv: list[str]) -> int:
    """Print the graph, its cycles and upward arrows; 1 when there is either."""
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    arrows = edges(root)
    for source, destination in sorted(arrows):
        print(f"{PACKAGE}.{source} -> {PACKAGE}.{destination}")
    found = cycles(arrows)
    for component in found:
        print("cycle: " + ", ".join(f"{PACKAGE}.{name}" for name in component))
    against = upward(arrows)
    for source, destination in against:
        print(f"upward: {PACKAGE}.{source} -> {PACKAGE}.{destination}")
    if found or against:
        print("error: the package graph must have no cycle and no arrow up the order "
              + " <- ".join(LAYERS), file=sys.stderr)
        return 1
    print("no cycle, no upward arrow (" + " <- ".join(LAYERS) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
