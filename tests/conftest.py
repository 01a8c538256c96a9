"""Shared fixtures: one simulator + sidecars stack per test session, faults reset per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.logs import configure_logging
from tests.stack import Stack

# One JSON line per event on stderr, as in production; pytest shows it for failing tests.
configure_logging("json", "info")

TEE_MODEL = "TEE/simulated-llama-3.3-70b"
PLAIN_MODEL = "simulated/no-tee-model"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Simulator and sidecars on loopback, in a background event loop."""
    s = Stack(Path(tmp_path_factory.mktemp("stack")))
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "stack" in request.fixturenames:
        stack: Stack = request.getfixturevalue("stack")
        stack.call(stack.simulator.faults.reset)


@pytest.fixture(autouse=True)
def _logging_as_configured() -> Iterator[None]:
    """Every test starts from the logging set up above: a CLI command run by one test
    (``configure_logging(..., "warning")``) must not silence the info lines the next test
    captures, in whatever order a runner (pytest, mutmut) puts them."""
    configure_logging("json", "info")
    yield
