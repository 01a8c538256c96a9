"""A tampering man-in-the-middle between tee-sidecar and the simulated provider.

The sidecar's ``upstream.base_url``, ``attestation.pccs_url`` and ``attestation.nras_url`` point
at this proxy, which forwards to the simulator: every byte the sidecar sees from the provider,
Intel's PCS and NVIDIA's NRAS has crossed the attacker first. A test programs it per endpoint
kind (``attestation``, ``signature``, ``completion``, ``models``, ``pcs``, ``nras``) with an
``Intercept``: an async function that gets the incoming request and may forward it (changed or
not), answer by itself, stall, drip or cut the connection.

It is also runnable as a process for the soak run::

    python -m tests.adversarial.mitm --upstream http://127.0.0.1:P --port Q

In that form it tampers with exactly the completions whose request body carries a marker
(``MARKERS``): the soak's client decides which of its requests are attacked, and so knows which
answers must be blocked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, MultiDict

Kind = Literal["attestation", "signature", "completion", "models", "pcs", "nras", "other"]
KINDS: tuple[Kind, ...] = ("attestation", "signature", "completion", "models", "pcs", "nras")

# Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1), plus the ones aiohttp
# recomputes for the body it sends.
_HOP_HEADERS = frozenset(h.lower() for h in (
    hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION, hdrs.TE,
    hdrs.TRAILER, hdrs.TRANSFER_ENCODING, hdrs.UPGRADE, hdrs.HOST, hdrs.CONTENT_LENGTH))


def classify(path: str) -> Kind:
    """Which provider endpoint a path is (both the NanoGPT and the private-ml-sdk spelling)."""
    if path.startswith("/pcs"):
        return "pcs"
    if path.startswith("/nras"):
        return "nras"
    if "/tee/attestation" in path or "/attestation/report" in path:
        return "attestation"
    if "/signature/" in path:
        return "signature"
    if path.endswith("/completions"):
        return "completion"
    if path.endswith("/v1/models"):
        return "models"
    return "other"


@dataclass
class Exchange:
    """One request as the MITM received it; a handler may change any field before forwarding."""

    kind: Kind
    method: str
    path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """The simulator's whole answer to a forwarded request."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def content_type(self) -> str:
        """The upstream ``Content-Type`` (empty if none)."""
        return self.headers.get(hdrs.CONTENT_TYPE, "")

    def json(self) -> object:
        """The body as JSON."""
        return json.loads(self.body)


Intercept = Callable[[web.Request, Exchange, "Mitm"], Awaitable[web.StreamResponse]]


@dataclass
class Rule:
    """An intercept for one endpoint kind, for the next ``times`` requests (``None``: all)."""

    kind: Kind
    intercept: Intercept
    times: int | None = None
    hits: int = 0


@dataclass
class Mitm:
    """The programmable attacker. ``app()`` is the aiohttp application to serve on loopback."""

    upstream_url: str
    rules: list[Rule] = field(default_factory=list)
    # Every exchange forwarded, with the answer as the simulator gave it (before tampering).
    seen: list[tuple[Exchange, Upstream]] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    def on(self, kind: Kind, intercept: Intercept, times: int | None = None) -> Rule:
        """Intercept requests of ``kind`` (the newest rule for a kind wins)."""
        rule = Rule(kind, intercept, times)
        self.rules.insert(0, rule)
        return rule

    def reset(self) -> None:
        """Forget every rule and exchange: an honest path again."""
        self.rules.clear()
        self.seen.clear()

    def exchanges(self, kind: Kind) -> list[tuple[Exchange, Upstream]]:
        """The exchanges of ``kind`` seen so far, oldest first."""
        return [(e, u) for e, u in self.seen if e.kind == kind]

    def app(self) -> web.Application:
        """The MITM's aiohttp application (one catch-all route)."""
        app = web.Application(client_max_size=64 << 20)

        async def session_ctx(_: web.Application):  # type: ignore[no-untyped-def]
            # No decompression, no connection limit: the MITM passes bytes, it does not read them.
            async with aiohttp.ClientSession(auto_decompress=False,
                                             connector=aiohttp.TCPConnector(limit=0)) as session:
                self._session = session
                yield
                self._session = None

        app.cleanup_ctx.append(session_ctx)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        exchange = Exchange(
            kind=classify(request.path), method=request.method, path=request.path,
            query=MultiDict(request.query),
            headers=CIMultiDict((k, v) for k, v in request.headers.items()
                                if k.lower() not in _HOP_HEADERS),
            body=await request.read())
        for rule in self.rules:
            if rule.kind == exchange.kind and (rule.times is None or rule.hits < rule.times):
                rule.hits += 1
                return await rule.intercept(request, exchange, self)
        return respond(await self.forward(exchange))

    async def forward(self, exchange: Exchange, *, to: str | None = None) -> Upstream:
        """Send ``exchange`` to the simulator (or to another upstream ``to``); read it whole."""
        assert self._session is not None
        async with self._session.request(
            exchange.method, (to or self.upstream_url) + exchange.path, params=exchange.query,
            headers=exchange.headers, data=exchange.body if exchange.body else None,
            allow_redirects=False,
        ) as resp:
            answer = Upstream(resp.status, CIMultiDict(resp.headers), await resp.read())
        self.seen.append((exchange, answer))
        return answer


