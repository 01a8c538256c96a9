"""The floor: a bare aiohttp pass-through proxy with no verification at all.

It forwards the app's exact request bytes to the upstream and copies the response back chunk by
chunk (streams as they arrive), over one pooled ``ClientSession``, so the gap between it and
tee-sidecar is the price of verification and nothing else. Same event loop as the sidecar
(stock asyncio), same aiohttp.

    python bench/passthrough.py --port 9001 --upstream http://127.0.0.1:8900/api
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import hdrs, web

UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.StreamResponse:
    """Send the body upstream unchanged; relay the answer as it comes."""
    body = await request.read()
    session = request.app[SESSION]
    headers = {hdrs.CONTENT_TYPE: "application/json", hdrs.ACCEPT_ENCODING: "identity",
               hdrs.AUTHORIZATION: "Bearer sk-bench"}
    async with session.post(request.app[UPSTREAM] + request.path, data=body, headers=headers,
                            auto_decompress=False) as resp:
        content_type = resp.headers.get(hdrs.CONTENT_TYPE, "application/json")
        if not content_type.startswith("text/event-stream"):
            return web.Response(body=await resp.read(), status=resp.status,
                                headers={hdrs.CONTENT_TYPE: content_type})
        out = web.StreamResponse(status=resp.status, headers={
            hdrs.CONTENT_TYPE: content_type, hdrs.CACHE_CONTROL: "no-cache"})
        await out.prepare(request)
        async for chunk in resp.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


def build_app(upstream: str) -> web.Application:
    """The pass-through app forwarding every POST to ``upstream`` + path."""
    app = web.Application(client_max_size=8 << 20)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    """Serve the pass-through proxy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8900/api")
    args = parser.parse_args()
    web.run_app(build_app(args.upstream), host=args.host, port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
