"""The aiohttp application an unchanged OpenAI app talks to.

Request flow for ``POST /v1/chat/completions`` and ``POST /v1/completions``:

  (1) read the app's body (bounded) and its ``model``; the app's Authorization is dropped;
  (2) the model must be attested (cached per session): in enforce mode an unattested model is
      refused *before* the prompt leaves the machine;
  (3) forward the exact bytes; hash them as sent;
  (4) hash the exact response bytes as received (the whole SSE stream for streams) and take the
      completion id;
  (5) fetch and verify the signature (``verdict.CompletionVerifier``);
  (6) deliver according to the mode: enforce blocks with a 502 OpenAI error, flag and monitor
      deliver with ``x-tee-*`` headers. Streams are held until verified (``buffer``) or relayed
      with the verdict closing the stream (``relay``).

End-to-end encryption (docs/e2ee.md, spec 0.5), where the profile and the ``e2ee`` setting
ask for it: after (2) the request fields are sealed to the attested model node's bound
``signing_public_key`` and (3) sends, hashes and has signed those encrypted bytes; (4)-(5)
hash and verify the encrypted answer as received, accepting only that node's own signature;
the answer fields are opened for the app just before delivery (relay: each event before it is
re-emitted). An answer field that does not open is never delivered, in any mode: neither
ciphertext nor injected plaintext is an answer. ``x-tee-e2ee`` says on every answer whether
the exchange was encrypted (``true``), sent in plaintext (``false``) or could not be
(``unavailable``: the profile has no E2EE).

Upstream errors that carry no completion (status >= 400: 401, 429, 5xx) reach the app with
their status, a body rebuilt from the upstream's error message, and ``x-tee-verified: false``;
any other status but 200 is refused (``upstream.unexpected_status``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import hdrs, web

from sidecar import e2ee
from sidecar.config import LimitsSettings, Mode, Settings, StreamMode
from sidecar.errors import (
    AttestationUnavailable,
    BadRequest,
    NotFound,
    SidecarError,
    TooManyRequests,
    UpstreamError,
    VerificationFailed,
    openai_error_body,
)
from sidecar.pins import IdentityGate
from sidecar.proxy.attester import AttestationCache, CachedAttestation
from sidecar.proxy.local_origin import LocalCallerPolicy, check_json_content_type, cors_headers
from sidecar.proxy.fetch import read_completion, read_error_body, stream_timeout_error
from sidecar.proxy.upstream import UpstreamClient
from sidecar.receipts import ReceiptLog, ReceiptLogError, RecentChatIds
from sidecar.telemetry import Telemetry
from sidecar.proxy.verdict import (
    HEADER_E2EE,
    HEADER_FAILURE,
    HEADER_REQUEST_BINDING,
    HEADER_REQUEST_ID,
    HEADER_SHOULD_RETRY,
    HEADER_VERIFIED,
    CompletionVerdict,
    CompletionVerifier,
)
from sidecar.verify.policy import PolicySet
from sidecar.verify.signature import top_level_model_span
from sidecar.verify.sse import SseEvent, SseFramer, chat_id_of

log = structlog.get_logger("tee_sidecar.proxy")

# Request and response size, header size, stream duration and per-client concurrency bounds are
# settings (``[limits]`` in sidecar.config). Upstream error bodies are short JSON; anything
# longer is cut.
MAX_ERROR_BODY_BYTES = 64 << 10

VERIFIED_COMMENT = b": x-tee-verified true\n\n"
# The relay's own end of stream, written only after the verdict.
DONE_EVENT = b"data: [DONE]\n\n"
# An upstream error message passed on to the app is cut to this length.
MAX_UPSTREAM_MESSAGE = 512
# The only upstream headers an app ever sees, each with the exact shape it must have (anything
# else is dropped): a value the sidecar cannot re-send made the response fail after the error
# middleware, leaving the app without an answer (issue 11, finding 8). Retry-After is
# delay-seconds or an IMF-fixdate (RFC 9110 sections 10.2.3, 5.6.7); retry-after-ms is what the
# openai SDK reads first (openai/_base_client.py ``_parse_retry_after_header``).
PASSED_ON_HEADERS: dict[str, re.Pattern[str]] = {
    hdrs.RETRY_AFTER: re.compile(
        r"\d{1,9}|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep"
        r"|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT", re.ASCII),
    "retry-after-ms": re.compile(r"\d{1,9}(?:\.\d{1,3})?", re.ASCII),
}


@dataclass
class ProxyState:
    """Everything the handlers share, built once in the app's cleanup context."""

    settings: Settings
    upstream: UpstreamClient
    cache: AttestationCache
    verifier: CompletionVerifier
    policies: PolicySet
    telemetry: Telemetry
    receipts: ReceiptLog | None
    identity: IdentityGate | None = None  # deployment pins (sidecar.pins), for the status page
    # Verified completion ids per model (restored from the receipts on start): a repeat is a
    # whole-completion replay.
    chat_ids: RecentChatIds = dataclasses.field(default_factory=RecentChatIds)
    # This process's E2EE client key pairs (in memory only), rotated after
    # ``upstream.e2ee_key_max_age`` seconds; None: made from the settings.
    e2ee_ring: e2ee.ClientKeyRing | None = None

    def __post_init__(self) -> None:
        if self.e2ee_ring is None:
            self.e2ee_ring = e2ee.ClientKeyRing(self.settings.upstream.e2ee_key_max_age)