# -- answers ----------------------------------------------------------------------------------


def respond(upstream: Upstream, body: bytes | None = None, *, status: int | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    """An answer shaped like ``upstream`` (status, content type), with optional changes."""
    # Every header passes (PCS sends its issuer chains in headers), except per-hop ones.
    out = CIMultiDict((k, v) for k, v in upstream.headers.items()
                      if k.lower() not in _HOP_HEADERS and k.lower() != "date"
                      and k.lower() != "server")
    for name, value in (headers or {}).items():
        out[name] = value
    return web.Response(body=upstream.body if body is None else body,
                        status=upstream.status if status is None else status, headers=out)


def split_events(body: bytes) -> list[bytes]:
    """An SSE body cut into events, each with its own terminator (bytes kept exactly)."""
    events: list[bytes] = []
    rest = body
    while rest:
        ends = [(i + len(t)) for t in (b"\r\n\r\n", b"\n\n") if (i := rest.find(t)) >= 0]
        if not ends:
            events.append(rest)
            break
        end = min(ends)
        events.append(rest[:end])
        rest = rest[end:]
    return events


async def write_slowly(request: web.Request, upstream: Upstream, pieces: Iterable[bytes], *,
                       delay: float = 0.0, content_length: int | None = None,
                       cut: bool = False) -> web.StreamResponse:
    """Stream ``pieces`` with ``delay`` seconds between them; ``cut`` resets the connection
    after the last piece instead of ending the body."""
    headers = {hdrs.CONTENT_TYPE: upstream.content_type or "application/octet-stream"}
    out = web.StreamResponse(status=upstream.status, headers=headers)
    if content_length is not None:
        out.content_length = content_length
    await out.prepare(request)
    for piece in pieces:
        if delay:
            await asyncio.sleep(delay)
        await out.write(piece)
    if cut:
        assert request.transport is not None
        request.transport.abort()
        return out
    await out.write_eof()
    return out


# -- intercepts used by the tests -----------------------------------------------------------------


def pass_through() -> Intercept:
    """Forward unchanged (to override an older rule)."""
    async def intercept(_: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        return respond(await mitm.forward(exchange))
    return intercept


def rewrite_response(fn: Callable[[bytes], bytes], **respond_kwargs: object) -> Intercept:
    """Forward, then answer with ``fn(body)``."""
    async def intercept(_: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        upstream = await mitm.forward(exchange)
        return respond(upstream, fn(upstream.body), **respond_kwargs)  # type: ignore[arg-type]
    return intercept


def rewrite_request(fn: Callable[[bytes], bytes]) -> Intercept:
    """Change the request body on its way to the enclave."""
    async def intercept(_: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        exchange.body = fn(exchange.body)
        return respond(await mitm.forward(exchange))
    return intercept


def rewrite_events(fn: Callable[[list[bytes]], list[bytes]], *, chunk: int | None = None,
                   delay: float = 0.0) -> Intercept:
    """Forward a stream, then re-send ``fn(events)``, optionally re-chunked and slowed."""
    async def intercept(request: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        upstream = await mitm.forward(exchange)
        body = b"".join(fn(split_events(upstream.body)))
        pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
        return await write_slowly(request, upstream, pieces, delay=delay)
    return intercept


def answer(status: int, body: bytes, content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> Intercept:
    """Answer by itself, without asking the simulator."""
    async def intercept(_: web.Request, __: Exchange, ___: Mitm) -> web.StreamResponse:
        return web.Response(status=status, body=body,
                            headers={hdrs.CONTENT_TYPE: content_type, **(headers or {})})
    return intercept


def stall(seconds: float, *, after: int = 0) -> Intercept:
    """Forward, send ``after`` bytes of the answer, then send nothing for ``seconds``."""
    async def intercept(request: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        upstream = await mitm.forward(exchange)
        out = web.StreamResponse(status=upstream.status,
                                 headers={hdrs.CONTENT_TYPE: upstream.content_type})
        out.content_length = len(upstream.body)
        await out.prepare(request)
        if after:
            await out.write(upstream.body[:after])
        await asyncio.sleep(seconds)
        return out
    return intercept


def drip(delay: float, *, size: int = 1) -> Intercept:
    """Forward, then send the answer ``size`` bytes at a time, ``delay`` seconds apart."""
    async def intercept(request: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        upstream = await mitm.forward(exchange)
        body = upstream.body
        return await write_slowly(request, upstream,
                                  (body[i:i + size] for i in range(0, len(body), size)),
                                  delay=delay, content_length=len(body))
    return intercept


def reset_after(fraction: float) -> Intercept:
    """Forward, send the first ``fraction`` of the answer (announced whole), then reset."""
    async def intercept(request: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        upstream = await mitm.forward(exchange)
        cut_at = int(len(upstream.body) * fraction)
        return await write_slowly(request, upstream, [upstream.body[:cut_at]],
                                  content_length=len(upstream.body), cut=True)
    return intercept


def endless(piece: bytes, *, delay: float, content_type: str = "text/event-stream",
            limit_seconds: float = 30.0) -> Intercept:
    """Never finish: send ``piece`` every ``delay`` seconds (bounded by ``limit_seconds``)."""
    async def intercept(request: web.Request, _: Exchange, __: Mitm) -> web.StreamResponse:
        out = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
        await out.prepare(request)
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + limit_seconds
        try:
            while loop.time() < stop_at:
                await out.write(piece)
                await asyncio.sleep(delay)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the sidecar gave up on us: that is the point
        return out
    return intercept


# -- the soak's marker-driven tampering -------------------------------------------------------------

# A soak request carrying one of these strings in its body is attacked in that way; every other
# request passes untouched. The sidecar forwards the app's bytes exactly, so the MITM sees them.
MARKERS: dict[str, str] = {
    "tamper-response": "flip one byte of the answer text",
    "tamper-request": "change one byte of the request on its way to the enclave",
    "tamper-drop-event": "drop one SSE event (plain answers: flip a byte)",
    "tamper-signature": "answer the signature fetch with another completion's record",
}


def _flip_text_byte(body: bytes) -> bytes:
    # A letter's case inside the answer text: the JSON stays valid, only the meaning changes.
    position = body.find(b"enclave")
    if position < 0:
        position = len(body) // 2
    return body[:position] + bytes([body[position] ^ 0x20]) + body[position + 1:]


def marker_tamper(mitm: Mitm) -> None:
    """Install the soak's rules: tamper exactly with the completions that carry a marker."""
    tampered_ids: set[str] = set()
    records: list[bytes] = []

    async def completion(request: web.Request, exchange: Exchange, m: Mitm) -> web.StreamResponse:
        marker = next((k for k in MARKERS if k.encode() in exchange.body), None)
        if marker == "tamper-request":
            exchange.body = exchange.body.replace(b"tamper-request", b"tamper-requesT")
        upstream = await m.forward(exchange)
        if len(m.seen) > 64:
            del m.seen[:-64]  # bounded memory in a long run
        if marker is None or marker == "tamper-request" or upstream.status != 200:
            return respond(upstream)
        if marker == "tamper-signature":
            chat_id = _first_id(upstream.body)
            if chat_id:
                tampered_ids.add(chat_id)
            return respond(upstream)
        if marker == "tamper-drop-event" and upstream.content_type.startswith("text/event-stream"):
            events = split_events(upstream.body)
            del events[random.randrange(1, max(2, len(events) - 1))]
            return respond(upstream, b"".join(events))
        return respond(upstream, _flip_text_byte(upstream.body))

    async def signature(_: web.Request, exchange: Exchange, m: Mitm) -> web.StreamResponse:
        upstream = await m.forward(exchange)
        if len(m.seen) > 64:
            del m.seen[:-64]
        chat_id = exchange.path.rsplit("/", 1)[-1]
        if upstream.status == 200:
            if chat_id in tampered_ids and records:
                tampered_ids.discard(chat_id)
                return respond(upstream, records[-1])
            records.append(upstream.body)
            del records[:-8]
        return respond(upstream)

    mitm.on("completion", completion)
    mitm.on("signature", signature)


def _first_id(body: bytes) -> str | None:
    for event in split_events(body) if body.startswith(b"data:") else [body]:
        payload = event.removeprefix(b"data: ").strip()
        try:
            value = json.loads(payload)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return value["id"]
    return None


def main() -> None:
    """Run the marker-driven MITM as a process (the soak run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the simulator's base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the MITM listens on loopback only")
    mitm = Mitm(args.upstream.rstrip("/"))
    marker_tamper(mitm)
    web.run_app(mitm.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
