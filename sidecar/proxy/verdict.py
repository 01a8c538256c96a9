"""Per-completion verification with I/O, and what each mode does with the verdict.

``CompletionVerifier.verify`` fetches the completion's signature, checks it against the exact
request and response hashes, the model's attested keys and their roles under the provider
profile's rules (re-attesting once, by that key where the provider can select it, when the
signer is a key the cache lacks: rotation, another node), and returns a ``CompletionVerdict``.
The same verdict then feeds the response headers, the error body, the log line and the receipt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from sidecar.config import Mode
from sidecar.errors import SidecarError, VerificationFailed, VerificationIncomplete
from sidecar.providers.contracts import SignerRules
from sidecar.providers.wire import SignatureRecordWire, parse_signature_record
from sidecar.proxy.attester import AttestationCache, CachedAttestation
from sidecar.proxy.upstream import UpstreamClient
from sidecar.receipts import Receipt, ReceiptFormatError, receipt_time
from sidecar.telemetry import Telemetry
from sidecar.verify.signature import (
    CompletionSignature,
    CompletionSignatureReport,
    RequestBinding,
    verify_completion_signature,
)

log = structlog.get_logger("tee_sidecar.verify")

HEADER_VERIFIED = "x-tee-verified"
HEADER_SIGNER = "x-tee-signing-address"
HEADER_FAILURE = "x-tee-failure"
HEADER_EVIDENCE = "x-tee-evidence-sha256"
HEADER_REQUEST_ID = "x-request-id"
HEADER_SHOULD_RETRY = "x-should-retry"
HEADER_REQUEST_BINDING = "x-tee-request-binding"
HEADER_SERVED_MODEL = "x-tee-served-model"
HEADER_SIGNATURE_KIND = "x-tee-signature-kind"
HEADER_E2EE = "x-tee-e2ee"


@dataclass(frozen=True, slots=True)
class CompletionVerdict:
    """Whether one completion verified, by whom, and if not, why; also what its receipt records.

    Attributes:
        verified: every check passed.
        chat_id: the completion id (``None`` when the response carried none).
        request_sha256, response_sha256: hashes of the exact bytes sent and received.
        record: the provider's signature record, when one was fetched.
        signer: the key the signature recovered to, when verified.
        evidence_sha256, nonce: the attestation the signer's key came from.
        failure: the first failure (``None`` exactly when verified).
        request_binding: how the signed request hash covered the bytes sent (``exact``,
            ``model_renamed``), when the signature check got that far.
        request_unbound: the signature check failed at binding the request (a mismatch, or a
            rename the profile refuses).
        served_model: the model the signer is attested to serve (its report's ``model_name``).
        e2ee: whether the exchange was end-to-end encrypted: ``true``, ``false``,
            ``unavailable`` (``None`` before the proxy decided).
        e2ee_model_key: the attested model key the prompt was sealed to (when ``true``).
    """

    verified: bool
    chat_id: str | None = None
    request_sha256: str | None = None
    response_sha256: str | None = None
    record: SignatureRecordWire | None = None
    signer: str | None = None
    evidence_sha256: str | None = None
    nonce: str | None = None
    failure: SidecarError | None = None
    request_binding: RequestBinding | None = None
    request_unbound: bool = False
    served_model: str | None = None
    e2ee: str | None = None
    e2ee_model_key: str | None = None

    def request_binding_label(self) -> str:
        """``exact``, ``model_renamed``, the failure code when binding the request failed, or
        ``unchecked`` when the check was not reached (spec 0.1: every verdict says which)."""
        if self.request_unbound and self.failure is not None:
            return self.failure.code
        if self.request_binding is not None:
            return str(self.request_binding)
        return "unchecked"

    def headers(self, mode: Mode) -> dict[str, str]:
        """The ``x-tee-*`` headers for a delivered response (monitor only says the verdict)."""
        headers = {HEADER_VERIFIED: "true" if self.verified else "false"}
        if mode is Mode.MONITOR:
            return headers
        headers[HEADER_REQUEST_BINDING] = self.request_binding_label()
        if self.signer:
            headers[HEADER_SIGNER] = self.signer
        if self.evidence_sha256:
            headers[HEADER_EVIDENCE] = self.evidence_sha256
        if self.served_model and self.served_model.isascii() and self.served_model.isprintable():
            headers[HEADER_SERVED_MODEL] = self.served_model
        if self.record is not None and self.record.signature_kind is not None:
            headers[HEADER_SIGNATURE_KIND] = str(self.record.signature_kind)
        if self.failure is not None:
            headers[HEADER_FAILURE] = self.failure.code
        return headers

    def receipt(self, model: str) -> Receipt:
        """The receipt line for this completion (digests only, never text).

        A failed completion whose record cannot be written as it came (out of a receipt's
        bounds) is recorded without it, so it is never left without a receipt.
        """
        try:
            return self._receipt(model, self.record)
        except ReceiptFormatError:
            if self.verified:
                raise
            return self._receipt(model, None)

    def _receipt(self, model: str, record: SignatureRecordWire | None) -> Receipt:
        return Receipt(
            time=receipt_time(), model=model,
            request_sha256=self.request_sha256 or "", response_sha256=self.response_sha256 or "",
            chat_id=self.chat_id,
            text=record.text if record else None,
            signature=record.signature if record else None,
            signing_address=record.signing_address if record else None,
            signing_algo=record.signing_algo if record else None,
            evidence_sha256=self.evidence_sha256, nonce=self.nonce,
            verdict="verified" if self.verified else "failed",
            failure_code=self.failure.code if self.failure else None,
            served_model=self.served_model if self.verified else None,
            signature_kind=(str(record.signature_kind)
                            if record is not None and record.signature_kind else None),
            request_binding=str(self.request_binding) if self.request_binding else None,
            e2ee=self.e2ee,
            e2ee_model_key=self.e2ee_model_key if self.e2ee == "true" else None)


def check_e2ee_signer(record: SignatureRecordWire, signer: str | None,
                      attested: CachedAttestation, recipient: str) -> None:
    """An end-to-end encrypted exchange is only genuine when signed by the node it was sealed to.

    Nothing the node signs covers ``x-client-pub-key``, so a gateway can swap in its own client
    key, read the answer and re-seal it to ours; only the node's signature over the bytes it
    sent exposes that. A gateway-kind signature (over what the gateway sent) would hide it,
    which is why spec 0.5 says E2EE streams stay ``provider_tee`` (docs/e2ee.md).

    Raises:
        VerificationFailed: ``e2ee.gateway_signature`` for a gateway-kind record or a signer
            that is not an attested model node; ``e2ee.signer_not_recipient`` for a model node
            other than the one the prompt was sealed to.
    """
    role = attested.report.attested_signers.get(signer or "")
    gateway_kind = record.signature_kind is not None and str(record.signature_kind) == "gateway"
    if gateway_kind or role is None or role.role != "model":
        raise VerificationFailed("an end-to-end encrypted exchange must be signed by the model "
                                 "node itself (provider_tee), not a gateway",
                                 code="e2ee.gateway_signature")
    if signer != recipient:
        raise VerificationFailed("the exchange was signed by another model node than the one "
                                 "its prompt was sealed to", code="e2ee.signer_not_recipient")


class CompletionVerifier:
    """Checks completions against the signatures the provider published.

    Args:
        upstream: the provider.
        cache: this session's attestations.
        signing_algo: the scheme asked for (and verified).
        rules: what the provider profile lets sign (``providers.contracts.signer_rules``),
            with the settings' ``model_renamed`` choice applied.
        telemetry: counters.
    """

    def __init__(self, upstream: UpstreamClient, cache: AttestationCache, signing_algo: str,
                 telemetry: Telemetry, rules: SignerRules) -> None:
        self._upstream = upstream
        self._cache = cache
        self._signing_algo = signing_algo
        self._telemetry = telemetry
        self._rules = rules

    async def verify(self, *, model: str, chat_id: str, request_body: bytes, request_sha256: str,
                     response_sha256: str, e2ee_recipient: str | None = None,
                     e2ee: str | None = None, e2ee_model_key: str | None = None
                     ) -> CompletionVerdict:
        """Verify one completion; never raises for bad evidence (it becomes the verdict).

        Args:
            model: the model the app asked for (it selects the attestation).
            chat_id: the completion id the answer carried.
            request_body, request_sha256: the exact bytes sent upstream and their hash.
            response_sha256: the hash of the exact bytes received.
            e2ee_recipient: for an end-to-end encrypted exchange, the normalised signing key
                of the model node the prompt was sealed to: only that node's own
                (``provider_tee`` or unkinded, model role) signature is then accepted
                (``check_e2ee_signer``).
            e2ee, e2ee_model_key: what the verdict records about end-to-end encryption
                (``CompletionVerdict.e2ee``), set here so the verdict is built once.
        """
        started = time.perf_counter()
        record: SignatureRecordWire | None = None
        report: CompletionSignatureReport | None = None
        try:
            body = await self._upstream.fetch_signature(chat_id, model, self._signing_algo)
            record = parse_signature_record(body)
            signed = record.completion_signature()
            attested = await self._cache.get(model)
            report = self._check(signed, request_body, request_sha256, response_sha256, attested)
            if report.signature_valid and not report.signer_attested:
                # A genuine signature by a key this session has not attested: rotation, or another
                # node of the model. One bounded attestation of that very key, then decide.
                attested = await self._refresh(model, attested, record.signing_address)
                report = self._check(signed, request_body, request_sha256, response_sha256,
                                     attested)
            report.raise_for_failure()
            if e2ee_recipient is not None:
                check_e2ee_signer(record, report.signer, attested, e2ee_recipient)
        except Exception as exc:  # VerificationFailed is the verdict; anything else fails closed
            error = exc if isinstance(exc, VerificationFailed) else VerificationFailed(
                f"verification raised {type(exc).__name__}", code="verification.internal_error")
            if error is not exc:
                log.exception("verification_internal_error")
            self._telemetry.observe_verification(
                "signature", "incomplete" if isinstance(exc, VerificationIncomplete) else "fail",
                time.perf_counter() - started)
            return CompletionVerdict(False, chat_id, request_sha256, response_sha256, record,
                                     failure=error,
                                     request_binding=report.request_binding if report else None,
                                     request_unbound=report is not None
                                     and report.request_bound is False,
                                     e2ee=e2ee, e2ee_model_key=e2ee_model_key)
        self._telemetry.observe_verification("signature", "pass", time.perf_counter() - started)
        signer = attested.report.attested_signers.get(report.signer or "")
        return CompletionVerdict(True, chat_id, request_sha256, response_sha256, record,
                                 signer=report.signer,
                                 evidence_sha256=attested.report.evidence_sha256,
                                 nonce=attested.report.nonce,
                                 request_binding=report.request_binding,
                                 # A gateway's attestation names no model: it served the one
                                 # the report resolved (whose node it routes to).
                                 served_model=(signer.model_name if signer and signer.model_name
                                               else attested.canonical_model),
                                 e2ee=e2ee, e2ee_model_key=e2ee_model_key)

    def _check(self, signed: CompletionSignature, request_body: bytes, request_sha256: str,
               response_sha256: str, attested: CachedAttestation) -> CompletionSignatureReport:
        # The model a signer's text and attestation must name is the one the report resolved for
        # the app's model (NEAR aliases, NanoGPT's TEE/ names): the attested model_name.
        return verify_completion_signature(
            signed, request_sha256=request_sha256, response_sha256=response_sha256,
            attested=attested.report.attested_signers, expected_model=attested.canonical_model,
            unkinded_roles=self._rules.unkinded_roles, request_body=request_body,
            accept_model_renamed=self._rules.accept_model_renamed)

    async def _refresh(self, model: str, current: CachedAttestation,
                       signing_address: str) -> CachedAttestation:
        try:
            return await self._cache.refresh(model, signing_address)
        except VerificationFailed:
            # The signer stays unattested; the re-attestation's own failure is logged by the cache.
            return current
