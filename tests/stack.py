"""Simulator and sidecar together in a background event loop: the tests' in-process stack.

The OpenAI SDK's sync client blocks, so the servers run in their own thread with their own loop;
both the sync and the async SDK then talk to them over loopback exactly as an app would.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from sidecar.config import Settings, load_settings
from sidecar.proxy.app import STATE, ProxyState, build_proxy_app
from sidecar.proxy.wiring import client_session, load_policies, state_factory
from sidecar.simulator.provider import PROFILE_PREFIX, SimulatedProvider
from sidecar.simulator.server import build_simulator

T = TypeVar("T")


def simulator_settings(simulator_url: str, state_dir: Path, *, profile: str = "nanogpt",
                       **sections: Mapping[str, Any]) -> Settings:
    """Settings that point the sidecar at a simulator's ``profile`` and trust its test roots.

    ``upstream.provider`` is the profile and ``upstream.base_url`` its prefix in the default
    simulator app (``PROFILE_PREFIX``); ``sections`` override either.

    Raises:
        KeyError: an unknown profile.
        ConfigError: the merged settings are invalid.
    """
    merged: dict[str, dict[str, Any]] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"provider": profile, "base_url": simulator_url + PROFILE_PREFIX[profile],
                     "api_key": "sk-simulated", "signature_retry_delay": 0.01},
        "attestation": {"pccs_url": simulator_url + "/pcs",
                        "nras_url": simulator_url + "/nras/v3/attest/gpu",
                        "nvidia_jwks_url": simulator_url + "/nras/.well-known/jwks.json"},
        "trust": {"anchors": "simulator"},
        "state": {"dir": str(state_dir)},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return load_settings(None, **merged)


class Stack:
    """A simulator plus any number of sidecars, served from one background loop."""

    def __init__(self, state_dir: Path, *, nodes: int = 1,
                 tls: ssl.SSLContext | None = None, profile: str = "nanogpt") -> None:
        self._state_dir = state_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []
        self.simulator_app, self.provider = build_simulator(nodes=nodes)
        # Over TLS idle connections close after 0.3 s, so a test that swaps the certificate
        # (a man in the middle) and waits a moment sees the sidecar reconnect and handshake.
        self.simulator_url = self.run(self.serve(self.simulator_app, tls=tls))
        # Where sidecars send everything (provider, PCS, NRAS); a subclass may put a
        # man in the middle here.
        self.upstream_url = self.simulator_url
        # Settings sections every sidecar of this stack starts from.
        self.defaults: dict[str, dict[str, Any]] = {}
        self._sidecars: dict[str, tuple[str, web.Application]] = {}
        # The profile sidecars talk to unless ``sidecar(profile=...)`` names another.
        self.profile = profile

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the stack's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def serve(self, app: web.Application, tls: ssl.SSLContext | None = None) -> str:
        """Serve ``app`` on a free loopback port of the stack's loop; returns its base URL."""
        runner = web.AppRunner(app, access_log=None,
                               keepalive_timeout=0.3 if tls is not None else 75.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        return f"{'https' if tls is not None else 'http'}://127.0.0.1:{port}"

    def sidecar(self, *, fresh: bool = False, profile: str | None = None,
                **sections: Mapping[str, Any]) -> str:
        """Base URL (``…/v1``) of a sidecar with ``defaults`` overridden by ``sections``.

        ``profile`` (default: the stack's) picks the simulator profile the sidecar talks to,
        so one stack serves them all. One sidecar per configuration is reused; ``fresh``
        starts a new one (a new process's empty attestation cache). Each sidecar has its own
        state directory: a receipts file has one writer.
        """
        profile = profile or self.profile
        merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in self.defaults.items()}
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        key = json.dumps([profile, merged], sort_keys=True, default=str)
        if fresh:
            key += f"#{len(self._sidecars)}"
        if key not in self._sidecars:
            state_dir = self._state_dir / f"sidecar-{len(self._sidecars)}"
            settings = simulator_settings(self.upstream_url, state_dir, profile=profile, **merged)
            app = build_proxy_app(settings, state_factory(settings, load_policies(settings)),
                                  lambda: client_session(settings))
            self._sidecars[key] = (self.run(self.serve(app)), app)
        return self._sidecars[key][0] + "/v1"

    def sidecar_state(self, base_url: str) -> ProxyState:
        """The shared state of the sidecar serving ``base_url`` (cache, counters)."""
        for url, app in self._sidecars.values():
            if base_url.startswith(url):
                return app[STATE]
        raise KeyError(base_url)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop thread (to touch state without races)."""
        async def wrapper() -> T:
            return fn()
        return self.run(wrapper())

    @property
    def simulator(self) -> SimulatedProvider:
        """The simulator's state (faults, nodes)."""
        return self.provider

    def close(self) -> None:
        """Stop every server and the loop."""
        for runner in reversed(self._runners):
            self.run(runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
