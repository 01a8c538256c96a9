"""Connection-level bounds of the listeners: open connections per client, a header-read deadline,
and an OpenAI-shaped answer for every refusal aiohttp makes before a handler runs.

A request that is never finished (slowloris) holds a descriptor and never reaches a middleware,
so ``limits.max_concurrent_per_client`` cannot see it: 1,100 half-sent requests starved a
1,024-descriptor process, each living ~75 s (issue 11, finding 9). Here every connection is
counted per client address from the moment it is accepted (``limits.max_connections_per_client``,
half-open ones included), a connection whose first request's headers are not complete within
``limits.header_timeout`` is answered 408 and closed, and idle keep-alive connections (where a
second half-sent request would wait) close after twice that. aiohttp's own refusals of bad
requests (an oversized header line, malformed HTTP) were plain text with no ``x-tee-*`` header
and a logged traceback; they now leave as OpenAI error bodies with a failure code.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from http import HTTPStatus
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_request import BaseRequest

from sidecar.config import LimitsSettings
from sidecar.errors import BadRequest, SidecarError, TooManyRequests, openai_error_body
from sidecar.proxy.verdict import HEADER_FAILURE, HEADER_SHOULD_RETRY, HEADER_VERIFIED

log = structlog.get_logger("tee_sidecar.proxy")


def raw_error_response(error: SidecarError) -> bytes:
    """A whole HTTP/1.1 answer carrying ``error`` (for a connection no handler will serve)."""
    body = json.dumps(openai_error_body(error)).encode()
    status = HTTPStatus(error.http_status)
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            f"{HEADER_VERIFIED}: false\r\n"
            f"{HEADER_FAILURE}: {error.code}\r\n"
            f"{HEADER_SHOULD_RETRY}: {'true' if status.value == 429 else 'false'}\r\n\r\n")
    return head.encode("ascii") + body


class ConnectionGate:
    """Open connections per client address, bounded; the header-read deadline."""

    def __init__(self, limits: LimitsSettings) -> None:
        self.max_per_client = limits.max_connections_per_client
        self.header_timeout = limits.header_timeout
        self.open: Counter[str] = Counter()

    def admit(self, client: str) -> bool:
        """Count a new connection from ``client``; False (not counted) when over the bound."""
        if self.open[client] >= self.max_per_client:
            return False
        self.open[client] += 1
        return True

    def release(self, client: str) -> None:
        """A counted connection from ``client`` closed."""
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


class _GatedRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, counted by the gate and with a header-read deadline."""

    _gate_client: str | None = None
    _header_deadline: asyncio.TimerHandle | None = None

    def _gate(self) -> ConnectionGate:
        return cast(_GatedServer, self._manager).gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate()
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not gate.admit(client):
            # Never handed to aiohttp: answered and closed, the descriptor freed at once.
            log.warning("connection_refused", code="limits.too_many_connections")
            cast(asyncio.Transport, transport).write(raw_error_response(TooManyRequests(
                f"more than limits.max_connections_per_client ({gate.max_per_client}) "
                "connections open", code="limits.too_many_connections")))
            transport.close()
            return
        self._gate_client = client
        super().connection_made(transport)
        self._header_deadline = asyncio.get_running_loop().call_later(
            gate.header_timeout, self._headers_overdue)

    def _headers_overdue(self) -> None:
        self._header_deadline = None
        transport = self.transport
        if self._request_count or transport is None:
            return  # the first request's headers arrived in time
        log.warning("header_timeout", code="limits.header_timeout")
        transport.write(raw_error_response(BadRequest(
            f"request headers not received within limits.header_timeout "
            f"({self._gate().header_timeout} s)", code="limits.header_timeout",
            http_status=408)))
        self.force_close()  # closes the transport once the answer is flushed

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._gate_client is None:
            return  # refused in connection_made: aiohttp never saw it
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._gate().release(self._gate_client)
        self._gate_client = None
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's refusals (bad HTTP, oversized header lines) as OpenAI errors, no trace."""
        error: SidecarError
        if isinstance(exc, LineTooLong):
            error = BadRequest("a request header exceeds limits.max_header_bytes",
                               code="limits.request_header_too_large", http_status=431)
        elif status == 500:
            error = SidecarError("internal error in tee-sidecar", code="sidecar.internal_error")
        else:
            error = BadRequest(f"malformed HTTP request ({type(exc).__name__})",
                               code="request.malformed_http", http_status=status)
        log.warning("request_refused", status=error.http_status, code=error.code)
        response = web.json_response(openai_error_body(error), status=error.http_status,
                                     headers={HEADER_VERIFIED: "false",
                                              HEADER_FAILURE: error.code,
                                              HEADER_SHOULD_RETRY: "false"})
        response.force_close()
        return response


class _GatedServer(web.Server):
    """aiohttp's server, making gated connection handlers."""

    gate: ConnectionGate

    def __call__(self) -> web.RequestHandler:
        return _GatedRequestHandler(self, loop=self._loop, **self._kwargs)


class GatedAppRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are bounded by ``ConnectionGate`` (``limits``).

    Idle keep-alive connections close after twice ``limits.header_timeout`` (silently, as any
    keep-alive close; the 408 of a first request that never completed goes first): a second
    request that is never finished waits there, not in a handler.
    """

    def __init__(self, app: web.Application, limits: LimitsSettings, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", 2 * limits.header_timeout)
        super().__init__(app, **kwargs)
        self.gate = ConnectionGate(limits)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # AppRunner builds its Server itself (Application._make_handler); the subclass only
        # changes which connection handler it makes, so the instance is re-classed in place.
        server.__class__ = _GatedServer
        cast(_GatedServer, server).gate = self.gate
        return server
