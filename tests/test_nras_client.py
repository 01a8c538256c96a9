"""NrasClient against the simulated NRAS served by aiohttp, and against broken servers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.errors import VerificationIncomplete
from sidecar.proxy.nras_client import JWKS_MIN_REFETCH_SECONDS, NrasClient
from sidecar.simulator.nras import SIMULATOR_NRAS_ISSUER, NrasFaults, SimulatedNras, add_nras_routes
from sidecar.verify.nvidia import GpuPolicy, token_kids, verify_nras_result

NONCE = "5c" * 32
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def nras_app(nras: SimulatedNras, counter: dict[str, int] | None = None) -> web.Application:
    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        if counter is not None:
            counter[request.path] = counter.get(request.path, 0) + 1
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[count])
    add_nras_routes(app, nras)
    return app


def client_for(server: TestServer, session: aiohttp.ClientSession, **kwargs: Any) -> NrasClient:
    return NrasClient(
        session,
        str(server.make_url("/nras/v3/attest/gpu")),
        str(server.make_url("/nras/.well-known/jwks.json")),
        timeout=2.0,
        **kwargs,
    )


async def test_attest_and_jwks_round_trip_verifies(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    nras = SimulatedNras()
    server = await aiohttp_server(nras_app(nras))
    client = client_for(server, session)
    answer = await client.attest(nras.make_nvidia_payload(NONCE, gpu_count=2))
    jwks = await client.jwks(require_kids=token_kids(answer))
    assert jwks == nras.jwks()
    report = verify_nras_result(
        answer,
        expected_nonce=NONCE,
        jwks=jwks,
        expected_issuer=SIMULATOR_NRAS_ISSUER,
        now=int(time.time()),
        policy=GpuPolicy(),
    )
    assert report.ok, report.failures
    assert len(report.gpus) == 2


async def test_bad_payload_is_nras_unavailable(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(nras_app(SimulatedNras()))
    with pytest.raises(VerificationIncomplete, match="answered HTTP 400") as raised:
        await client_for(server, session).attest("not json")
    assert raised.value.code == "gpu.nras_unavailable"


async def test_jwks_is_cached_within_ttl_and_refetched_after(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    counter: dict[str, int] = {}
    server = await aiohttp_server(nras_app(SimulatedNras(), counter))
    clock = FakeClock()
    client = client_for(server, session, jwks_ttl=600.0, clock=clock)
    path = "/nras/.well-known/jwks.json"
    await client.jwks()
    await client.jwks()
    assert counter[path] == 1
    clock.now += 601
    await client.jwks()
    assert counter[path] == 2


async def test_unknown_kid_refetches_once_and_is_rate_limited(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    counter: dict[str, int] = {}
    server = await aiohttp_server(nras_app(SimulatedNras(), counter))
    clock = FakeClock()
    client = client_for(server, session, clock=clock)
    path = "/nras/.well-known/jwks.json"
    await client.jwks()
    await client.jwks(require_kids={"rotated-kid"})
    assert counter[path] == 1  # too soon after the last fetch
    clock.now += JWKS_MIN_REFETCH_SECONDS
    await client.jwks(require_kids={"rotated-kid"})
    assert counter[path] == 2
    await client.jwks(require_kids={"rotated-kid"})
    assert counter[path] == 2


async def test_failed_unknown_kid_refetch_keeps_the_fresh_set(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    nras = SimulatedNras()
    server = await aiohttp_server(nras_app(nras))
    clock = FakeClock()
    client = client_for(server, session, clock=clock)
    first = await client.jwks()
    await server.close()
    clock.now += JWKS_MIN_REFETCH_SECONDS
    assert await client.jwks(require_kids={"rotated-kid"}) == first


def broken_app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/nras/v3/attest/gpu", handler)
    app.router.add_route("*", "/nras/.well-known/jwks.json", handler)
    return app


async def _status_500(request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="oops")


async def _not_json(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>maintenance</html>")


async def _json_object(request: web.Request) -> web.StreamResponse:
    return web.json_response({"keys": "nope", "error": "x"})


async def _too_large(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"[" + b" " * (2 * 1024 * 1024) + b"]")


async def _slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.json_response([])


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("https://nras.attacker.invalid/")


@pytest.mark.parametrize(
    ("handler", "attest_match", "jwks_match"),
    [
        (_status_500, "answered HTTP 500", "answered HTTP 500"),
        (_not_json, "is not JSON", "is not JSON"),
        (_json_object, "JSON that is not a list", "not an object with a keys list"),
        (_too_large, "larger than 1048576 bytes", "larger than 262144 bytes"),
        (_slow, "failed: (TimeoutError|ServerTimeoutError)", "failed: (TimeoutError|ServerTimeoutError)"),
        (_redirect, "answered HTTP 302", "answered HTTP 302"),
    ],
    ids=["http_500", "not_json", "wrong_json_shape", "too_large", "timeout", "redirect"],
)
async def test_broken_nras_is_unavailable(
    aiohttp_server: ServerFactory,
    session: aiohttp.ClientSession,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    attest_match: str,
    jwks_match: str,
) -> None:
    server = await aiohttp_server(broken_app(handler))
    client = NrasClient(
        session,
        str(server.make_url("/nras/v3/attest/gpu")),
        str(server.make_url("/nras/.well-known/jwks.json")),
        timeout=0.3,
    )
    with pytest.raises(VerificationIncomplete, match=attest_match) as raised:
        await client.attest(json.dumps({"nonce": NONCE}))
    assert raised.value.code == "gpu.nras_unavailable"
    with pytest.raises(VerificationIncomplete, match=jwks_match) as raised:
        await client.jwks()
    assert raised.value.code == "gpu.nras_unavailable"


async def test_unreachable_nras_is_unavailable(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on ``port`` now: connection refused.
    client = NrasClient(
        session,
        f"http://127.0.0.1:{port}/nras/v3/attest/gpu",
        f"http://127.0.0.1:{port}/nras/.well-known/jwks.json",
        timeout=2.0,
    )
    with pytest.raises(VerificationIncomplete, match="failed: ClientConnectorError") as raised:
        await client.attest("{}")
    assert raised.value.code == "gpu.nras_unavailable"
    with pytest.raises(VerificationIncomplete, match="failed: ClientConnectorError"):
        await client.jwks()


async def test_simulator_faults_are_read_per_request(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    nras = SimulatedNras()
    server = await aiohttp_server(nras_app(nras))
    client = client_for(server, session)
    nras.faults = NrasFaults(overall_result_false=True)
    answer = await client.attest(nras.make_nvidia_payload(NONCE))
    report = verify_nras_result(
        answer,
        expected_nonce=NONCE,
        jwks=await client.jwks(),
        expected_issuer=SIMULATOR_NRAS_ISSUER,
        now=int(time.time()),
        policy=GpuPolicy(),
    )
    assert [c.code for c in report.failures] == ["gpu.overall_result_false"]
