"""A simulated TEE provider that speaks the NanoGPT and private-ml-sdk contracts exactly (spec 1-3).

It hashes the raw request bytes it receives and the raw response bytes it sends (the whole SSE
stream through ``data: [DONE]``), signs ``"<req sha256>:<resp sha256>"`` with EIP-191 under a
secp256k1 key it generates (or ed25519 on request), keeps signatures in a TTL cache, and answers
attestation requests with real-format evidence bound to the caller's nonce (``evidence.py``).

``Faults`` breaks exactly one thing at a time, for tests and the soak run; it can be set over
HTTP at ``POST /_simulator/faults`` from another process, and ``GET /_simulator/stats`` counts
the completions served (each is counted, and signed, as its response starts).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import coincurve
from aiohttp import hdrs, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sidecar.verify.signature import address_of_public_key, eip191_digest

TEE_MODEL = "TEE/simulated-llama-3.3-70b"
PLAIN_MODEL = "simulated/no-tee-model"
SIGNATURE_TTL_SECONDS = 300.0
MAX_CACHED_SIGNATURES = 50_000


# Knobs of ``Faults.evidence``, read by ``evidence.SimulatedEvidence``.
EVIDENCE_KNOBS = frozenset({
    "shape",  # "flat" (default) or "near"
    "swap_compose_hash_payload",  # a compose-hash payload swapped under its genuine digest
    "break_replay",  # an event the quoted RTMR3 does not include
    "wrong_compose",  # info serves a compose other than the one measured
    "gpu_nonce",  # nvidia_payload.nonce other than the caller's
    "no_gpu",  # no nvidia_payload at all
    "json_address",  # the JSON names another signing address than REPORTDATA binds
    "mrtd",  # hex MRTD to embed instead of the default
    # Another deployment (tests of deployment pinning): the measured app-compose string (its own
    # images), the os-image-hash payload (hex), the key-provider event's object.
    "app_compose", "os_image_hash", "key_provider",
})


@dataclass
class Faults:
    """One misbehaviour at a time (all off by default). Tests set a field, then ``reset``."""

    tamper_response: bool = False  # flip a byte of the body after it was hashed and signed
    alter_request: bool = False  # sign the hash of a request other than the one received
    sign_with_other_key: bool = False  # a valid signature, but by an unattested key
    replay_signature: bool = False  # answer with the previous completion's signature record
    signature_missing: bool = False  # the signature endpoint answers 404 for everything
    signature_status: int = 0  # when non-zero, the signature endpoint answers this status
    signature_late_polls: int = 0  # the first N signature fetches answer 404 (written late)
    wrong_text_hashes: bool = False  # sign a text whose hashes cover nothing that was sent
    report_binds_other_address: bool = False  # report_data binds a key the JSON does not name
    stale_nonce: bool = False  # report_data binds an old nonce instead of the caller's
    cut_stream: bool = False  # stop a stream before ``data: [DONE]``
    completion_status: int = 0  # when non-zero, completions answer this status (401, 429, 500)
    attestation_status: int = 0  # when non-zero, the attestation endpoint answers this status
    rotate_key: bool = False  # sign with a fresh key that only a new attestation reveals
    token_delay: float = 0.0  # seconds between streamed tokens
    evidence: dict[str, Any] = field(default_factory=dict)  # knobs passed to the evidence factory

    def reset(self) -> None:
        """Turn every fault off."""
        fresh = Faults()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


@dataclass
class SigningNode:
    """One serving node's signing keys."""

    ecdsa: coincurve.PrivateKey = field(default_factory=coincurve.PrivateKey)
    ed25519: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def address(self, algo: str) -> str:
        """The signing identifier the node publishes for ``algo``."""
        if algo == "ed25519":
            return self.ed25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        return _checksum_address(address_of_public_key(self.ecdsa.public_key))

    def sign(self, text: str, algo: str) -> str:
        """Sign ``text`` as the contract says (EIP-191 for ecdsa, raw ed25519 otherwise)."""
        if algo == "ed25519":
            return self.ed25519.sign(text.encode()).hex()
        raw = self.ecdsa.sign_recoverable(eip191_digest(text.encode()), hasher=None)
        return "0x" + raw[:64].hex() + format(raw[64] + 27, "02x")


def _checksum_address(address: str) -> str:
    # EIP-55, so the simulator publishes addresses the way real servers do.
    from sidecar.verify.signature import keccak256

    hexpart = address.removeprefix("0x")
    digest = keccak256(hexpart.encode()).hex()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(hexpart, digest))


EvidenceFactory = Callable[[list["SigningNode"], str, str, bytes, "Faults"], dict[str, Any]]
"""(nodes, algo, nonce_hex, report_data_nonce, faults) -> attestation report JSON object."""


