"""Simulator, MITM and sidecars in one background event loop, all on loopback.

``tests.stack.Stack`` with every sidecar's upstream, PCS and NRAS URLs pointed at
the MITM (each sidecar has its own state directory, so a fresh one fetches collateral through the
MITM too).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai

from sidecar.simulator.provider import SimulatedProvider
from sidecar.simulator.server import build_simulator
from tests.stack import Stack
from tests.adversarial.mitm import Mitm

TEE_MODEL = "TEE/simulated-llama-3.3-70b"
MESSAGES = [{"role": "user", "content": "Tell me a secret about enclaves."}]
EXPECTED_TEXT = ("Confidential inference runs inside an attested enclave, and every answer is "
                 "signed by its key.")

# Tight bounds so that an attack which stalls costs a test seconds, not minutes.
FAST = {
    "upstream": {"read_timeout": 2.0, "connect_timeout": 2.0, "signature_retries": 2,
                 "signature_retry_delay": 0.01},
    "attestation": {"timeout": 3.0},
}


class AdversarialStack(Stack):
    """One simulator behind one MITM, and sidecars configured against the MITM."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.mitm = Mitm(self.simulator_url)
        self.mitm_url = self.upstream_url = self.run(self.serve(self.mitm.app()))
        self.defaults = FAST
        self._other: tuple[str, SimulatedProvider] | None = None

    def other_deployment(self) -> tuple[str, SimulatedProvider]:
        """A second, genuine simulated deployment (its own keys): a source of real evidence
        that belongs to someone else."""
        if self._other is None:
            app, provider = build_simulator()
            self._other = (self.run(self.serve(app)), provider)
        return self._other


# -- clients -----------------------------------------------------------------------------------


def post(url: str, body: bytes | dict[str, Any], *, headers: dict[str, str] | None = None,
         timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    """A raw POST (no SDK): the exact status, headers and bytes the sidecar returns."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def chat(url: str, *, stream: bool = False, timeout: float = 20,
         **extra: Any) -> tuple[int, dict[str, str], bytes]:
    """One chat completion through the sidecar at ``url`` (raw)."""
    body = {"model": TEE_MODEL, "messages": MESSAGES, "stream": stream, **extra}
    return post(url + "/chat/completions", body, timeout=timeout)


def sdk(url: str) -> openai.OpenAI:
    """The official SDK as an app would configure it (no retries: we count every request)."""
    return openai.OpenAI(base_url=url, api_key="not-a-real-key", max_retries=0, timeout=20)