STATE: web.AppKey[ProxyState] = web.AppKey("state", ProxyState)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
MODEL: web.RequestKey[str] = web.RequestKey("model", str)
VERDICT: web.RequestKey[CompletionVerdict] = web.RequestKey("verdict", CompletionVerdict)
E2EE_STATUS: web.RequestKey[str] = web.RequestKey("e2ee_status", str)
IN_FLIGHT: web.AppKey[dict[str, int]] = web.AppKey("in_flight", dict)
CALLERS: web.AppKey[LocalCallerPolicy] = web.AppKey("callers", LocalCallerPolicy)
StateFactory = Callable[[web.Application, aiohttp.ClientSession], Awaitable[ProxyState]]


def build_proxy_app(settings: Settings, make_state: StateFactory,
                    make_session: Callable[[], aiohttp.ClientSession]) -> web.Application:
    """The proxy application; ``make_state`` wires upstream, attestation and policy.

    The single ``aiohttp.ClientSession`` (from ``make_session``) lives in the app's cleanup
    context.
    """
    limits = settings.limits
    app = web.Application(client_max_size=limits.max_request_bytes,
                          middlewares=[_errors_and_logs, _local_callers_only,
                                       _per_client_concurrency],
                          handler_args={"max_field_size": limits.max_header_bytes,
                                        "max_line_size": limits.max_header_bytes})
    app[IN_FLIGHT] = {}
    app[CALLERS] = LocalCallerPolicy.for_listener(settings.listen.host,
                                                  settings.listen.allowed_hosts,
                                                  settings.listen.allowed_origins)
    app.on_response_prepare.append(_cors_for_configured_origins)
    app.on_response_prepare.append(_e2ee_header)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with make_session() as session:
            state = app[STATE] = await make_state(app, session)
            yield
            if state.receipts is not None:
                await state.receipts.aclose()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", _completion_handler("/v1/chat/completions"))
    app.router.add_post("/v1/completions", _completion_handler("/v1/completions"))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model_id:.+}", _model)
    return app


def _error_response(error: SidecarError, request_id: str) -> web.Response:
    # Only a local concurrency limit is worth retrying; a failed verification is not.
    headers = {HEADER_VERIFIED: "false", HEADER_FAILURE: error.code,
               HEADER_REQUEST_ID: request_id,
               HEADER_SHOULD_RETRY: "true" if error.http_status == 429 else "false"}
    return web.json_response(openai_error_body(error), status=error.http_status, headers=headers)


