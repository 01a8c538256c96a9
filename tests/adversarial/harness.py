"""Simulator, MITM and sidecars in one background event loop, all on loopback.

Like ``sidecar.simulator.stack.Stack``, except that every sidecar's upstream, PCS and NRAS URLs
point at the MITM, and that each sidecar may get its own state directory (its own collateral
cache: a fresh sidecar then fetches collateral through the MITM too).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import openai
from aiohttp import web

from sidecar.config import Settings
from sidecar.proxy.app import STATE, ProxyState, build_proxy_app
from sidecar.proxy.state import load_policies, state_factory
from sidecar.simulator.provider import SimulatedProvider
from sidecar.simulator.server import build_simulator
from sidecar.simulator.stack import simulator_settings
from tests.adversarial.mitm import Mitm

T = TypeVar("T")

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


def proxy_app(settings: Settings) -> web.Application:
    """The sidecar's app for ``settings``, wired as ``tee-sidecar serve`` wires it."""
    make_state = state_factory(settings, load_policies(settings))
    # The session factory argument is newer than some trees this suite runs against.
    if "make_session" in inspect.signature(build_proxy_app).parameters:
        from sidecar.proxy.state import client_session  # type: ignore[attr-defined]

        return build_proxy_app(settings, make_state,  # type: ignore[call-arg]
                               lambda: client_session(settings))
    return build_proxy_app(settings, make_state)


class AdversarialStack:
    """One simulator behind one MITM, and sidecars configured against the MITM."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []
        self.simulator_app, self.provider = build_simulator()
        self.simulator_url = self.run(self._serve(self.simulator_app))
        self.mitm = Mitm(self.simulator_url)
        self.mitm_url = self.run(self._serve(self.mitm.app()))
        self._sidecars: dict[str, tuple[str, web.Application]] = {}
        self._count = 0
        self._other: tuple[str, SimulatedProvider] | None = None

    def other_deployment(self) -> tuple[str, SimulatedProvider]:
        """A second, genuine simulated deployment (its own keys): a source of real evidence
        that belongs to someone else."""
        if self._other is None:
            app, provider = build_simulator()
            self._other = (self.run(self._serve(app)), provider)
        return self._other

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the stack's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop thread (to touch state without races)."""
        async def wrapper() -> T:
            return fn()
        return self.run(wrapper())

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    def sidecar(self, *, fresh: bool = False, **sections: Mapping[str, Any]) -> str:
        """Base URL (``…/v1``) of a sidecar behind the MITM with ``FAST`` bounds and ``sections``.

        ``fresh`` gives a new sidecar with an empty attestation cache and its own state
        directory; otherwise one sidecar per configuration is reused.
        """
        merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in FAST.items()}
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        key = json.dumps(merged, sort_keys=True)
        if fresh:
            self._count += 1
            key += f"#{self._count}"
        if key not in self._sidecars:
            state_dir = self._state_dir / f"sidecar-{len(self._sidecars)}"
            settings = simulator_settings(self.mitm_url, state_dir, **merged)
            app = proxy_app(settings)
            self._sidecars[key] = (self.run(self._serve(app)), app)
        return self._sidecars[key][0] + "/v1"

    def sidecar_state(self, base_url: str) -> ProxyState:
        """The shared state of the sidecar serving ``base_url``."""
        for url, app in self._sidecars.values():
            if base_url.startswith(url):
                return app[STATE]
        raise KeyError(base_url)

    @property
    def simulator(self) -> SimulatedProvider:
        """The simulator's state (faults, nodes, counters)."""
        return self.provider

    def close(self) -> None:
        """Stop every server and the loop."""
        for runner in reversed(self._runners):
            self.run(runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


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
