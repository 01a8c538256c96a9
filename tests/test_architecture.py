"""The house rules that keep ``sidecar/verify/`` a sans-I/O verification core (issue 10).

Read from the source with ``ast`` (never grep: a comment or a string must not count, and an
import inside a function must). ``sidecar.verify`` may import the standard library's pure parts,
its crypto libraries, ``sidecar.errors``, ``sidecar.providers`` (the wire contracts below it) and
itself: no network stack, no config, no proxy, no receipt log, and it opens no file.

Sigstore (``verify/provenance.py``): the trust root is I/O (shipped with the library, or an
archived ``trusted_root.json``), so the ``Verifier`` over it is built by the I/O side
(``sidecar.proxy.provenance_source``) and injected; the verifier only parses the bundle bytes
it is given. The rules below hold for provenance.py as for every other module.
"""

from __future__ import annotations

import ast
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERIFY = ROOT / "sidecar" / "verify"
MODULES = sorted(VERIFY.glob("*.py"))

# Network stacks, the config file format and the layers above the core.
FORBIDDEN_IMPORTS = ("aiohttp", "socket", "ssl", "urllib", "requests", "httpx", "http",
                     "asyncio", "tomllib", "sidecar.config", "sidecar.proxy", "sidecar.receipts",
                     "sidecar.archive", "sidecar.admin", "sidecar.cli", "sidecar.trust",
                     "sidecar.simulator", "sidecar.pins", "sidecar.telemetry", "sidecar.demo")
# The only sidecar packages the core may import.
ALLOWED_SIDECAR = ("sidecar.errors", "sidecar.providers", "sidecar.verify")
# Calls that touch the file system: the builtin, and pathlib's readers and writers. No exception:
# the policy file's loader, the last one, lives beside config (sidecar/policy_file.py).
FILE_METHODS = frozenset({"open", "read_text", "read_bytes", "write_text", "write_bytes"})


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: relative import"
            found.append((node.lineno, node.module or ""))
    return found


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


class _FileCalls(ast.NodeVisitor):
    """Calls of ``open(...)``, ``x.open(...)``, ``x.read_text(...)`` … with their function."""

    def __init__(self) -> None:
        self.function = "<module>"
        self.calls: list[tuple[str, str, int]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = (func.id if isinstance(func, ast.Name)
                else func.attr if isinstance(func, ast.Attribute) else None)
        if name in FILE_METHODS:
            self.calls.append((self.function, name, node.lineno))
        self.generic_visit(node)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_core_has_modules_to_check() -> None:
    assert {p.name for p in MODULES} >= {"attestation.py", "checks.py", "receipt.py", "tdx.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_verify_imports_no_network_config_or_upper_layer(path: Path) -> None:
    bad = [f"line {line}: {module}" for line, module in _imports(_tree(path))
           if any(_matches(module, prefix) for prefix in FORBIDDEN_IMPORTS)
           or (_matches(module, "sidecar")
               and not any(_matches(module, allowed) for allowed in ALLOWED_SIDECAR))]
    assert not bad, f"{path.name} imports above the core or the network: {bad}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_verify_reads_and_writes_no_file(path: Path) -> None:
    visitor = _FileCalls()
    visitor.visit(_tree(path))
    bad = [f"line {line}: {call}() in {function}" for function, call, line in visitor.calls]
    assert not bad, f"{path.name} touches files: {bad}"


@pytest.mark.parametrize("source", [
    "import aiohttp\n",
    "def f():\n    from sidecar.proxy import app\n",
    "from sidecar.receipts import Receipt\n",
    "import socket as s\n",
    "from urllib.parse import quote\n",
    "import tomllib\n",
    "from sidecar.config import Settings\n",
])
def test_the_import_rule_catches(source: str) -> None:
    modules = [module for _, module in _imports(ast.parse(source))]
    assert any(_matches(m, prefix) for m in modules for prefix in FORBIDDEN_IMPORTS)


@pytest.mark.parametrize("source", [
    "open('x')\n",
    "def f(p):\n    return p.read_bytes()\n",
    "Path('x').write_text('y')\n",
    "with path.open('rb') as fh:\n    pass\n",
])
def test_the_file_rule_catches(source: str) -> None:
    visitor = _FileCalls()
    visitor.visit(ast.parse(source))
    assert visitor.calls


def _import_graph() -> dict[str, object]:
    return runpy.run_path(str(ROOT / "scripts" / "import_graph.py"))


def test_the_package_graph_has_no_cycle_and_no_upward_arrow(
        capsys: pytest.CaptureFixture[str]) -> None:
    graph = _import_graph()
    assert graph["main"]([str(ROOT)]) == 0  # type: ignore[operator]
    out = capsys.readouterr().out
    assert "sidecar.proxy -> sidecar.verify" in out
    assert not any(line.startswith(("cycle:", "upward:")) for line in out.splitlines())
    assert "no cycle, no upward arrow" in out


def _package_tree(tmp_path: Path, **modules: str) -> Path:
    package = tmp_path / "sidecar"
    (package / "verify").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "verify" / "__init__.py").write_text("")
    for name, source in modules.items():
        (package / f"{name.replace('__', '/')}.py").write_text(source)
    return tmp_path


def test_the_import_graph_script_fails_on_a_cycle(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    graph = _import_graph()
    # A cycle between two packages outside the layer order fails as well.
    root = _package_tree(tmp_path, receipts="from sidecar import archive\n",
                 archive="def f():\n    from sidecar import receipts\n")
    assert graph["main"]([str(root)]) == 1  # type: ignore[operator]
    assert "cycle: sidecar.archive, sidecar.receipts" in capsys.readouterr().out
    (root / "sidecar" / "archive.py").write_text("import json\n")
    assert graph["main"]([str(root)]) == 0  # type: ignore[operator]


def test_the_import_graph_script_fails_on_an_upward_arrow(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = _import_graph()
    # providers sits below verify: a deferred import of verify from providers is an arrow up.
    root = _package_tree(tmp_path, verify__core="import json\n",
                 providers="def f():\n    from sidecar.verify import core\n")
    assert graph["main"]([str(root)]) == 1  # type: ignore[operator]
    assert "upward: sidecar.providers -> sidecar.verify" in capsys.readouterr().out
    (root / "sidecar" / "providers.py").write_text("import json\n")
    (root / "sidecar" / "verify" / "core.py").write_text("from sidecar import providers\n")
    assert graph["main"]([str(root)]) == 0  # type: ignore[operator]