@web.middleware
async def _errors_and_logs(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """One log line per request; every error leaves as an OpenAI-shaped body, never a trace."""
    request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
    except SidecarError as exc:
        response = _error_response(exc, request_id)
    except web.HTTPException as exc:
        error: SidecarError
        if exc.status == 404:
            error = NotFound(f"{request.method} {request.path} is not served by tee-sidecar")
        elif exc.status == 413:
            limit = request.app[STATE].settings.limits.max_request_bytes
            error = BadRequest(f"request body exceeds limits.max_request_bytes ({limit})",
                               code="limits.request_too_large", http_status=413)
        else:
            error = BadRequest(exc.reason, code=f"request.http_{exc.status}",
                               http_status=exc.status)
        response = _error_response(error, request_id)
    except Exception:
        log.exception("internal_error")
        response = _error_response(SidecarError("internal error in tee-sidecar",
                                                 code="sidecar.internal_error"), request_id)
    finally:
        # A relayed stream's headers said "pending"; its verdict came at the end.
        relayed = request.get(VERDICT)
        headers = response.headers if response is not None else {}
        verified = (str(relayed.verified).lower() if relayed is not None
                    else headers.get(HEADER_VERIFIED))
        state = request.app.get(STATE)
        if state is not None and response is not None:
            state.telemetry.observe_request(request.path, response.status, verified)
        log.info("request", method=request.method, path=request.path,
                 status=response.status if response is not None else None,
                 model=request.get(MODEL), verified=verified,
                 failure=(relayed.failure.code if relayed is not None and relayed.failure
                          else headers.get(HEADER_FAILURE)),
                 request_binding=relayed.request_binding_label() if relayed is not None else None,
                 e2ee=request.get(E2EE_STATUS),
                 duration_ms=round((time.perf_counter() - started) * 1000, 2))
        structlog.contextvars.unbind_contextvars("request_id")
    if HEADER_REQUEST_ID not in response.headers and not response.prepared:
        response.headers[HEADER_REQUEST_ID] = request_id
    return response


@web.middleware
async def _local_callers_only(request: web.Request,
                              handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                              ) -> web.StreamResponse:
    """Host, Origin and (for a served POST) Content-Type rules (``sidecar.proxy.local_origin``).

    Raises:
        BadRequest: ``request.host_not_allowed``, ``request.origin_not_allowed``,
            ``request.unsupported_media_type``.
    """
    callers = request.app[CALLERS]
    callers.check_host(request.headers.get(hdrs.HOST))
    origin = request.headers.get(hdrs.ORIGIN)
    callers.check_origin(origin)
    if origin is not None and request.method == hdrs.METH_OPTIONS:
        # The CORS preflight of a configured origin (its POSTs carry application/json).
        return web.Response(status=204, headers=cors_headers(
            origin, request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")))
    if request.method == hdrs.METH_POST and request.match_info.http_exception is None:
        check_json_content_type(request.headers.get(hdrs.CONTENT_TYPE))
    return await handler(request)


async def _cors_for_configured_origins(request: web.Request,
                                       response: web.StreamResponse) -> None:
    """Let a configured origin's page read the answer and its verdict headers (streams too:
    this runs as the headers are sent)."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and request.app[CALLERS].origin_allowed(origin):
        response.headers.update(cors_headers(origin))


async def _e2ee_header(request: web.Request, response: web.StreamResponse) -> None:
    """``x-tee-e2ee`` on every answer (streams too: this runs as the headers are sent): what
    the completion handler decided, else what this profile can do at all."""
    status = request.get(E2EE_STATUS)
    if status is None:
        state = request.app.get(STATE)
        status = ("false" if state is not None and state.upstream.contract.profile.e2ee
                  else "unavailable")
    response.headers[HEADER_E2EE] = status


@web.middleware
async def _per_client_concurrency(request: web.Request,
                                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                  ) -> web.StreamResponse:
    """At most ``limits.max_concurrent_per_client`` requests in flight per peer address."""
    in_flight = request.app[IN_FLIGHT]
    peer = request.remote or "unknown"
    limit = request.app[STATE].settings.limits.max_concurrent_per_client
    if in_flight.get(peer, 0) >= limit:
        raise TooManyRequests(
            f"more than limits.max_concurrent_per_client ({limit}) requests in flight")
    in_flight[peer] = in_flight.get(peer, 0) + 1
    try:
        return await handler(request)
    finally:
        in_flight[peer] -= 1
        if not in_flight[peer]:
            del in_flight[peer]


async def _fetch_models(state: ProxyState) -> tuple[bytes, int]:
    """The provider's model list as received: body and status."""
    timeout = aiohttp.ClientTimeout(sock_connect=state.settings.upstream.connect_timeout,
                                    sock_read=state.settings.upstream.read_timeout)
    resp = await state.upstream.open("GET", "/v1/models", None, timeout)
    async with resp:
        body, failure = await _read_upstream(resp, state.settings.limits)
    if failure is not None:
        raise failure
    return body, resp.status


async def _models(request: web.Request) -> web.StreamResponse:
    body, status = await _fetch_models(request.app[STATE])
    # A model list is not signed by any enclave: pass it on, marked as not verified, under the
    # sidecar's own content type (the contract's; no upstream header reaches the app unchecked).
    return web.Response(body=body, status=status, headers={
        hdrs.CONTENT_TYPE: "application/json", HEADER_VERIFIED: "false"})


async def _model(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models/{id}`` (the SDK's ``models.retrieve``), answered from the provider's list.

    Providers serve the list on every profile but not always the single-model path, so the
    entry is taken from the list; like the list, it is not signed by any enclave.

    Raises:
        NotFound: ``model_not_found`` when the list does not name the model.
        UpstreamError: the list could not be had.
    """
    model_id = request.match_info["model_id"]
    body, status = await _fetch_models(request.app[STATE])
    if status != 200:
        raise UpstreamError(f"provider answered HTTP {status} for its model list",
                            code=f"upstream.http_{status}", http_status=502)
    try:
        listed = json.loads(body).get("data")
    except (ValueError, RecursionError, AttributeError):
        listed = None
    if not isinstance(listed, list):
        raise UpstreamError("provider's model list is not an OpenAI list",
                            code="upstream.malformed_models", http_status=502)
    for entry in listed:
        if isinstance(entry, dict) and entry.get("id") == model_id:
            return web.json_response(entry, headers={HEADER_VERIFIED: "false"})
    raise NotFound(f"the provider lists no model {model_id!r}", code="request.model_not_found")


def _parse_request(body: bytes) -> str:
    """The ``model`` of an OpenAI request body.

    Raises:
        BadRequest: the body is not a JSON object naming a model.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
        raise BadRequest("request body is not valid JSON", code="request.invalid_json") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object", code="request.invalid_json")
    model = payload.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise BadRequest("request must name a model (a string)", code="request.no_model")
    return model


@dataclass
class _Completion:
    """One completion in flight: what was sent, under which mode, and any failure so far."""

    state: ProxyState
    request: web.Request
    model: str
    mode: Mode
    request_body: bytes
    request_sha256: str
    pre_failure: SidecarError | None
    upstream_started: float
    sealing: _Sealing = dataclasses.field(default_factory=lambda: _Sealing("false"))
    # E2EE: the answer as opened for the app, and whether its sealed fields failed to open (such
    # an answer is withheld in every mode: what would reach the app is ciphertext or text a
    # gateway injected where ciphertext belonged).
    opened: bytes | None = None
    unopened: bool = False

    @property
    def request_id(self) -> str:
        return self.request[REQUEST_ID]

    def withheld(self, verdict: CompletionVerdict) -> bool:
        """Whether even flag and monitor mode must not deliver this answer."""
        return self.unopened and not verdict.verified

    async def judge(self, chat_id: str | None, response_sha256: str,
                    failure: SidecarError | None,
                    open_answer: Callable[[], bytes] | None = None) -> CompletionVerdict:
        """(5) Verify, then record: telemetry, and the receipt, before anything is delivered.

        ``open_answer`` (E2EE) runs after the signature was checked over the sealed bytes, so a
        change in transit reports as what it is (the hash), and an answer its signer sealed
        wrong fails with its own code (``e2ee.decrypt_failed``, ``e2ee.plaintext_field``).

        In enforce mode a completion whose receipt cannot be written is not delivered: the
        receipt is the audit trail the delivery promises.
        """
        state = self.state
        state.telemetry.observe_upstream(time.perf_counter() - self.upstream_started)
        failure = self.pre_failure or failure
        if failure is None and chat_id is None:
            failure = VerificationFailed("response carries no completion id",
                                         code="response.no_chat_id")
        # The verdict is built once with its E2EE facts (a frozen dataclass's replace costs a
        # whole __init__; bench/profile.py showed it on every completion).
        sealing = self.sealing
        if failure is not None:
            verdict = CompletionVerdict(False, chat_id=chat_id, request_sha256=self.request_sha256,
                                        response_sha256=response_sha256, failure=failure,
                                        e2ee=sealing.status, e2ee_model_key=sealing.model_key)
        else:
            assert chat_id is not None
            verdict = await state.verifier.verify(model=self.model, chat_id=chat_id,
                                                  request_body=self.request_body,
                                                  request_sha256=self.request_sha256,
                                                  response_sha256=response_sha256,
                                                  e2ee_recipient=sealing.recipient,
                                                  e2ee=sealing.status,
                                                  e2ee_model_key=sealing.model_key)
        if open_answer is not None:
            try:
                self.opened = open_answer()
            except VerificationFailed as exc:
                self.unopened = True
                if verdict.verified:
                    verdict = dataclasses.replace(verdict, verified=False, failure=exc)
        if verdict.verified and chat_id is not None:
            if not state.chat_ids.first_use(self.model, chat_id):
                # A genuine signature over an earlier answer to the same bytes: a replay.
                verdict = dataclasses.replace(verdict, verified=False, failure=VerificationFailed(
                    f"completion {chat_id} was already delivered", code="response.replayed"))
        state.telemetry.record_exchange(self.model, sealing.status, sealing.model_key)
        if state.receipts is not None:
            try:
                await state.receipts.append_async(verdict.receipt(self.model))
            except Exception as exc:  # whatever stops the receipt, the delivery answers for it
                error = exc if isinstance(exc, SidecarError) else ReceiptLogError(
                    f"receipt not written: {type(exc).__name__}")
                log.error("receipt_not_written", code=error.code, error=error.message)
                if self.mode is Mode.ENFORCE:
                    verdict = dataclasses.replace(verdict, verified=False, failure=error)
        if verdict.failure is not None:
            state.telemetry.record_failure(self.model, verdict.failure.code,
                                           verdict.failure.message)
            if self.mode is Mode.ENFORCE or self.withheld(verdict):
                state.telemetry.observe_blocked(verdict.failure.code)
        self.request[VERDICT] = verdict
        return verdict


def _may_pass_unattested(state: ProxyState, model: str) -> bool:
    """Whether a model the provider has no attestation for (404) may be used unverified.

    Only with ``allow_unattested_models`` and only for a model whose policy entry requires no
    attestation (``PolicySet.may_pass_unattested``): a model the policy claims for TEE, by its
    entry or by ``[defaults]``, stays blocked whatever the attestation endpoint answers. Every
    use of the escape hatch is logged as a warning.
    """
    if not state.policies.may_pass_unattested(model):
        return False
    log.warning("unsafe_unattested_model_passed", model=model,
                reason="policy allow_unattested_models: relayed without TEE attestation")
    return True


def _completion_handler(path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]

        # (1) The exact bytes the app sent, and the model.
        body = await request.read()
        model = _parse_request(body)
        request[MODEL] = model
        mode = state.settings.verification.mode

        # (2) Attested before the prompt leaves, in enforce mode.
        pre_failure: VerificationFailed | None = None
        try:
            policy = state.policies.for_model(model)
            if mode is Mode.ENFORCE and policy.on_failure == "flag":
                mode = Mode.FLAG
            attested = await state.cache.get(model)
            body = _with_canonical_model(state, body, model, attested.canonical_model)
        except VerificationFailed as exc:
            pre_failure = exc
            if isinstance(exc, AttestationUnavailable) and _may_pass_unattested(state, model):
                # Policy lets models without TEE attestation through, but never as verified.
                mode = Mode.FLAG if mode is Mode.ENFORCE else mode
        if pre_failure is not None and mode is Mode.ENFORCE:
            state.telemetry.observe_blocked(pre_failure.code)
            state.telemetry.record_failure(model, pre_failure.code, pre_failure.message)
            return _error_response(pre_failure, request[REQUEST_ID])

        # (2b) Sealed to the attested node's key, or said why not; `required` never sends
        # a prompt in plaintext, whatever the mode.
        try:
            sealing = _plan_e2ee(state, path, model,
                                 None if pre_failure is not None else attested)
        except VerificationFailed as exc:
            request[E2EE_STATUS] = "false" if state.upstream.contract.profile.e2ee else "unavailable"
            state.telemetry.observe_blocked(exc.code)
            state.telemetry.record_failure(model, exc.code, exc.message)
            raise
        request[E2EE_STATUS] = sealing.status
        if sealing.pair is not None:
            body = _sealed_body(state, body, sealing)

        # (3) Forward the exact bytes.
        completion = _Completion(state, request, model, mode, body,
                                 hashlib.sha256(body).hexdigest(), pre_failure, time.perf_counter(),
                                 sealing)
        timeout = aiohttp.ClientTimeout(sock_connect=state.settings.upstream.connect_timeout,
                                        sock_read=state.settings.upstream.read_timeout)
        resp = await state.upstream.open("POST", path, body, timeout, sealing.headers())
        async with resp:
            if resp.status >= 400:
                return await _upstream_error(resp, request[REQUEST_ID])
            if resp.status != 200:
                # A 2xx other than 200 would reach the SDK as a success unverified; a 1xx/3xx
                # is outside the contract. Neither carries a completion the sidecar can check.
                raise VerificationFailed(f"provider answered HTTP {resp.status}, not 200",
                                         code="upstream.unexpected_status")
            content_type = resp.headers.get(hdrs.CONTENT_TYPE, "")
            if content_type.startswith("text/event-stream"):
                if state.settings.verification.stream is StreamMode.RELAY:
                    return await _relay_stream(completion, resp)
                return await _buffer_stream(completion, resp)
            return await _plain(completion, resp)

    return handler


@dataclass(frozen=True, slots=True)
class _Sealing:
    """How one exchange is end-to-end encrypted (``pair`` set) or why not.

    Attributes:
        status: the ``x-tee-e2ee`` value: ``true``, ``false`` or ``unavailable``.
        pair: the client key pair the answer is sealed to (kept for this exchange, so a
            rotation mid-flight cannot break its decryption).
        model_key: the attested, bound ``signing_public_key`` the prompt is sealed to.
        recipient: that node's normalised signing key (only its signature is accepted).
        scheme: ``ed25519`` or ``ecdsa`` (the verified signing algorithm).
    """

    status: str
    pair: e2ee.ClientKeyPair | None = None
    model_key: str | None = None
    recipient: str | None = None
    scheme: str = "ecdsa"

    def headers(self) -> dict[str, str] | None:
        """NEAR's E2EE request headers (spec 0.5), or None for a plaintext exchange.

        Raises:
            VerificationFailed: ``e2ee.model_key_invalid``.
        """
        if self.pair is None or self.model_key is None:
            return None
        return e2ee.request_headers(self.pair, model_public_key=self.model_key)


def _e2ee_setting(state: ProxyState, model: str) -> str:
    """The ``e2ee`` setting for ``model``: its policy entry's, else ``[upstream] e2ee``, else
    ``preferred`` on profiles with E2EE and ``off`` elsewhere."""
    try:
        per_model = state.policies.for_model(model).e2ee
    except VerificationFailed:
        per_model = None  # no policy entry: the request fails on its own path
    if per_model is not None:
        return per_model
    if state.settings.upstream.e2ee is not None:
        return state.settings.upstream.e2ee
    return "preferred" if state.upstream.contract.profile.e2ee else "off"


def _plan_e2ee(state: ProxyState, path: str, model: str,
               attested: CachedAttestation | None) -> _Sealing:
    """Whether this exchange is sealed, and to which attested key.

    The key is the first attested model node's ``signing_public_key`` that
    ``binding.public_key`` proved to be the key of the attested address
    (``AttestationReport.e2ee_keys``); nothing else is ever sealed to. ``preferred`` without
    such a key sends plaintext (logged, ``x-tee-e2ee: false``). Spec 0.5 lists chat fields
    only: a legacy ``/v1/completions`` prompt cannot be sealed.

    Raises:
        VerificationFailed: ``e2ee.required_unavailable`` when ``required`` and the profile
            has no E2EE, the path is not chat completions, or no attested node offers a bound
            key: nothing is sent.
    """
    setting = _e2ee_setting(state, model)
    available = state.upstream.contract.profile.e2ee
    if setting == "off":
        return _Sealing("false" if available else "unavailable")
    if available and path != "/v1/chat/completions":
        if setting == "required":
            raise VerificationFailed(f"e2ee = \"required\" and {path} has no end-to-end "
                                     "encryption (only chat completions do): the prompt was "
                                     "not sent", code="e2ee.required_unavailable")
        return _Sealing("false")
    keys = attested.report.e2ee_keys if available and attested is not None else {}
    if not keys:
        if setting == "required":
            why = (f"provider profile {state.upstream.contract.kind} has no end-to-end "
                   "encryption" if not available else
                   "no attested model node offers a signing_public_key bound to its address")
            raise VerificationFailed(f"e2ee = \"required\" and {why}: the prompt was not sent",
                                     code="e2ee.required_unavailable")
        if available:
            log.warning("e2ee_not_used", model=model,
                        reason="no attested model node offers a bound signing_public_key")
        return _Sealing("false" if available else "unavailable")
    recipient, model_key = next(iter(keys.items()))
    scheme = state.settings.verification.signing_algo
    assert state.e2ee_ring is not None
    pair = state.e2ee_ring.current(scheme, now=time.monotonic())
    return _Sealing("true", pair, model_key, recipient, scheme)


def _sealed_body(state: ProxyState, body: bytes, sealing: _Sealing) -> bytes:
    """The request with every field 0.5 lists sealed to ``sealing.model_key``, as sent.

    Raises:
        VerificationFailed: ``e2ee.model_key_invalid``.
        BadRequest: ``e2ee.request_unencryptable``, ``request.invalid_json``.
    """
    assert sealing.model_key is not None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON", code="request.invalid_json") from None
    try:
        sealed = e2ee.encrypt_request(payload, model_public_key=sealing.model_key,
                                      scheme=sealing.scheme)
        return _json_bytes(sealed, allow_nan=False)
    except (RecursionError, ValueError):
        # Nesting deeper than the copy recurses, or NaN/Infinity (not JSON) outside the
        # sealed fields: refused rather than sent as bytes the app did not write.
        raise BadRequest("request body cannot be re-encoded as JSON for E2EE",
                         code="request.invalid_json") from None


def _json_bytes(obj: Any, *, allow_nan: bool = True) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=allow_nan).encode()


def _open_body(body: bytes, pair: e2ee.ClientKeyPair) -> bytes:
    """A non-streamed answer with its sealed fields opened for the app.

    Raises:
        VerificationFailed: ``e2ee.plaintext_field``, ``e2ee.decrypt_failed``,
            ``response.malformed``.
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise VerificationFailed("response is not JSON", code="response.malformed") from None
    if not isinstance(obj, dict):
        raise VerificationFailed("response is not a JSON object", code="response.malformed")
    try:
        return _json_bytes(e2ee.decrypt_response(obj, pair))
    except RecursionError:  # nesting the parser took but the copy does not
        raise VerificationFailed("response is nested too deeply",
                                 code="response.malformed") from None


def _open_event(event: SseEvent, pair: e2ee.ClientKeyPair) -> bytes:
    """One stream event re-emitted with its sealed fields opened (empty for a comment).

    Raises:
        VerificationFailed: ``e2ee.plaintext_field``, ``e2ee.decrypt_failed``,
            ``response.malformed``.
    """
    if event.data is None:
        return b""
    try:
        obj = json.loads(event.data)
    except (ValueError, RecursionError):
        raise VerificationFailed("a stream event is not JSON", code="response.malformed") from None
    if not isinstance(obj, dict):
        raise VerificationFailed("a stream event is not a JSON object", code="response.malformed")
    try:
        return b"data: " + _json_bytes(e2ee.decrypt_chunk(obj, pair)) + b"\n\n"
    except RecursionError:  # nesting the parser took but the copy does not
        raise VerificationFailed("a stream event is nested too deeply",
                                 code="response.malformed") from None




def _with_canonical_model(state: ProxyState, body: bytes, model: str,
                          canonical: str | None) -> bytes:
    """The request bytes to send: as the app wrote them, or, where the provider rewrites answers
    to aliases (NEAR, spec 0.2), with only the ``model`` value replaced by the attested canonical
    id, so the bytes the node signs are the bytes the sidecar hashes. The app's own name still
    selects the attestation, and the answer goes back unchanged.

    Raises:
        BadRequest: ``request.ambiguous_model`` when the body's top-level ``model`` cannot be
            located exactly once (a duplicate key: which one a server reads is its choice).
    """
    if canonical is None or canonical == model or not state.upstream.contract.profile.canonical_model:
        return body
    span = top_level_model_span(body)
    if span is None:
        raise BadRequest("the request's model cannot be located exactly once",
                         code="request.ambiguous_model")
    return body[:span[0]] + json.dumps(canonical).encode() + body[span[1]:]


async def _read_upstream(resp: aiohttp.ClientResponse,
                         limits: LimitsSettings) -> tuple[bytes, SidecarError | None]:
    """The upstream body within ``limits`` (see :func:`sidecar.proxy.fetch.read_completion`)."""
    return await read_completion(resp, limit=limits.max_response_bytes,
                                 stream_timeout=limits.stream_timeout)


async def _upstream_error(resp: aiohttp.ClientResponse, request_id: str) -> web.Response:
    """Pass on an upstream error (status >= 400) that carries no completion, never as verified.

    The body is rebuilt from the upstream's ``error.message``, ``type`` and ``code`` only (as
    bounded strings), so nothing else the provider put in it reaches the app.
    """
    raw = await _read_upstream_error(resp)
    upstream: dict[str, Any] = {}
    try:
        parsed = json.loads(raw)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            upstream = parsed["error"]
    except (ValueError, RecursionError):
        pass
    message = upstream.get("message")
    body = openai_error_body(UpstreamError(
        f"provider answered HTTP {resp.status}: {message[:MAX_UPSTREAM_MESSAGE]}"
        if isinstance(message, str) else f"provider answered HTTP {resp.status}",
        code=f"upstream.http_{resp.status}"))
    for field in ("type", "code"):
        if isinstance(upstream.get(field), str):
            body["error"][f"upstream_{field}"] = upstream[field][:MAX_UPSTREAM_MESSAGE]
    headers = {HEADER_VERIFIED: "false", HEADER_FAILURE: f"upstream.http_{resp.status}",
               HEADER_REQUEST_ID: request_id}
    headers.update(passed_on_headers(resp.headers))
    return web.json_response(body, status=resp.status, headers=headers)


def passed_on_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """The upstream headers an app may see: ``PASSED_ON_HEADERS`` whose value has its shape."""
    passed: dict[str, str] = {}
    for name, shape in PASSED_ON_HEADERS.items():
        value = upstream.get(name)
        if value is not None and shape.fullmatch(value):
            passed[name] = value
    return passed


async def _read_upstream_error(resp: aiohttp.ClientResponse) -> bytes:
    return await read_error_body(resp, MAX_ERROR_BODY_BYTES)


def _deliver_or_block(completion: _Completion, verdict: CompletionVerdict, body: bytes,
                      content_type: str) -> web.Response:
    """(6) Enforce blocks what did not verify; flag and monitor deliver it, marked (but never
    an answer whose sealed fields did not open)."""
    if not verdict.verified and (completion.mode is Mode.ENFORCE or completion.withheld(verdict)):
        assert verdict.failure is not None
        blocked = _error_response(verdict.failure, completion.request_id)
        blocked.headers[HEADER_REQUEST_BINDING] = verdict.request_binding_label()
        return blocked
    headers = verdict.headers(completion.mode)
    headers[HEADER_REQUEST_ID] = completion.request_id
    headers[hdrs.CONTENT_TYPE] = content_type
    return web.Response(body=body, headers=headers)


async def _plain(completion: _Completion, resp: aiohttp.ClientResponse) -> web.Response:
    # (4) The exact bytes received, and the completion id inside them.
    body, failure = await _read_upstream(resp, completion.state.settings.limits)
    chat_id: str | None = None
    if failure is None:
        try:
            chat_id = chat_id_of(body)
        except VerificationFailed as exc:
            failure = exc
    pair = completion.sealing.pair
    # E2EE: opened from the very bytes hashed (and so signature-checked) by judge.
    verdict = await completion.judge(chat_id, hashlib.sha256(body).hexdigest(), failure,
                                     None if pair is None else lambda: _open_body(body, pair))
    delivered = body if completion.opened is None else completion.opened
    # The content type is ours, not upstream's: no signature covers upstream's headers.
    return _deliver_or_block(completion, verdict, delivered, "application/json")


async def _buffer_stream(completion: _Completion, resp: aiohttp.ClientResponse) -> web.Response:
    body, failure = await _read_upstream(resp, completion.state.settings.limits)
    framer = SseFramer()
    events: list[SseEvent] = []
    try:
        events = framer.feed(body)
        events += framer.finish()
        failure = failure or _stream_shape_failure(framer)
    except VerificationFailed as exc:
        failure = failure or exc
    pair = completion.sealing.pair

    def open_events() -> bytes:
        # E2EE: the app gets the events the framer read, each opened, and the sidecar's own end.
        assert pair is not None
        return b"".join(_open_event(event, pair) for event in events
                        if not event.is_done) + DONE_EVENT

    verdict = await completion.judge(framer.chat_id, hashlib.sha256(body).hexdigest(), failure,
                                     None if pair is None else open_events)
    delivered = body if completion.opened is None else completion.opened
    return _deliver_or_block(completion, verdict, delivered, "text/event-stream")


def _stream_shape_failure(framer: SseFramer) -> VerificationFailed | None:
    if not framer.done:
        return VerificationFailed("stream ended before data: [DONE]", code="stream.truncated")
    if framer.trailing_after_done or framer.pending.strip():
        return VerificationFailed("stream carries data after [DONE]", code="stream.data_after_done")
    if framer.done_data != b"[DONE]":
        # The SDK ends on any data starting with [DONE]; only the exact marker is the contract.
        return VerificationFailed("stream ends on a data line that only starts with [DONE]",
                                  code="stream.malformed_done")
    return None


async def _relay_stream(completion: _Completion,
                        resp: aiohttp.ClientResponse) -> web.StreamResponse:
    """Forward events as they come; hold ``[DONE]`` until the verdict, which closes the stream.

    Only events the framer parsed leave, each re-emitted as ``SseEvent.canonical()``: the app's
    SSE parser then reads exactly the events the sidecar read, whatever line ends, comments or
    ``[DONE]``-prefixed data the upstream sent (issue 11, finding 1). The upstream's own end
    marker is never forwarded; the sidecar writes its own after the verdict. The hash is over
    the upstream's bytes as received.
    """
    out = web.StreamResponse(headers={
        hdrs.CONTENT_TYPE: "text/event-stream", hdrs.CACHE_CONTROL: "no-cache",
        HEADER_VERIFIED: "pending", HEADER_REQUEST_ID: completion.request_id})
    await out.prepare(completion.request)
    framer = SseFramer()
    hasher = hashlib.sha256()
    received = 0
    done_seen = False
    forged: VerificationFailed | None = None
    client_gone = False
    failure: SidecarError | None = None
    limits = completion.state.settings.limits
    pair = completion.sealing.pair
    deadline = asyncio.timeout(limits.stream_timeout)
    try:
        async with deadline:
            async for chunk in resp.content.iter_any():
                hasher.update(chunk)
                received += len(chunk)
                if received > limits.max_response_bytes:
                    raise VerificationFailed("stream exceeds limits.max_response_bytes",
                                             code="limits.response_too_large")
                # The events one chunk completes leave in one write (a syscall per token event
                # was the relay's largest cost); [DONE] is held back for the verdict.
                ready: list[bytes] = []
                for event in framer.feed(chunk):
                    if event.forges_verdict:
                        # Comments are never forwarded; one imitating the verdict is an attack.
                        forged = forged or VerificationFailed(
                            "upstream sent an x-tee verdict comment", code="stream.forged_verdict")
                    if event.is_done:
                        done_seen = True
                    elif not done_seen:
                        # E2EE: each event opened before it leaves; one that does not open ends
                        # the stream with the error event (it is never forwarded).
                        ready.append(event.canonical() if pair is None
                                     else _open_relayed(completion, event, pair))
                if ready and not client_gone:
                    client_gone = not await _write(out, b"".join(ready))
        framer.finish()  # what a final lone \r completes is judged, never forwarded
        failure = forged or _stream_shape_failure(framer)
    except VerificationFailed as exc:
        failure = exc
    except TimeoutError:
        failure = (stream_timeout_error(limits.stream_timeout) if deadline.expired()
                   else UpstreamError("the provider stopped sending", code="upstream.timeout"))
    except aiohttp.ClientError as exc:
        failure = VerificationFailed(f"upstream stream broke: {type(exc).__name__}",
                                     code="stream.truncated")
    # Judged (and its receipt written) even when the app went away mid-stream: part of the
    # completion reached it, so the audit trail must say whether it was genuine.
    try:
        verdict = await completion.judge(framer.chat_id, hasher.hexdigest(), failure)
    except Exception:  # the headers are gone: the stream must still end in a verdict
        log.exception("relay_judge_failed")
        verdict = CompletionVerdict(False, failure=SidecarError(
            "internal error in tee-sidecar", code="sidecar.internal_error"))
    if client_gone:
        return out
    if verdict.verified:
        ending = VERIFIED_COMMENT + DONE_EVENT
    elif completion.mode is Mode.MONITOR and not completion.withheld(verdict):
        ending = b": x-tee-verified false\n\n" + DONE_EVENT
    else:
        assert verdict.failure is not None
        ending = b"data: " + json.dumps(openai_error_body(verdict.failure)).encode() + b"\n\n"
    if await _write(out, ending):
        await out.write_eof()
    return out


def _open_relayed(completion: _Completion, event: SseEvent, pair: e2ee.ClientKeyPair) -> bytes:
    """A relayed event, opened before it leaves: one that does not open ends the stream with
    the error event and is never forwarded (relay delivers before the verdict by design).

    Raises:
        VerificationFailed: the event's sealed fields did not open.
    """
    try:
        return _open_event(event, pair)
    except VerificationFailed:
        completion.unopened = True
        raise


async def _write(out: web.StreamResponse, data: bytes) -> bool:
    """Write to the app; False once it has disconnected (the caller stops writing)."""
    try:
        await out.write(data)
    except ConnectionError:
        return False
    return True
