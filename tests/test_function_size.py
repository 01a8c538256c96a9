"""No function in ``sidecar/`` longer than ``MAX_BODY_LINES``: a long function is a recipe that
wants its steps named (issue 10, "Done when").

A body is counted from its first statement after the docstring to its last line, nested
functions included (they are part of what a reader must hold at once).
"""

from __future__ import annotations

import ast
from pathlib import Path

MAX_BODY_LINES = 80
SIDECAR = Path(__file__).resolve().parent.parent / "sidecar"


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if (len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]
    assert node.end_lineno is not None
    return node.end_lineno - body[0].lineno + 1


def _function_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for path in sorted(SIDECAR.rglob("*.py")):
        name = path.relative_to(SIDECAR.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{name}:{node.name}"
                lengths[key] = max(lengths.get(key, 0), _body_lines(node))
    return lengths


def test_no_function_is_longer_than_the_bound() -> None:
    too_long = {key: lines for key, lines in _function_lengths().items()
                if lines > MAX_BODY_LINES}
    assert too_long == {}
