"""The verifying floor: the pass-through plus only the work verification cannot avoid.

Issue 15 names the floor of a verifying proxy: "a pass-through exchange, one extra signature
fetch on a kept-alive connection, hashing, and one signer recovery". This is that and nothing
else, so the bench can measure it beside the pass-through, the manual client and the sidecar:
it forwards the app's exact bytes over one pooled session, reads the whole answer (a stream
too: delivered once whole, as the sidecar's buffer mode does), hashes both, fetches
``/v1/tee/signature/{id}``, checks the text's hashes and recovers the EIP-191 signer exactly as
the manual client does (``bench/client.py``), and answers 200 or 502. Options add one of the
sidecar's duties at a time, to price it on the floor:

  --receipts FILE   one receipt per completion, group-committed and fsync'd before delivery,
                    with the sidecar's own ``ReceiptLog``;
  --log             one JSON log line per request with the sidecar's own structlog setup.

It is a measuring stick, not a verifier: no attestation (the addresses are fetched once at
start, as the manual client does), no policy, no limits, no stream-shape checks.

    python bench/floor.py --port 9002 --upstream http://127.0.0.1:8900/api
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import structlog
from aiohttp import hdrs, web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.client import MODEL, Rejected, recover_signer  # noqa: E402
from sidecar.logs import configure_logging  # noqa: E402
from sidecar.receipts import Receipt, ReceiptLog, receipt_time  # noqa: E402

UPSTREAM_HEADERS = {hdrs.CONTENT_TYPE: "application/json", hdrs.ACCEPT_ENCODING: "identity",
                    hdrs.AUTHORIZATION: "Bearer sk-bench"}


class Floor:
    """The shared state: upstream, session, attested addresses, optional duties."""

    def __init__(self, upstream: str, receipts: ReceiptLog | None, log: bool) -> None:
        self.upstream = upstream.rstrip("/")
        self.receipts = receipts
        self.log = structlog.get_logger("floor") if log else None
        self.session: aiohttp.ClientSession
        self.attested: set[str] = set()

    async def start(self) -> None:
        """Fetch the signing addresses once (as the manual client does at start)."""
        params = {"model": MODEL, "nonce": secrets.token_hex(32), "signing_algo": "ecdsa"}
        async with self.session.get(self.upstream + "/v1/tee/attestation", params=params,
                                    headers=UPSTREAM_HEADERS) as resp:
            report = await resp.json()
        nodes = [report, *(report.get("all_attestations") or [])]
        self.attested = {node["signing_address"].lower() for node in nodes}

    async def verify(self, body: bytes, chat_id: str, request_sha256: str,
                     response_sha256: str) -> dict[str, str]:
        """The manual client's check: one fetch, the hashes, one recovery."""
        url = self.upstream + "/v1/tee/signature/" + chat_id
        async with self.session.get(url, params={"model": MODEL, "signing_algo": "ecdsa"},
                                    headers=UPSTREAM_HEADERS) as resp:
            if resp.status != 200:
                raise Rejected("signature missing")
            record: dict[str, str] = json.loads(await resp.read())
        *named, signed_request, signed_response = record["text"].split(":")
        if signed_response != response_sha256:
            raise Rejected("hash mismatch")
        if signed_request != request_sha256:
            renamed = body.replace(json.dumps(MODEL).encode(), json.dumps(":".join(named)).encode(),
                                   1)
            if not named or signed_request != hashlib.sha256(renamed).hexdigest():
                raise Rejected("hash mismatch")
        if recover_signer(record["text"], record["signature"]) not in self.attested:
            raise Rejected("signer not attested")
        return record

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Forward, read whole, verify, then deliver or refuse."""
        started = time.perf_counter()
        body = await request.read()
        request_sha256 = hashlib.sha256(body).hexdigest()
        async with self.session.post(self.upstream + request.path, data=body,
                                     headers=UPSTREAM_HEADERS, auto_decompress=False) as resp:
            answer = await resp.read()
            content_type = resp.headers.get(hdrs.CONTENT_TYPE, "application/json")
        stream = content_type.startswith("text/event-stream")
        if stream:  # the completion id is in the first data event
            start = answer.index(b"data: ") + 6
            first = answer[start:answer.index(b"\n", start)]
        else:
            first = answer
        chat_id = json.loads(first)["id"]
        response_sha256 = hashlib.sha256(answer).hexdigest()
        try:
            record = await self.verify(body, chat_id, request_sha256, response_sha256)
        except Rejected as exc:
            return web.Response(status=502, text=str(exc))
        if self.receipts is not None:
            await self.receipts.append_async(Receipt(
                time=receipt_time(), model=MODEL, request_sha256=request_sha256,
                response_sha256=response_sha256, chat_id=chat_id,
                text=record["text"], signature=record["signature"],
                signing_address=record["signing_address"], signing_algo="ecdsa",
                evidence_sha256="0" * 64, nonce="0" * 64, verdict="verified",
                failure_code=None))
        if self.log is not None:
            self.log.info("request", method=request.method, path=request.path, status=200,
                          model=MODEL, verified="true",
                          duration_ms=round((time.perf_counter() - started) * 1000, 2))
        return web.Response(body=answer, headers={hdrs.CONTENT_TYPE: content_type,
                                                  "x-tee-verified": "true"})


def build_app(floor: Floor) -> web.Application:
    """The floor app: every POST is forwarded to the upstream and verified."""
    app = web.Application(client_max_size=8 << 20)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            floor.session = session
            await floor.start()
            yield
            if floor.receipts is not None:
                await floor.receipts.aclose()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", floor.forward)
    return app


def main() -> None:
    """Serve the floor proxy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8900/api")
    parser.add_argument("--receipts", type=Path, help="group-committed receipts to this file")
    parser.add_argument("--log", action="store_true", help="one JSON log line per request")
    parser.add_argument("--uvloop", action="store_true", help="run under uvloop")
    args = parser.parse_args()
    if args.log:
        configure_logging("json", "info")
    receipts = ReceiptLog(args.receipts) if args.receipts else None
    loop_factory = None
    if args.uvloop:
        import uvloop
        loop_factory = uvloop.new_event_loop
    web.run_app(build_app(Floor(args.upstream, receipts, args.log)), host=args.host,
                port=args.port, print=None, access_log=None, loop=loop_factory() if loop_factory
                else None)


if __name__ == "__main__":
    main()
