"""The HTTP surface of each provider profile of spec 0.1, as the providers run it (spec 0.2-0.4).

| profile | completions signed by | text | report |
|---|---|---|---|
| ``nanogpt`` (``/api``) | the model node | 2-part; 3-part over the renamed body with ``rename_model`` | flat (vllm-proxy) |
| ``private-ml-sdk`` (root) | the model node | 2-part | flat |
| ``near-cloud`` | node (``provider_tee``: non-streaming, or streams with ``continuous_usage_stats``) or gateway (``gateway``: other streams) | 3-part / 2-part | ``{gateway_attestation, model_attestations:[one]}`` |
| ``near-direct`` | the node, no ``signature_kind`` | 3-part | flat node entry + ``all_attestations`` |
| ``redpill`` | the ACI gateway's legacy key | 2-part | ACI legacy report (gateway key) |

Every profile shares the simulator's nodes, faults and signature store (``provider.py``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Literal

from aiohttp import hdrs, web
from multidict import CIMultiDict

from sidecar.simulator import answers
from sidecar.simulator.e2ee_node import (
    NodeEncryption,
    NodeEncryptionError,
    decrypt_request_fields,
    encrypt_answer_fields,
    encrypt_chunk,
    parse_encryption_headers,
)
from sidecar.simulator.provider import (
    CANONICAL_MODEL,
    MODEL_ALIAS,
    NANOGPT_UPSTREAM_MODEL,
    PLAIN_MODEL,
    REDPILL_MODEL,
    TEE_MODEL,
    Faults,
    SimulatedProvider,
    SigningNode,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Kind = Literal["chat", "text"]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# NanoGPT replaces exactly the model value in the body it forwards (spec 0.1).
_NANOGPT_MODEL_FIELD = re.compile(rb'("model"\s*:\s*)' + re.escape(json.dumps(TEE_MODEL).encode()))
# The warning NEAR's gateway injects into an aliased answer (spec 0.2).
ALIAS_WARNING = f"Model '{MODEL_ALIAS}' is an alias; resolved to '{CANONICAL_MODEL}'."


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "simulated_error", "param": None, "code": code}}
    return web.json_response(body, status=status)


def _tamper(data: bytes) -> bytes:
    """Alter one byte of the answer text, keeping the JSON well formed, as a man in the middle
    rewriting the answer would: a letter's case in readable text; in sealed (E2EE, hex) content,
    one hex digit for another."""
    position = data.find(b"inference")
    if position >= 0:
        return data[:position] + bytes([data[position] ^ 0x20]) + data[position + 1:]
    sealed = data.find(b'"content":"')
    if sealed >= 0 and len(data) > sealed + 24:
        position = sealed + 24
        digit = b"1" if data[position:position + 1] == b"0" else b"0"
        return data[:position] + digit + data[position + 1:]
    position = len(data) // 2
    return data[:position] + bytes([data[position] ^ 0x20]) + data[position + 1:]


def _sse(chunk: dict[str, Any], dialect: answers.Dialect) -> bytes:
    return b"data: " + answers.serialise(chunk, dialect) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _authorised(provider: SimulatedProvider, handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get(hdrs.AUTHORIZATION, "")
        if not auth.startswith("Bearer ") or (
            provider.api_key is not None and auth != f"Bearer {provider.api_key}"
        ):
            return _error(401, "Invalid API key", "invalid_api_key")
        return await handler(request)
    return wrapped


async def _send_stream(request: web.Request, faults: Faults, events: list[bytes],
                       headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Write ``events`` (already signed as they are) applying the transport faults."""
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "text/event-stream",
                                           hdrs.CACHE_CONTROL: "no-cache", **(headers or {})})
    await response.prepare(request)
    if faults.tamper_response:
        # The answer's text where it is readable; a sealed (E2EE) stream has none, so there one
        # byte in the middle event changes, as a man in the middle without the key would.
        plain = [i for i, e in enumerate(events) if b"inference" in e] or [len(events) // 2]
        events = [_tamper(e) if i in plain else e for i, e in enumerate(events)]
    if faults.cut_stream:
        events = events[: len(events) // 2]
    for event in events:
        if faults.token_delay:
            await asyncio.sleep(faults.token_delay)
        await response.write(event)
    await response.write_eof()
    return response


def _body_response(faults: Faults, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    if faults.tamper_response:
        body = _tamper(body)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _parse(body: bytes, kind: Kind, dialect: answers.Dialect
           ) -> tuple[dict[str, Any], answers.Plan] | web.Response:
    try:
        payload = json.loads(body)
        if not isinstance(payload["model"], str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _error(400, "request body must be JSON with a model", "invalid_request")
    try:
        plan = answers.plan_for(payload, kind, dialect)
    except ValueError as exc:
        return _error(400, str(exc), "invalid_request")
    return payload, plan


async def _read_legacy(request: web.Request, faults: Faults, kind: Kind
                       ) -> tuple[bytes, dict[str, Any], answers.Plan] | web.Response:
    """A legacy-dialect completion request: the body, its JSON and the answer's plan, or the
    error the provider would answer (a simulated failure status, a malformed body)."""
    if faults.completion_status:
        return _error(faults.completion_status, "simulated upstream failure", "simulated")
    body = await request.read()
    parsed = _parse(body, kind, "legacy")
    if isinstance(parsed, web.Response):
        return parsed
    return (body, *parsed)


def _nonce_param(request: web.Request, *, strict: bool) -> tuple[str, bytes] | web.Response:
    """The caller's nonce (or a fresh one). ``strict``: exactly 64 hex, else 400 (NEAR, 0.4)."""
    nonce_hex = request.query.get("nonce") or secrets.token_hex(32)
    if strict and not _HEX64.fullmatch(nonce_hex):
        return _error(400, "nonce must be 64 hex characters (32 bytes)", "invalid_request")
    try:
        nonce = bytes.fromhex(nonce_hex)
    except ValueError:
        return _error(400, "Nonce must be hex-encoded", "invalid_request")
    if len(nonce) != 32:
        return _error(400, "Nonce must be 32 bytes", "invalid_request")
    return nonce_hex, nonce


def _algo_param(request: web.Request, default: str) -> str | web.Response:
    algo = request.query.get("signing_algo", default)
    if algo not in ("ecdsa", "ed25519"):
        return _error(400, "signing_algo must be ecdsa or ed25519", "invalid_request")
    return algo


# -- the 2025 contract: nanogpt and private-ml-sdk ------------------------------------------------

def _legacy_routes(app: web.Application, provider: SimulatedProvider, profile: str,
                   prefix: str) -> None:
    nanogpt = profile == "nanogpt"

    async def models(_: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "simulator"}
                for m in (TEE_MODEL, PLAIN_MODEL)]
        return web.json_response({"object": "list", "data": data})

    def completions(kind: Kind) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            faults = provider.faults
            read = await _read_legacy(request, faults, kind)
            if isinstance(read, web.Response):
                return read
            body, payload, plan = read
            model = payload["model"]
            if model not in (TEE_MODEL, PLAIN_MODEL):
                return _error(404, f"model {model} not found", "model_not_found")
            signed_body, text_model = body, None
            if nanogpt and faults.rename_model and model == TEE_MODEL:
                # NanoGPT forwards the body with exactly the model value replaced; the upstream
                # node hashes those bytes and names its own id in a 3-part text (spec 0.1, 0.2).
                signed_body = _NANOGPT_MODEL_FIELD.sub(
                    lambda m: m.group(1) + json.dumps(NANOGPT_UPSTREAM_MODEL).encode(), body, count=1)
                model = text_model = NANOGPT_UPSTREAM_MODEL
            chat_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
            created = int(time.time())
            if payload.get("stream"):
                include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
                chunks = answers.stream_chunks(plan, "legacy", model, chat_id, created,
                                               include_usage=include_usage)
                events = [_sse(c, "legacy") for c in chunks] + [_DONE]
                # The signature covers the stream as produced; the simulator knows it up front
                # and records it before sending (the sidecar fetches after the last byte).
                provider.record_signature(chat_id, signed_body, b"".join(events), model=text_model)
                return await _send_stream(request, faults, events)
            response_body = answers.serialise(
                answers.completion_object(plan, "legacy", model, chat_id, created), "legacy")
            provider.record_signature(chat_id, signed_body, response_body, model=text_model)
            return _body_response(faults, response_body)
        return handler

    async def attestation(request: web.Request) -> web.Response:
        faults = provider.faults
        if faults.attestation_status:
            return _error(faults.attestation_status, "attestation unavailable", "simulated")
        model = request.query.get("model", "")
        if model != TEE_MODEL:
            return _error(404, f"model {model} has no TEE attestation", "not_found")
        algo = _algo_param(request, "ecdsa")
        if isinstance(algo, web.Response):
            return algo
        nonce = _nonce_param(request, strict=False)
        if isinstance(nonce, web.Response):
            return nonce
        nonce_hex, raw = nonce
        bound_nonce = hashlib.sha256(b"an old nonce").digest() if faults.stale_nonce else raw
        report = provider.evidence(provider.nodes, algo, nonce_hex, bound_nonce, faults)
        if nanogpt and faults.rename_model:
            # The upstream nodes name the model they serve (spec 0.4 ``model_name``).
            for entry in (report, *report.get("all_attestations", ()),
                          *report.get("model_attestations", ())):
                entry["model_name"] = NANOGPT_UPSTREAM_MODEL
        return web.json_response(report)

    attestation_path, signature_path = (
        ("/v1/tee/attestation", "/v1/tee/signature/{chat_id}") if nanogpt
        else ("/v1/attestation/report", "/v1/signature/{chat_id}"))
    app.router.add_get(prefix + "/v1/models", _authorised(provider, models))
    app.router.add_post(prefix + "/v1/chat/completions", _authorised(provider, completions("chat")))
    app.router.add_post(prefix + "/v1/completions", _authorised(provider, completions("text")))
    app.router.add_get(prefix + attestation_path, _authorised(provider, attestation))
    app.router.add_get(prefix + signature_path,
                       _authorised(provider, _signature_handler(provider, "ecdsa")))


def _signature_handler(provider: SimulatedProvider, default_algo: str) -> Handler:
    async def signature(request: web.Request) -> web.StreamResponse:
        faults = provider.faults
        if faults.signature_status:
            return _error(faults.signature_status, "signature service failed", "simulated")
        chat_id = request.match_info["chat_id"]
        if faults.signature_late_polls:
            seen = provider._late_polls.get(chat_id, 0)
            provider._late_polls[chat_id] = seen + 1
            if seen < faults.signature_late_polls:
                return _error(404, "Chat id not found or expired", "not_found")
        algo = _algo_param(request, default_algo)
        if isinstance(algo, web.Response):
            return algo
        if faults.signature_unavailable:
            # Spec 0.3: a final "cannot verify", HTTP 200 without any signature field.
            return web.json_response({"error_code": faults.signature_unavailable,
                                      "message": "signature not available for this completion"})
        record = None if faults.signature_missing else provider.signature(chat_id, algo)
        if record is None:
            return _error(404, "Chat id not found or expired", "not_found")
        return web.json_response(record)
    return signature


# -- NEAR: cloud gateway and direct node ----------------------------------------------------------

def _near_routes(app: web.Application, provider: SimulatedProvider, profile: str,
                 prefix: str) -> None:
    cloud = profile == "near-cloud"
    attestation_handler = _near_attestation(provider, cloud)
    if cloud:  # the key is required since 2026-07 (spec 0.1); direct nodes need none
        attestation_handler = _authorised(provider, attestation_handler)
    app.router.add_get(prefix + "/v1/models", _authorised(provider, _near_models(cloud)))
    app.router.add_post(prefix + "/v1/chat/completions",
                        _authorised(provider, _near_completions(provider, cloud, "chat")))
    app.router.add_post(prefix + "/v1/completions",
                        _authorised(provider, _near_completions(provider, cloud, "text")))
    app.router.add_get(prefix + "/v1/attestation/report", attestation_handler)
    app.router.add_get(prefix + "/v1/signature/{chat_id}",
                       _authorised(provider, _signature_handler(provider, "ecdsa")))


def _near_node_for(provider: SimulatedProvider, request: web.Request,
                   algo: str) -> tuple[int, SigningNode] | web.Response:
    wanted = request.query.get("signing_address")
    if not wanted:
        return 0, provider.nodes[0]
    for index, node in enumerate(provider.nodes):
        if node.address(algo).lower() == wanted.lower():
            return index, node
    return _error(404, f"no node with signing address {wanted}", "not_found")


def _near_models(cloud: bool) -> Handler:
    async def models(_: web.Request) -> web.Response:
        entry = {"id": CANONICAL_MODEL, "object": "model", "created": 1_790_000_000,
                 "owned_by": "simulator"}
        if cloud:
            entry["aliases"] = [MODEL_ALIAS]
        return web.json_response({"object": "list", "data": [entry]})

    return models


def _near_attestation(provider: SimulatedProvider, cloud: bool) -> Handler:
    async def attestation(request: web.Request) -> web.Response:
        faults = provider.faults
        if faults.attestation_status:
            return _error(faults.attestation_status, "attestation unavailable", "simulated")
        # Spec 0.4: NEAR's attestation endpoint defaults to ed25519.
        algo = _algo_param(request, "ed25519")
        if isinstance(algo, web.Response):
            return algo
        nonce = _nonce_param(request, strict=True)
        if isinstance(nonce, web.Response):
            return nonce
        nonce_hex, raw = nonce
        model = request.query.get("model", "")
        if cloud and model == MODEL_ALIAS:
            model = CANONICAL_MODEL
        if model and model != CANONICAL_MODEL:
            return _error(404, f"model {model} has no TEE attestation", "not_found")
        selected = _near_node_for(provider, request, algo)
        if isinstance(selected, web.Response):
            return selected
        index, node = selected
        tls = request.query.get("include_tls_fingerprint", "").lower() == "true"
        entry = provider_evidence(provider).near_model_entry(
            index, node, algo, nonce_hex, raw, faults, model_name=CANONICAL_MODEL, tls=tls)
        if faults.serve_other_public_key:
            # A key the attested address does not own: E2EE to it would hand the prompt over.
            entry = {**entry, "signing_public_key": SigningNode().public_key_hex(algo)}
        if not cloud:
            report = dict(entry)
            report["all_attestations"] = [entry]
            return web.json_response(report)
        gateway = provider_evidence(provider).near_gateway_entry(
            provider.gateway, algo, nonce_hex, raw, faults, tls=tls)
        return web.json_response({"gateway_attestation": gateway,
                                  "model_attestations": [entry] if model else []})

    return attestation


def _near_opened_body(body: bytes,
                      sealed: tuple[NodeEncryption, SigningNode] | None) -> bytes | web.Response:
    """The request as the node reads it: sealed fields opened with its key (spec 0.5); the
    signature still covers the bytes received, ciphertext and all."""
    if sealed is None:
        return body
    try:
        plain = decrypt_request_fields(json.loads(body), _node_key(sealed[1], sealed[0]),
                                       sealed[0].scheme)
    except (ValueError, TypeError, AttributeError) as exc:
        return _error(400, f"failed to decrypt the request: {type(exc).__name__}",
                      "e2ee_decryption_failed")
    return json.dumps(plain).encode()


def _near_completions(provider: SimulatedProvider, cloud: bool, kind: Kind) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        faults = provider.faults
        if faults.completion_status:
            return _error(faults.completion_status, "simulated upstream failure", "simulated")
        body = await request.read()
        if cloud:
            provider.gateway_seen.append(body)
        sealed = _node_encryption(provider, request, kind, strip=cloud and faults.e2ee_strip_headers)
        if isinstance(sealed, web.Response):
            return sealed
        plain_body = _near_opened_body(body, sealed)
        if isinstance(plain_body, web.Response):
            return plain_body
        parsed = _parse(plain_body, kind, "near")
        if isinstance(parsed, web.Response):
            return parsed
        payload, plan = parsed
        if sealed is not None:
            return await _near_sealed_answer(request, provider, cloud, body, payload, plan,
                                             *sealed)
        headers: dict[str, str] = {}
        aliased = False
        if cloud and payload["model"] == MODEL_ALIAS:
            if request.headers.get("x-no-aliasing", "").lower() == "true":
                return _error(400, f"model {MODEL_ALIAS} is an alias; send {CANONICAL_MODEL}",
                              "model_alias_not_allowed")
            aliased = True
            headers["x-model-alias-resolved"] = f"{MODEL_ALIAS} -> {CANONICAL_MODEL}"
        elif payload["model"] != CANONICAL_MODEL:
            return _error(404, f"model {payload['model']} not found", "model_not_found")
        chat_id = uuid.uuid4().hex  # NEAR's ids: 32 hex, no prefix (the real stream)
        if payload.get("stream"):
            return await _near_stream(request, provider, cloud, body, payload, plan, chat_id,
                                      headers)
        return _near_plain(provider, cloud, body, plan, chat_id, headers, aliased)

    return handler


async def _near_stream(request: web.Request, provider: SimulatedProvider, cloud: bool,
                       body: bytes, payload: dict[str, Any], plan: answers.Plan, chat_id: str,
                       headers: dict[str, str]) -> web.StreamResponse:
    options = payload.get("stream_options") or {}
    continuous = options.get("continuous_usage_stats") is True
    chunks = answers.stream_chunks(plan, "near", CANONICAL_MODEL, chat_id, int(time.time()),
                                   include_usage=True, continuous_usage=continuous)
    if cloud and not continuous:
        # Spec 0.2: since 2026-07 a stream is gateway-signed by default; the gateway
        # re-serialises each chunk (its own key order) and signs the 2-part text
        # over the client's bytes and exactly the bytes it sent.
        events = [b"data: " + json.dumps(_gateway_order(c), separators=(",", ":"),
                                         ensure_ascii=False).encode() + b"\n\n"
                  for c in chunks] + [_DONE]
        provider.record_signature(chat_id, body, b"".join(events), signer=provider.gateway,
                                  extra={"signature_kind": "gateway"}, stored_late=True)
    else:
        events = [_sse(c, "near") for c in chunks] + [_DONE]
        provider.record_signature(chat_id, body, b"".join(events), model=CANONICAL_MODEL,
                                  extra=_near_node_extra(cloud), stored_late=cloud)
    if cloud:
        provider.gateway_seen.append(b"".join(events))
    return await _send_stream(request, provider.faults, events, headers)


def _near_node_extra(cloud: bool) -> dict[str, Any]:
    return {"signature_kind": "provider_tee"} if cloud else {}


def _near_plain(provider: SimulatedProvider, cloud: bool, body: bytes, plan: answers.Plan,
                chat_id: str, headers: dict[str, str], aliased: bool) -> web.Response:
    node_body = answers.serialise(
        answers.completion_object(plan, "near", CANONICAL_MODEL, chat_id, int(time.time())),
        "near")
    # The node signs the client's body hash (the gateway passes X-Request-Hash) and its
    # own answer bytes (spec 0.2 provider_tee).
    provider.record_signature(chat_id, body, node_body, model=CANONICAL_MODEL,
                              extra=_near_node_extra(cloud), stored_late=cloud)
    client_body = node_body
    if aliased:
        # The gateway injects a warning: the node's signature no longer covers these bytes.
        answer = json.loads(node_body)
        answer["warning"] = ALIAS_WARNING
        client_body = answers.serialise(answer, "near")
    if cloud:
        provider.gateway_seen.append(client_body)
    return _body_response(provider.faults, client_body, headers)


_E2EE_HEADERS = ("x-signing-algo", "x-client-pub-key", "x-model-pub-key", "x-encryption-version",
                 "x-encrypt-all-fields")


def _node_key(node: SigningNode, encryption: NodeEncryption) -> Any:
    return node.ed25519 if encryption.scheme == "ed25519" else node.ecdsa


def _node_encryption(provider: SimulatedProvider, request: web.Request, kind: Kind, *,
                     strip: bool) -> tuple[NodeEncryption, SigningNode] | None | web.Response:
    """The E2EE context of a request and the node it is sealed to (routed by
    ``x-model-pub-key``, spec 0.5), ``None`` for plaintext, or the 400 the node answers.
    ``strip``: the gateway dropped the E2EE headers on the way (a downgrade)."""
    headers: CIMultiDict[str] = CIMultiDict(request.headers)
    if strip:
        for name in _E2EE_HEADERS:
            headers.popall(name, None)
    try:
        encryption = parse_encryption_headers(headers)
    except NodeEncryptionError as exc:
        return _error(400, str(exc), "e2ee_invalid_headers")
    if encryption is None:
        return None
    if kind != "chat" or encryption.version != 2 and encryption.scheme == "ed25519":
        return _error(400, "E2EE: chat completions with encryption version 2 only (simulated)",
                      "e2ee_unsupported")
    wanted = (headers.get("x-model-pub-key") or "").lower()
    for node in provider.nodes:
        if node.public_key_hex(encryption.scheme).lower() == wanted:
            return encryption, node
    return _error(400, "x-model-pub-key names no model node of this gateway",
                  "e2ee_unknown_model_key")


def _tamper_sealed(objs: list[dict[str, Any]], member: str) -> list[dict[str, Any]]:
    """The first sealed ``content`` with one hex digit changed (still lower-case hex, so only
    the tag check can tell), as a gateway editing ciphertext would."""
    out: list[dict[str, Any]] = json.loads(json.dumps(objs))
    for obj in out:
        for choice in obj.get("choices") or []:
            message = choice.get(member) or {}
            content = message.get("content")
            if isinstance(content, str) and content:
                middle = len(content) // 2
                digit = "1" if content[middle] == "0" else "0"
                message["content"] = content[:middle] + digit + content[middle + 1:]
                return out
    return out


async def _near_sealed_answer(request: web.Request, provider: SimulatedProvider, cloud: bool,
                              body: bytes, payload: dict[str, Any], plan: answers.Plan,
                              encryption: NodeEncryption, node: SigningNode
                              ) -> web.StreamResponse:
    """The node's answer to an E2EE request: every answer field sealed to the client key it
    saw, signed by that node over its own bytes (E2EE streams stay provider_tee, spec 0.5),
    with the gateway's misbehaviours of ``Faults`` applied on the way back."""
    faults = provider.faults
    scheme = encryption.scheme
    client_key: str | bytes = encryption.client_public_key
    swap = cloud and faults.e2ee_swap_client_key
    if swap:  # the gateway put its own key in x-client-pub-key
        client_key = provider.gateway.public_key_hex(scheme)
    chat_id = uuid.uuid4().hex
    created = int(time.time())
    stream = bool(payload.get("stream"))
    if stream:
        options = payload.get("stream_options") or {}
        plain = answers.stream_chunks(plan, "near", CANONICAL_MODEL, chat_id, created,
                                      include_usage=True,
                                      continuous_usage=options.get("continuous_usage_stats") is True)
        seal = encrypt_chunk
    else:
        plain = [answers.completion_object(plan, "near", CANONICAL_MODEL, chat_id, created)]
        seal = encrypt_answer_fields
    node_objs = [seal(obj, client_key, scheme) for obj in plain]
    # With its own key swapped in the gateway reads each field and re-seals it to the client.
    client_objs = ([seal(obj, encryption.client_public_key, scheme) for obj in plain]
                   if swap else node_objs)
    if cloud and faults.e2ee_tamper_field:
        client_objs = _tamper_sealed(client_objs, "delta" if stream else "message")

    def wire(objs: list[dict[str, Any]]) -> bytes:
        if stream:
            return b"".join([_sse(obj, "near") for obj in objs] + [_DONE])
        return answers.serialise(objs[0], "near")

    node_bytes, client_bytes = wire(node_objs), wire(client_objs)
    if cloud and faults.e2ee_gateway_signs:
        provider.record_signature(chat_id, body, client_bytes, signer=provider.gateway,
                                  extra={"signature_kind": "gateway"}, stored_late=True)
    else:
        provider.record_signature(chat_id, body, node_bytes, model=CANONICAL_MODEL, signer=node,
                                  extra={"signature_kind": "provider_tee"} if cloud else {},
                                  stored_late=cloud)
    if cloud:
        provider.gateway_seen.append(client_bytes)
    if stream:
        events = [_sse(obj, "near") for obj in client_objs] + [_DONE]
        return await _send_stream(request, faults, events)
    return _body_response(faults, client_bytes)


def _gateway_order(chunk: dict[str, Any]) -> dict[str, Any]:
    order = ("id", "object", "created", "model", "choices", "usage")
    return {key: chunk[key] for key in order if key in chunk}


# -- RedPill / Phala ACI through its legacy endpoints ---------------------------------------------

def _redpill_routes(app: web.Application, provider: SimulatedProvider, prefix: str) -> None:

    async def models(_: web.Request) -> web.Response:
        entry = {"id": REDPILL_MODEL, "object": "model", "created": 1_790_000_000,
                 "owned_by": "phala"}
        return web.json_response({"object": "list", "data": [entry]})

    async def attestation(request: web.Request) -> web.Response:
        faults = provider.faults
        if faults.attestation_status:
            return _error(faults.attestation_status, "attestation unavailable", "simulated")
        algo = _algo_param(request, "ecdsa")
        if isinstance(algo, web.Response):
            return algo
        version = request.query.get("version", "1")
        if version not in ("1", "2"):
            return _error(400, "version must be 1 or 2", "invalid_request")
        nonce_hex = request.query.get("nonce") or secrets.token_hex(32)
        if not _HEX64.fullmatch(nonce_hex):
            # Spec 0.1: a nonce that is not 64 hex is replaced by its sha256.
            nonce_hex = hashlib.sha256(nonce_hex.encode()).hexdigest()
        model = request.query.get("model", "")
        if model and model != REDPILL_MODEL:
            return _error(404, f"model {model} not found", "not_found")
        # ``signing_address`` is ignored (spec 0.1): the report is always the gateway's.
        report = provider_evidence(provider).redpill_report(
            provider.aci_gateway, algo, nonce_hex, bytes.fromhex(nonce_hex), faults,
            version=int(version))
        return web.json_response(report)

    def completions(kind: Kind) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            faults = provider.faults
            read = await _read_legacy(request, faults, kind)
            if isinstance(read, web.Response):
                return read
            body, payload, plan = read
            if payload["model"] != REDPILL_MODEL:
                return _error(404, f"model {payload['model']} not found", "model_not_found")
            chat_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
            receipt_id = uuid.uuid4().hex
            created = int(time.time())
            headers = {"X-Receipt-Id": receipt_id}
            if payload.get("stream"):
                include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
                chunks = answers.stream_chunks(plan, "legacy", REDPILL_MODEL, chat_id, created,
                                               include_usage=include_usage)
                response_body = b"".join([_sse(c, "legacy") for c in chunks] + [_DONE])
            else:
                response_body = answers.serialise(
                    answers.completion_object(plan, "legacy", REDPILL_MODEL, chat_id, created),
                    "legacy")
            receipt = {"api_version": "aci/1", "receipt_id": receipt_id, "chat_id": chat_id,
                       "model": REDPILL_MODEL,
                       "request_sha256": hashlib.sha256(body).hexdigest(),
                       "response_sha256": hashlib.sha256(response_body).hexdigest(),
                       "created": created}
            # Spec 0.1: 2-part text over the bytes received and returned, by the gateway's key.
            provider.record_signature(chat_id, body, response_body, signer=provider.aci_gateway,
                                      extra={"api_version": "aci/1", "receipt": receipt},
                                      aliases=(receipt_id,))
            if payload.get("stream"):
                events = [e + b"\n\n" for e in response_body.split(b"\n\n") if e]
                return await _send_stream(request, faults, events, headers)
            return _body_response(faults, response_body, headers)
        return handler

    app.router.add_get(prefix + "/v1/models", _authorised(provider, models))
    app.router.add_post(prefix + "/v1/chat/completions", _authorised(provider, completions("chat")))
    app.router.add_post(prefix + "/v1/completions", _authorised(provider, completions("text")))
    app.router.add_get(prefix + "/v1/attestation/report", _authorised(provider, attestation))
    app.router.add_get(prefix + "/v1/signature/{chat_id}",
                       _authorised(provider, _signature_handler(provider, "ecdsa")))


def provider_evidence(provider: SimulatedProvider) -> Any:
    """The provider's evidence factory, which must be a ``SimulatedEvidence`` for the NEAR and
    RedPill shapes (typed ``Any`` here to keep ``provider.py`` free of the import cycle).

    Raises:
        TypeError: the factory is something else (a test's stub).
    """
    from sidecar.simulator.evidence import SimulatedEvidence

    if not isinstance(provider.evidence, SimulatedEvidence):
        raise TypeError("NEAR and RedPill profiles need SimulatedEvidence")
    return provider.evidence


def add_profile_routes(app: web.Application, provider: SimulatedProvider, profile: str,
                       prefix: str) -> None:
    """Serve ``profile``'s endpoints under ``prefix``.

    Raises:
        ValueError: an unknown profile.
    """
    if profile in ("nanogpt", "private-ml-sdk"):
        _legacy_routes(app, provider, profile, prefix)
    elif profile in ("near-cloud", "near-direct"):
        _near_routes(app, provider, profile, prefix)
    elif profile == "redpill":
        _redpill_routes(app, provider, prefix)
    else:
        raise ValueError(f"unknown profile {profile!r}")


def add_control_routes(app: web.Application, provider: SimulatedProvider) -> None:
    """``POST /_simulator/faults`` (unknown knobs refused), ``GET /_simulator/stats`` and
    ``GET /_simulator/gateway`` (what NEAR's cloud gateway relayed, base64, oldest first: so
    another process, ``make demo``, can show it only ever held ciphertext under E2EE).

    Raises:
        Nothing.
    """
    async def set_faults(request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            provider.faults.reset()
            for key, value in changes.items():
                if key not in Faults.__dataclass_fields__:
                    raise KeyError(key)
                setattr(provider.faults, key, value)
            provider.faults.validate()
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            provider.faults.reset()
            return _error(400, f"bad fault: {exc}", "invalid_request")
        return web.json_response(asdict(provider.faults))

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"completions_served": provider.completions_served})

    app.router.add_post("/_simulator/faults", set_faults)
    async def gateway(_: web.Request) -> web.Response:
        return web.json_response(
            {"seen": [base64.b64encode(blob).decode("ascii") for blob in provider.gateway_seen]})

    app.router.add_get("/_simulator/stats", stats)
    app.router.add_get("/_simulator/gateway", gateway)
