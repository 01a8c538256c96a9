"""The package graph's production side: serving never loads the simulator or the test stack.

The simulator holds public test keys; a production import of it is one typo away from trusting
them. Run in a fresh interpreter so modules other tests loaded do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LOADED = """
import json, sys
import {modules}
print(json.dumps(sorted(name for name in sys.modules if name.startswith(("sidecar", "tests")))))
"""


def _loaded_by(*modules: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _LOADED.format(modules=", ".join(modules))],
                         check=True, capture_output=True, text=True).stdout
    return list(json.loads(out))


def test_serving_never_imports_the_simulator() -> None:
    loaded = _loaded_by("sidecar.cli", "sidecar.proxy.server", "sidecar.proxy.wiring",
                        "sidecar.proxy.admin", "sidecar.demo")
    assert "sidecar.proxy.server" in loaded
    assert [name for name in loaded if name.startswith(("sidecar.simulator", "tests"))] == []


@pytest.mark.parametrize(("module", "forbidden"), [
    ("sidecar.trust", ("sidecar.proxy", "sidecar.simulator")),
    ("sidecar.config", ("sidecar.providers", "sidecar.verify", "sidecar.proxy",
                        "sidecar.simulator")),
    ("sidecar.issuers", ("sidecar.",)),
])
def test_lower_modules_do_not_import_upwards(module: str, forbidden: tuple[str, ...]) -> None:
    loaded = [name for name in _loaded_by(module) if name != module and name != "sidecar"]
    assert [name for name in loaded if name.startswith(forbidden)] == []