class SimulatedProvider:
    """State of the simulator: nodes, signatures, faults and the evidence factory."""

    def __init__(self, *, evidence: EvidenceFactory, node_count: int = 1,
                 api_key: str | None = None) -> None:
        self.nodes = [SigningNode() for _ in range(node_count)]
        self.faults = Faults()
        self.api_key = api_key
        self.evidence = evidence
        # chat id -> (expiry, {algo: signature record})
        self._signatures: OrderedDict[str, tuple[float, dict[str, dict[str, str]]]] = OrderedDict()
        self._last_record: dict[str, str] | None = None
        self._late_polls: dict[str, int] = {}
        self._rotated: SigningNode | None = None
        self.completions_served = 0

    # -- signing -------------------------------------------------------------------------

    def _signer(self) -> SigningNode:
        if self.faults.rotate_key:
            if self._rotated is None:
                self._rotated = SigningNode()
                self.nodes.append(self._rotated)
            return self._rotated
        return self.nodes[self.completions_served % len(self.nodes)]

    def record_signature(self, chat_id: str, request_body: bytes, response_body: bytes) -> None:
        """Sign and cache the record for a finished completion (as vllm-proxy does)."""
        faults = self.faults
        request_hash = hashlib.sha256(request_body + (b" " if faults.alter_request else b"")).hexdigest()
        response_hash = hashlib.sha256(response_body).hexdigest()
        if faults.wrong_text_hashes:
            request_hash, response_hash = response_hash, request_hash
        text = f"{request_hash}:{response_hash}"
        records: dict[str, dict[str, str]] = {}
        for algo in ("ecdsa", "ed25519"):
            node = SigningNode() if faults.sign_with_other_key else self._signer()
            records[algo] = {
                "text": text,
                "signature": node.sign(text, algo),
                "signing_address": node.address(algo),
                "signing_algo": algo,
            }
        self.completions_served += 1
        self._signatures[chat_id] = (time.monotonic() + SIGNATURE_TTL_SECONDS, records)
        while len(self._signatures) > MAX_CACHED_SIGNATURES:
            self._signatures.popitem(last=False)

    def signature(self, chat_id: str, algo: str) -> dict[str, str] | None:
        """The cached record, honouring TTL and the signature faults."""
        entry = self._signatures.get(chat_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        record = entry[1][algo]
        if self.faults.replay_signature and self._last_record is not None:
            previous = self._last_record
            self._last_record = record
            return previous
        self._last_record = record
        return record


# -- deterministic completions ----------------------------------------------------------------

_WORDS = ("Confidential", " inference", " runs", " inside", " an", " attested", " enclave,",
          " and", " every", " answer", " is", " signed", " by", " its", " key.")


def completion_tokens(max_tokens: int | None) -> list[str]:
    """Deterministic tokens: the same request always gets the same text (``max_tokens`` cuts it)."""
    count = len(_WORDS) if max_tokens is None else max(1, min(max_tokens, len(_WORDS)))
    return list(_WORDS[:count])


def _completion_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def build_simulator_app(provider: SimulatedProvider) -> web.Application:
    """The aiohttp app: NanoGPT paths under ``/api``, private-ml-sdk paths at the root."""
    app = web.Application(client_max_size=8 << 20)

    def authorised(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get(hdrs.AUTHORIZATION, "")
            if not auth.startswith("Bearer ") or (
                provider.api_key is not None and auth != f"Bearer {provider.api_key}"
            ):
                return _error(401, "Invalid API key", "invalid_api_key")
            return await handler(request)
        return wrapped

    async def models(_: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "simulator"}
                for m in (TEE_MODEL, PLAIN_MODEL)]
        return web.json_response({"object": "list", "data": data})

    def completions(kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            faults = provider.faults
            if faults.completion_status:
                return _error(faults.completion_status, "simulated upstream failure", "simulated")
            body = await request.read()
            try:
                payload = json.loads(body)
                model = payload["model"]
            except (ValueError, KeyError, TypeError):
                return _error(400, "request body must be JSON with a model", "invalid_request")
            if model not in (TEE_MODEL, PLAIN_MODEL):
                return _error(404, f"model {model} not found", "model_not_found")
            max_tokens = payload.get("max_tokens")
            tokens = completion_tokens(max_tokens if isinstance(max_tokens, int) else None)
            chat_id = _completion_id(kind)
            if payload.get("stream"):
                include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
                return await _stream(request, provider, kind, model, chat_id, body, tokens, include_usage)
            response_body = json.dumps(_completion_object(kind, model, chat_id, tokens)).encode()
            provider.record_signature(chat_id, body, response_body)
            if faults.tamper_response:
                response_body = _tamper(response_body)
            return web.Response(body=response_body, content_type="application/json")
        return handler

    async def attestation(request: web.Request) -> web.Response:
        faults = provider.faults
        if faults.attestation_status:
            return _error(faults.attestation_status, "attestation unavailable", "simulated")
        model = request.query.get("model", "")
        if model != TEE_MODEL:
            return _error(404, f"model {model} has no TEE attestation", "not_found")
        algo = request.query.get("signing_algo", "ecdsa")
        if algo not in ("ecdsa", "ed25519"):
            return _error(400, "signing_algo must be ecdsa or ed25519", "invalid_request")
        nonce_hex = request.query.get("nonce") or secrets.token_hex(32)
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            return _error(400, "Nonce must be hex-encoded", "invalid_request")
        if len(nonce) != 32:
            return _error(400, "Nonce must be 32 bytes", "invalid_request")
        bound_nonce = hashlib.sha256(b"an old nonce").digest() if faults.stale_nonce else nonce
        report = provider.evidence(provider.nodes, algo, nonce_hex, bound_nonce, faults)
        return web.json_response(report)

    async def signature(request: web.Request) -> web.Response:
        faults = provider.faults
        if faults.signature_status:
            return _error(faults.signature_status, "signature service failed", "simulated")
        chat_id = request.match_info["chat_id"]
        if faults.signature_late_polls:
            seen = provider._late_polls.get(chat_id, 0)
            provider._late_polls[chat_id] = seen + 1
            if seen < faults.signature_late_polls:
                return _error(404, "Chat id not found or expired", "not_found")
        algo = request.query.get("signing_algo", "ecdsa")
        record = None if faults.signature_missing else provider.signature(chat_id, algo)
        if record is None:
            return _error(404, "Chat id not found or expired", "not_found")
        return web.json_response(record)

    async def set_faults(request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            provider.faults.reset()
            for key, value in changes.items():
                if key not in Faults.__dataclass_fields__:
                    raise KeyError(key)
                if key == "evidence" and set(value) - EVIDENCE_KNOBS:
                    raise KeyError(f"evidence knobs {sorted(set(value) - EVIDENCE_KNOBS)}")
                setattr(provider.faults, key, value)
        except (ValueError, KeyError, AttributeError) as exc:
            return _error(400, f"bad fault: {exc}", "invalid_request")
        return web.json_response(asdict(provider.faults))

    for prefix, attestation_path, signature_path in (
        ("/api", "/v1/tee/attestation", "/v1/tee/signature/{chat_id}"),
        ("", "/v1/attestation/report", "/v1/signature/{chat_id}"),
    ):
        app.router.add_get(prefix + "/v1/models", authorised(models))
        app.router.add_post(prefix + "/v1/chat/completions", authorised(completions("chat")))
        app.router.add_post(prefix + "/v1/completions", authorised(completions("text")))
        app.router.add_get(prefix + attestation_path, authorised(attestation))
        app.router.add_get(prefix + signature_path, authorised(signature))
    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"completions_served": provider.completions_served})

    app.router.add_post("/_simulator/faults", set_faults)
    app.router.add_get("/_simulator/stats", stats)
    return app


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "simulated_error", "param": None, "code": code}}
    return web.json_response(body, status=status)


