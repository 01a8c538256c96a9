"""Running the sidecar as a service: proxy and admin listeners, warm-up, graceful shutdown.

On SIGTERM (or SIGINT) aiohttp's runner stops accepting on the proxy port, waits up to
``listen.shutdown_timeout`` for in-flight requests and streams to finish, then runs the cleanup
contexts in reverse: the warm-up task and the admin listener stop, the client session closes,
and the receipts file is flushed and closed. The process then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from sidecar.proxy.admin import build_admin_app, public_url
from sidecar.config import Settings
from sidecar.errors import VerificationFailed
from sidecar.pins import log_identity_modes
from sidecar.proxy.app import STATE, build_proxy_app
from sidecar.proxy.connections import GatedAppRunner
from sidecar.proxy.local_origin import LocalCallerPolicy
from sidecar.proxy.warmup import keep_models_warm
from sidecar.proxy.wiring import client_session, load_policies, state_factory
from sidecar.verify.policy import PolicySet

log = structlog.get_logger("tee_sidecar")


def admin_and_warmup(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for the proxy app: the admin listener and the warm-models loop.

    It runs after the proxy state exists and stops before the client session closes.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        runner: web.AppRunner | None = None
        if settings.admin.enabled:
            callers = LocalCallerPolicy.for_listener(settings.admin.host,
                                                     settings.admin.allowed_hosts)
            runner = GatedAppRunner(build_admin_app(lambda: app.get(STATE), callers),
                                    settings.limits, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.admin.host, settings.admin.port).start()
            log.info("admin_listening", host=settings.admin.host, port=settings.admin.port)
        warm: asyncio.Task[None] | None = None
        models = list(settings.attestation.warm_models)
        if models:
            # Refresh well inside the shortest TTL among them, so /readyz never sees a gap.
            ttl = min(_ttl(app[STATE].policies, model) for model in models)
            warm = asyncio.create_task(keep_models_warm(
                app[STATE], models, interval=max(1.0, min(60.0, ttl / 4)),
                refresh_before=min(300.0, ttl / 2)))
        try:
            yield
        finally:
            if warm is not None:
                warm.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await warm
            if runner is not None:
                await runner.cleanup()

    return context


def _ttl(policies: PolicySet, model: str) -> int:
    try:
        return policies.for_model(model).attestation_ttl_seconds
    except VerificationFailed:  # a warm model the policy refuses: it will never be ready
        return 3600


def build_service_app(settings: Settings) -> web.Application:
    """The proxy app with its admin listener and warm-up attached.

    Raises:
        ConfigError: the policy file is invalid.
    """
    policies = load_policies(settings)
    log_identity_modes(policies)
    app = build_proxy_app(settings, state_factory(settings, policies),
                          lambda: client_session(settings))
    app.cleanup_ctx.append(admin_and_warmup(settings))
    return app


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a graceful shutdown).

    Raises:
        ConfigError: the policy file is invalid.
    """
    app = build_service_app(settings)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    log.info("listening", loop=loop_name, host=settings.listen.host, port=settings.listen.port,
             provider=str(settings.upstream.provider),
             upstream=public_url(settings.upstream.base_url),
             mode=str(settings.verification.mode), stream=str(settings.verification.stream))
    asyncio.run(_serve_until_signal(app, settings))
    log.info("stopped")
    return 0


async def _serve_until_signal(app: web.Application, settings: Settings) -> None:
    """Serve ``app`` on the listen address (connections bounded by ``GatedAppRunner``) until
    SIGTERM or SIGINT, then shut down gracefully (``listen.shutdown_timeout``)."""
    runner = GatedAppRunner(app, settings.limits, access_log=None,
                            shutdown_timeout=settings.listen.shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.listen.host, settings.listen.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
