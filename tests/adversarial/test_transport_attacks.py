"""Attacks on the transport: stalls, slow drips, resets mid-body, giant bodies and headers,
compression, and content types that lie. Each ends in a bounded time with a block, never a hang,
a crash or a delivery.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import time
import zlib
from collections.abc import Callable

import pytest
from aiohttp import hdrs, web

from tests.adversarial.conftest import (
    assert_blocked,
    assert_no_unverified_delivery,
    relay_verdict,
)
from tests.adversarial.harness import MESSAGES, TEE_MODEL, AdversarialStack, chat, post
from tests.adversarial.mitm import (
    Exchange,
    Intercept,
    Mitm,
    answer,
    drip,
    endless,
    reset_after,
    respond,
    rewrite_response,
    stall,
)


STREAM_MODES = [("plain", "buffer"), ("stream", "buffer"), ("stream", "relay")]
IDS = ["plain", "stream-buffer", "stream-relay"]


def _outcome(status: int, headers: dict[str, str], body: bytes, stream_mode: str,
             code: str | tuple[str, ...] | None = None) -> str:
    """The failure code of a refused answer, relayed or not (never a verified one)."""
    assert headers.get("x-tee-failure") != "sidecar.internal_error", body[:300]
    if stream_mode == "relay" and status == 200:
        failure = relay_verdict(body)
        assert failure != "verified"
        if code is not None:
            assert failure in ((code,) if isinstance(code, str) else code), failure
        return failure
    return assert_blocked(status, headers, body, code)


# -- stalls and drips -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, stream_mode", STREAM_MODES, ids=IDS)
@pytest.mark.parametrize("after", [0, 40], ids=["before-body", "mid-body"])
def test_stalled_answer_times_out(adv: AdversarialStack, kind: str, stream_mode: str,
                                  after: int) -> None:
    url = adv.sidecar(upstream={"read_timeout": 0.5}, verification={"stream": stream_mode})
    chat(url)
    adv.mitm.on("completion", stall(5.0, after=after))
    started = time.monotonic()
    status, headers, body = chat(url, stream=kind == "stream")
    assert time.monotonic() - started < 3
    _outcome(status, headers, body, stream_mode, "upstream.timeout")


def test_answer_stalled_before_its_headers_times_out(adv: AdversarialStack) -> None:
    async def silent(_: web.Request, __: Exchange, ___: Mitm) -> web.StreamResponse:
        import asyncio
        await asyncio.sleep(5)
        return web.Response(status=504)

    url = adv.sidecar(upstream={"read_timeout": 0.5})
    chat(url)
    adv.mitm.on("completion", silent)
    started = time.monotonic()
    status, headers, body = chat(url)
    assert time.monotonic() - started < 3
    assert_blocked(status, headers, body, "upstream.timeout")


@pytest.mark.parametrize("kind, stream_mode", STREAM_MODES, ids=IDS)
def test_slow_drip_is_cut_by_the_stream_timeout(adv: AdversarialStack, kind: str,
                                                stream_mode: str) -> None:
    # One byte every 50 ms never trips the 0.5 s read timeout; only a total bound stops it.
    url = adv.sidecar(upstream={"read_timeout": 0.5}, verification={"stream": stream_mode},
                      limits=dict(stream_timeout=1.0))
    chat(url)
    adv.mitm.on("completion", drip(0.05))
    started = time.monotonic()
    status, headers, body = chat(url, stream=kind == "stream")
    assert time.monotonic() - started < 4
    _outcome(status, headers, body, stream_mode, "limits.stream_timeout")


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_endless_keepalive_stream_is_cut(adv: AdversarialStack, stream_mode: str) -> None:
    url = adv.sidecar(upstream={"read_timeout": 0.5}, verification={"stream": stream_mode},
                      limits=dict(stream_timeout=1.0))
    chat(url)
    adv.mitm.on("completion", endless(b": keep-alive\n\n", delay=0.05, limit_seconds=10))
    started = time.monotonic()
    status, headers, body = chat(url, stream=True)
    assert time.monotonic() - started < 4
    _outcome(status, headers, body, stream_mode, "limits.stream_timeout")


@pytest.mark.parametrize("kind, code", [("signature", "signature.fetch_failed"),
                                        ("attestation", "attestation.fetch_failed")])
def test_stalled_evidence_endpoint_times_out(adv: AdversarialStack, kind: str, code: str) -> None:
    url = adv.sidecar(fresh=True, attestation={"timeout": 0.5})
    if kind == "signature":
        chat(url)
    adv.mitm.on(kind, stall(5.0, after=10))  # type: ignore[arg-type]
    started = time.monotonic()
    status, headers, body = chat(url)
    assert time.monotonic() - started < 3
    assert_blocked(status, headers, body, code)


# -- resets mid-body ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind, stream_mode", STREAM_MODES, ids=IDS)
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_completion_reset_mid_body(adv: AdversarialStack, kind: str, stream_mode: str,
                                   fraction: float) -> None:
    url = adv.sidecar(verification={"stream": stream_mode})
    chat(url)
    adv.mitm.on("completion", reset_after(fraction))
    status, headers, body = chat(url, stream=kind == "stream")
    # The headers announced the whole length: a reset at any point is a truncated answer.
    _outcome(status, headers, body, stream_mode, "stream.truncated")


@pytest.mark.parametrize("kind, code", [("signature", "signature.fetch_failed"),
                                        ("attestation", "attestation.fetch_failed")])
def test_evidence_reset_mid_body(adv: AdversarialStack, kind: str, code: str) -> None:
    url = adv.sidecar(fresh=True)
    if kind == "signature":
        chat(url)
    adv.mitm.on(kind, reset_after(0.5))  # type: ignore[arg-type]
    assert_blocked(*chat(url), code)


# -- giant bodies and headers --------------------------------------------------------------------

MIB = 1 << 20


def _giant_answer(size: int, *, stream: bool, announce_length: bool) -> Intercept:
    async def intercept(request: web.Request, _: Exchange, __: Mitm) -> web.StreamResponse:
        if stream:
            # Big events: a relay writes each event on its own, and the bound is about bytes.
            piece = b'data: {"id": "chatcmpl-x", "pad": "' + b"a" * (64 * 1024) + b'"}\n\n'
            content_type = "text/event-stream"
        else:
            piece = b" " * (64 * 1024)
            content_type = "application/json"
        out = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
        if announce_length:
            out.content_length = size
        await out.prepare(request)
        sent = 0
        try:
            while sent < size:
                await out.write(piece)
                sent += len(piece)
            await out.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the sidecar hung up once it had seen enough
        return out
    return intercept


@pytest.mark.parametrize("kind, stream_mode", STREAM_MODES, ids=IDS)
@pytest.mark.parametrize("announce_length", [True, False], ids=["content-length", "chunked"])
def test_giant_answer_is_refused(adv: AdversarialStack, kind: str, stream_mode: str,
                                 announce_length: bool) -> None:
    url = adv.sidecar(verification={"stream": stream_mode},
                      limits=dict(max_response_bytes=MIB))
    chat(url)
    adv.mitm.on("completion", _giant_answer(4 * MIB, stream=kind == "stream",
                                            announce_length=announce_length))
    status, headers, body = chat(url, stream=kind == "stream")
    _outcome(status, headers, body, stream_mode, "limits.response_too_large")


def test_giant_sse_event_without_terminator(adv: AdversarialStack) -> None:
    url = adv.sidecar(verification={"stream": "relay"})
    chat(url)
    adv.mitm.on("completion", answer(200, b"data: " + b"a" * (3 * MIB),
                                     content_type="text/event-stream"))
    status, headers, body = chat(url, stream=True)
    _outcome(status, headers, body, "relay", "stream.event_too_large")


@pytest.mark.parametrize("kind, code", [("signature", "evidence.too_large"),
                                        ("attestation", "evidence.too_large")])
def test_giant_evidence_is_refused(adv: AdversarialStack, kind: str, code: str) -> None:
    url = adv.sidecar(fresh=True)
    if kind == "signature":
        chat(url)
    adv.mitm.on(kind, answer(200, b'{"text": "' + b"a" * (5 * MIB) + b'"}'))  # type: ignore[arg-type]
    assert_blocked(*chat(url), code)


@pytest.mark.parametrize("shape", ["one-huge-header", "header-flood"])
def test_giant_upstream_headers_are_refused(adv: AdversarialStack, shape: str) -> None:
    url = adv.sidecar()
    chat(url)
    headers = ({"X-Padding": "a" * (64 << 10)} if shape == "one-huge-header"
               else {f"X-Flood-{i}": "a" * 100 for i in range(1000)})
    adv.mitm.on("completion", rewrite_response(lambda body: body, headers=headers))
    status, out_headers, body = chat(url)
    assert_blocked(status, out_headers, body, "upstream.unavailable")


def test_giant_request_is_refused_before_it_leaves(adv: AdversarialStack) -> None:
    url = adv.sidecar(limits=dict(max_request_bytes=MIB))
    chat(url)
    forwarded = len(adv.mitm.exchanges("completion"))
    body = json.dumps({"model": TEE_MODEL, "messages": [
        {"role": "user", "content": "a" * (2 * MIB)}]}).encode()
    status, headers, content = post(url + "/chat/completions", body)
    assert status == 413
    assert json.loads(content)["error"]["code"] == "limits.request_too_large"
    assert headers["x-tee-verified"] == "false"
    assert len(adv.mitm.exchanges("completion")) == forwarded


def test_giant_request_header_is_refused_before_it_leaves(adv: AdversarialStack) -> None:
    url = adv.sidecar()
    chat(url)
    forwarded = len(adv.mitm.exchanges("completion"))
    status, _, _ = post(url + "/chat/completions", {"model": TEE_MODEL, "messages": MESSAGES},
                        headers={"X-Padding": "a" * (64 << 10)})
    assert status in (400, 413, 431)
    assert len(adv.mitm.exchanges("completion")) == forwarded


# -- compression -------------------------------------------------------------------------------

COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("gzip", gzip.compress),
    "deflate": ("deflate", zlib.compress),
}


@pytest.mark.parametrize("kind, stream_mode", STREAM_MODES, ids=IDS)
@pytest.mark.parametrize("encoding", sorted(COMPRESSORS))
def test_compressed_answer_is_not_the_signed_bytes(adv: AdversarialStack, kind: str,
                                                   stream_mode: str, encoding: str) -> None:
    # The sidecar asks for identity; a gateway that compresses anyway changes the bytes.
    name, compress = COMPRESSORS[encoding]
    url = adv.sidecar(verification={"stream": stream_mode})
    chat(url)
    adv.mitm.on("completion", rewrite_response(compress, headers={hdrs.CONTENT_ENCODING: name}))
    status, headers, body = chat(url, stream=kind == "stream")
    # Compressed bytes are not JSON, and hold no event terminator (so no [DONE]).
    _outcome(status, headers, body, stream_mode,
             "response.malformed" if kind == "plain" else "stream.truncated")


def test_compressed_request_from_the_app(adv: AdversarialStack) -> None:
    url = adv.sidecar()
    plain = json.dumps({"model": TEE_MODEL, "messages": MESSAGES}).encode()
    status, headers, body = post(url + "/chat/completions", gzip.compress(plain),
                                 headers={hdrs.CONTENT_ENCODING: "gzip"})
    assert headers.get("x-tee-failure") != "sidecar.internal_error"
    if status == 200:
        # Whatever bytes went upstream, the sidecar hashed those same bytes.
        sent = adv.mitm.exchanges("completion")[-1][0].body
        assert_no_unverified_delivery(adv, sent, status, headers, body)


def test_compression_bomb_request_is_refused(adv: AdversarialStack) -> None:
    url = adv.sidecar(limits=dict(max_request_bytes=MIB))
    bomb = gzip.compress(b'{"model": "' + TEE_MODEL.encode() + b'", "x": "' + b"0" * (64 * MIB)
                         + b'"}')
    forwarded = len(adv.mitm.exchanges("completion"))
    status, headers, body = post(url + "/chat/completions", bomb,
                                 headers={hdrs.CONTENT_ENCODING: "gzip"})
    # The bound applies to the inflated bytes, not to the few kilobytes on the wire.
    assert status == 413
    assert headers["x-tee-failure"] == "limits.request_too_large"
    assert json.loads(body)["error"]["code"] == "limits.request_too_large"
    assert len(adv.mitm.exchanges("completion")) == forwarded


# -- content types that lie ----------------------------------------------------------------------


@pytest.mark.parametrize("stream, content_type, code", [
    (False, "text/event-stream", "stream.truncated"),
    (True, "application/json", "response.malformed"),
    (True, "text/plain", "response.malformed"),
])
def test_mislabelled_answer_is_blocked(adv: AdversarialStack, stream: bool, content_type: str,
                                       code: str) -> None:
    url = adv.sidecar()
    chat(url)
    adv.mitm.on("completion",
                rewrite_response(lambda body: body, headers={hdrs.CONTENT_TYPE: content_type}))
    assert_blocked(*chat(url, stream=stream), code)


@pytest.mark.parametrize("content_type", ["text/html", "application/json; charset=utf-16"])
def test_verified_answer_keeps_no_unsigned_content_type(adv: AdversarialStack,
                                                        content_type: str) -> None:
    url = adv.sidecar()
    chat(url)
    adv.mitm.on("completion",
                rewrite_response(lambda body: body, headers={hdrs.CONTENT_TYPE: content_type}))
    status, headers, _ = chat(url)
    # The body verified (the signature covers it), but its label is the MITM's: the sidecar
    # should label what it verified itself.
    assert status == 200 and headers["x-tee-verified"] == "true"
    assert headers["content-type"].split(";")[0] == "application/json"
    assert "charset=utf-16" not in headers["content-type"]


# -- a local client that floods ------------------------------------------------------------------


def test_concurrent_flood_from_one_client_is_bounded(adv: AdversarialStack) -> None:
    url = adv.sidecar(limits=dict(max_concurrent_per_client=2))
    chat(url)

    async def slow(_: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        import asyncio
        await asyncio.sleep(0.5)
        return respond(await mitm.forward(exchange))

    adv.mitm.on("completion", slow)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: chat(url), range(6)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) >= 2 and 429 in statuses
    for status, headers, body in results:
        if status == 429:
            assert headers["x-should-retry"] == "true"
            assert json.loads(body)["error"]["code"].startswith("limits.")