def _tamper(data: bytes) -> bytes:
    """Alter one byte of the answer text (a letter's case), keeping the JSON well formed, as a
    man in the middle rewriting the answer would."""
    position = data.find(b"inference")
    if position < 0:
        position = len(data) // 2
    return data[:position] + bytes([data[position] ^ 0x20]) + data[position + 1:]


def _completion_object(kind: str, model: str, chat_id: str, tokens: list[str]) -> dict[str, Any]:
    text = "".join(tokens)
    usage = {"prompt_tokens": 12, "completion_tokens": len(tokens), "total_tokens": 12 + len(tokens)}
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": "stop"}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        obj = "text_completion"
    return {"id": chat_id, "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage}


def _chunk(kind: str, model: str, chat_id: str, created: int, content: str | None,
           finish: str | None, *, first: bool = False) -> dict[str, Any]:
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
            {"content": content} if content is not None else {})
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": chat_id, "object": obj, "created": created, "model": model, "choices": [choice]}


async def _stream(request: web.Request, provider: SimulatedProvider, kind: str, model: str,
                  chat_id: str, request_body: bytes, tokens: list[str],
                  include_usage: bool) -> web.StreamResponse:
    faults = provider.faults
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "text/event-stream",
                                           hdrs.CACHE_CONTROL: "no-cache"})
    await response.prepare(request)
    created = int(time.time())
    events: list[bytes] = []
    chunks = []
    if kind == "chat":
        chunks.append(_chunk(kind, model, chat_id, created, None, None, first=True))
    chunks += [_chunk(kind, model, chat_id, created, token, None) for token in tokens]
    chunks.append(_chunk(kind, model, chat_id, created, None, "stop"))
    if include_usage:
        usage_chunk = _chunk(kind, model, chat_id, created, None, None)
        usage_chunk["choices"] = []
        usage_chunk["usage"] = {"prompt_tokens": 12, "completion_tokens": len(tokens),
                                "total_tokens": 12 + len(tokens)}
        chunks.append(usage_chunk)
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks]
    events.append(b"data: [DONE]\n\n")
    # The signature covers the stream as produced. The simulator knows the whole stream up front
    # and records it before sending (vllm-proxy writes it when the stream finishes; the sidecar
    # fetches it only after the last byte either way).
    provider.record_signature(chat_id, request_body, b"".join(events))
    if faults.tamper_response:
        events = [_tamper(e) if b"inference" in e else e for e in events]
    if faults.cut_stream:
        events = events[: len(events) // 2]
    for event in events:
        if faults.token_delay:
            await asyncio.sleep(faults.token_delay)
        await response.write(event)
    await response.write_eof()
    return response
