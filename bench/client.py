"""The load client: a closed loop of N concurrent workers over one pooled aiohttp session.

Runs in its own process so its CPU time is its own. Each worker sends the same chat request
again and again; requests that start inside the measurement window (after a warm-up that opens
every connection) give the latency and time-to-first-byte samples, completions inside the window
give throughput, and the CPU time of the watched server processes (read from /proc at the
window's edges) is divided by those completions.

``--verify`` says what a completion must prove before it counts:
  none     status 200 (direct, pass-through, LiteLLM);
  manual   what an app would code itself: hash request and response bytes, fetch the signature,
           recover the EIP-191 signer with coincurve and keccak, compare it with the address the
           attestation report named (fetched once at start, its evidence not re-checked here);
  sidecar  tee-sidecar said so: ``x-tee-verified: true``, or for a relayed stream the
           ``: x-tee-verified true`` comment before ``[DONE]``.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import coincurve
from Crypto.Hash import keccak

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import procstat  # noqa: E402

MODEL = "TEE/simulated-llama-3.3-70b"
AUTH = {"Authorization": "Bearer sk-bench"}
EIP191_PREFIX = b"\x19Ethereum Signed Message:\n"
RELAY_VERIFIED = b": x-tee-verified true\n\n"


class Rejected(Exception):
    """A completion that did not prove what ``--verify`` asks."""


def _keccak(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def recover_signer(text: str, signature_hex: str) -> str:
    """The address that personal_sign-ed ``text`` (what an app would write by hand)."""
    raw = bytes.fromhex(signature_hex.removeprefix("0x"))
    if len(raw) != 65:
        raise Rejected("signature length")
    v = raw[64]
    recovery_id = v - 27 if v >= 27 else v
    message = text.encode()
    digest = _keccak(EIP191_PREFIX + str(len(message)).encode() + message)
    public_key = coincurve.PublicKey.from_signature_and_message(
        raw[:64] + bytes([recovery_id]), digest, hasher=None)
    return "0x" + _keccak(public_key.format(compressed=False)[1:])[-20:].hex()


class Load:
    """One measurement: the request, the workers, the samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        payload = {"model": args.model, "max_tokens": args.max_tokens,
                   "messages": [{"role": "user", "content": "Say something about enclaves."}]}
        if args.stream:
            payload["stream"] = True
        self.body = json.dumps(payload).encode()
        self.headers = {"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"}
        self.latencies: list[float] = []
        self.ttfb: list[float] = []
        self.errors: Counter[str] = Counter()
        self.completed_in_window = 0
        self.attested: set[str] = set()
        self.session: aiohttp.ClientSession

    async def attested_addresses(self) -> set[str]:
        """The signing addresses the report names (fetched once, as an app would at start)."""
        params = {"model": self.args.model, "nonce": secrets.token_hex(32), "signing_algo": "ecdsa"}
        async with self.session.get(self.args.sim + "/v1/tee/attestation", params=params,
                                    headers=AUTH) as resp:
            report = await resp.json()
        nodes = [report, *(report.get("all_attestations") or [])]
        return {node["signing_address"].lower() for node in nodes}

    async def manual_check(self, chat_id: str, request_sha256: str, response_sha256: str) -> None:
        """Signature fetch and signer recovery, as the manual flow codes it."""
        url = self.args.sim + "/v1/tee/signature/" + chat_id
        params = {"model": self.args.model, "signing_algo": "ecdsa"}
        for _ in range(5):
            async with self.session.get(url, params=params, headers=AUTH) as resp:
                if resp.status == 200:
                    record = await resp.json()
                    break
            await asyncio.sleep(0.01)
        else:
            raise Rejected("signature missing")
        # 2-part "<req>:<resp>" or 3-part "<model>:<req>:<resp>" (spec section 0.1). NanoGPT
        # (and the simulator by default) renames "TEE/x" to the upstream id before the node
        # hashes the request: the signed request hash is then over the body with only that
        # value replaced, which the app recomputes.
        *named, signed_request, signed_response = record["text"].split(":")
        if signed_response != response_sha256:
            raise Rejected("hash mismatch")
        if signed_request != request_sha256:
            renamed = self.body.replace(json.dumps(self.args.model).encode(),
                                        json.dumps(":".join(named)).encode(), 1)
            if not named or signed_request != hashlib.sha256(renamed).hexdigest():
                raise Rejected("hash mismatch")
        if recover_signer(record["text"], record["signature"]) not in self.attested:
            raise Rejected("signer not attested")

    async def one(self) -> float | None:
        """One completion; returns its time to first byte (streams) or None."""
        args = self.args
        started = time.perf_counter()
        first: float | None = None
        manual = args.verify == "manual"
        async with self.session.post(args.url, data=self.body, headers=self.headers) as resp:
            if resp.status != 200:
                await resp.read()
                raise Rejected(f"http_{resp.status}")
            if args.stream:
                hasher = hashlib.sha256() if manual else None
                head = bytearray()
                tail = b""
                async for chunk in resp.content.iter_any():
                    if first is None:
                        first = time.perf_counter() - started
                    if hasher is not None:
                        hasher.update(chunk)
                        if len(head) < 4096 and b"\n\n" not in head:
                            head += chunk
                    tail = (tail + chunk)[-64:]
                if args.verify == "sidecar":
                    if resp.headers.get("x-tee-verified") == "pending":
                        if RELAY_VERIFIED not in tail:
                            raise Rejected("relay_not_verified")
                    elif resp.headers.get("x-tee-verified") != "true":
                        raise Rejected("not_verified")
                elif not tail.endswith(b"data: [DONE]\n\n"):
                    raise Rejected("stream_truncated")
                if hasher is not None:
                    event = bytes(head[:head.index(b"\n\n")])
                    chat_id = json.loads(event.removeprefix(b"data: "))["id"]
                    await self.manual_check(chat_id, hashlib.sha256(self.body).hexdigest(),
                                            hasher.hexdigest())
            else:
                data = await resp.read()
                if args.verify == "sidecar" and resp.headers.get("x-tee-verified") != "true":
                    raise Rejected("not_verified")
                if manual:
                    chat_id = json.loads(data)["id"]
                    await self.manual_check(chat_id, hashlib.sha256(self.body).hexdigest(),
                                            hashlib.sha256(data).hexdigest())
        return first

    async def worker(self, window_start: float, window_end: float, delay: float) -> None:
        """Send requests back to back until the window closes (after ``delay``)."""
        await asyncio.sleep(delay)
        while True:
            started = time.perf_counter()
            if started >= window_end:
                return
            try:
                first = await self.one()
            except (Rejected, aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as exc:
                self.errors[str(exc) if isinstance(exc, Rejected) else type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            finished = time.perf_counter()
            if window_start <= finished <= window_end:
                self.completed_in_window += 1
            if started >= window_start:
                self.latencies.append((finished - started) * 1000)
                if first is not None:
                    self.ttfb.append(first * 1000)

    async def run(self) -> dict[str, object]:
        """Warm up, measure, and return the results."""
        args = self.args
        watched = [int(p) for p in args.watch.split(",") if p] if args.watch else []
        if watched and args.watch_tree:
            watched += [c for pid in list(watched) for c in procstat.children(pid)]
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as self.session:
            if args.verify == "manual":
                self.attested = await self.attested_addresses()
            rss_before = procstat.sample(watched).rss_bytes
            now = time.perf_counter()
            window_start = now + args.warmup
            window_end = window_start + args.duration
            # Staggered starts spread paced streams over their length, so completions do not
            # arrive in waves that a short window would count a whole wave too many or too few.
            workers = [asyncio.create_task(self.worker(
                window_start, window_end, args.stagger * i / args.concurrency))
                for i in range(args.concurrency)]
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            server_0 = procstat.sample(watched)
            client_0 = procstat.cpu_seconds(os.getpid())
            rss_peak = server_0.rss_bytes
            while (left := window_end - time.perf_counter()) > 0:
                await asyncio.sleep(min(args.rss_interval, left))
                rss_peak = max(rss_peak, procstat.sample(watched).rss_bytes)
            server_1 = procstat.sample(watched)
            client_1 = procstat.cpu_seconds(os.getpid())
            await asyncio.gather(*workers)
        return {
            "completed": self.completed_in_window, "window_s": args.duration,
            "throughput": self.completed_in_window / args.duration,
            "latencies_ms": self.latencies, "ttfb_ms": self.ttfb, "errors": dict(self.errors),
            "client_cpu_s": client_1 - client_0, "server_cpu_s": server_1.cpu_seconds - server_0.cpu_seconds,
            "server_rss_before": rss_before, "server_rss_peak": max(rss_peak, server_1.rss_bytes),
            "server_rss_end": server_1.rss_bytes,
        }


def main() -> None:
    """Parse the options, run one measurement, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="full completions URL")
    parser.add_argument("--sim", help="simulator base URL with /api (manual flow)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--api-key", default="sk-bench", help="bearer key for --url")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--verify", choices=("none", "manual", "sidecar"), default="none")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--stagger", type=float, default=0.0,
                        help="spread the workers' first requests over this many seconds")
    parser.add_argument("--max-tokens", type=int, default=15)
    parser.add_argument("--watch", default="", help="comma-separated server pids")
    parser.add_argument("--watch-tree", action="store_true", help="include their descendants")
    parser.add_argument("--rss-interval", type=float, default=0.05)
    args = parser.parse_args()
    result = asyncio.run(Load(args).run())
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
