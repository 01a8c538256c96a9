"""Per-completion verification with I/O, and what each mode does with the verdict.

``CompletionVerifier.verify`` fetches the completion's signature, checks it against the exact
request and response hashes and the model's attested keys (re-attesting once when the signer is
a key the cache lacks: rotation, another node), and returns a ``CompletionVerdict``. The same
verdict then feeds the response headers, the error body, and the log line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from sidecar.config import Mode
from sidecar.errors import SidecarError, VerificationFailed, VerificationIncomplete
from sidecar.providers.wire import SignatureRecordWire, parse_signature_record
from sidecar.proxy.attester import AttestationCache, CachedAttestation
from sidecar.proxy.upstream import UpstreamClient
from sidecar.receipts import Receipt, ReceiptFormatError, receipt_time
from sidecar.telemetry import Telemetry
from sidecar.verify.signature import (
    CompletionSignature,
    CompletionSignatureReport,
    verify_completion_signature,
)

log = structlog.get_logger("tee_sidecar.verify")

HEADER_VERIFIED = "x-tee-verified"
HEADER_SIGNER = "x-tee-signing-address"
HEADER_FAILURE = "x-tee-failure"
HEADER_EVIDENCE = "x-tee-evidence-sha256"
HEADER_REQUEST_ID = "x-request-id"
HEADER_SHOULD_RETRY = "x-should-retry"


@dataclass(frozen=True, slots=True)
class CompletionVerdict:
    """Whether one completion verified, by whom, and if not, why; also what its receipt records.

    Attributes:
        verified: every check passed.
        chat_id: the completion id (``None`` when the response carried none).
        request_sha256, response_sha256: hashes of the exact bytes sent and received.
        record: the enclave's signature record, when one was fetched.
        signer: the key the signature recovered to, when verified.
        evidence_sha256, nonce: the attestation the signer's key came from.
        failure: the first failure (``None`` exactly when verified).
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

    def headers(self, mode: Mode) -> dict[str, str]:
        """The ``x-tee-*`` headers for a delivered response (monitor only says the verdict)."""
        headers = {HEADER_VERIFIED: "true" if self.verified else "false"}
        if mode is Mode.MONITOR:
            return headers
        if self.signer:
            headers[HEADER_SIGNER] = self.signer
        if self.evidence_sha256:
            headers[HEADER_EVIDENCE] = self.evidence_sha256
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
            failure_code=self.failure.code if self.failure else None)


class CompletionVerifier:
    """Checks completions against the signatures the enclave published."""

    def __init__(self, upstream: UpstreamClient, cache: AttestationCache, signing_algo: str,
                 telemetry: Telemetry) -> None:
        self._upstream = upstream
        self._cache = cache
        self._signing_algo = signing_algo
        self._telemetry = telemetry

    async def verify(self, *, model: str, chat_id: str, request_sha256: str,
                     response_sha256: str) -> CompletionVerdict:
        """Verify one completion; never raises for bad evidence (it becomes the verdict)."""
        started = time.perf_counter()
        record: SignatureRecordWire | None = None
        try:
            body = await self._upstream.fetch_signature(chat_id, model, self._signing_algo)
            record = parse_signature_record(body)
            signed = record.completion_signature()
            attested = await self._cache.get(model)
            report = _verify_signed(signed, request_sha256, response_sha256, attested)
            if report.signature_valid and not report.signer_attested:
                attested = await self._refresh(model, attested)
                report = _verify_signed(signed, request_sha256, response_sha256, attested)
            report.raise_for_failure()
        except Exception as exc:  # VerificationFailed is the verdict; anything else fails closed
            error = exc if isinstance(exc, VerificationFailed) else VerificationFailed(
                f"verification raised {type(exc).__name__}", code="verification.internal_error")
            if error is not exc:
                log.exception("verification_internal_error")
            self._telemetry.observe_verification(
                "signature", "incomplete" if isinstance(exc, VerificationIncomplete) else "fail",
                time.perf_counter() - started)
            return CompletionVerdict(False, chat_id, request_sha256, response_sha256, record,
                                     failure=error)
        self._telemetry.observe_verification("signature", "pass", time.perf_counter() - started)
        return CompletionVerdict(True, chat_id, request_sha256, response_sha256, record,
                                 signer=report.signer,
                                 evidence_sha256=attested.report.evidence_sha256,
                                 nonce=attested.report.nonce)

    async def _refresh(self, model: str, current: CachedAttestation) -> CachedAttestation:
        try:
            return await self._cache.refresh(model)
        except VerificationFailed:
            # The signer stays unattested; the re-attestation's own failure is logged by the cache.
            return current


def _verify_signed(signed: CompletionSignature, request_sha256: str, response_sha256: str,
                   attested: CachedAttestation) -> CompletionSignatureReport:
    # Until the I/O layer applies each profile's rules (``providers.contracts.signer_rules``) and
    # the resolved model: only model node keys sign here, no rename, no expected model to bind.
    signers = {key: signer for key, signer in attested.report.attested_signers.items()
               if signer.role == "model"}
    return verify_completion_signature(
        signed, request_sha256=request_sha256, response_sha256=response_sha256,
        attested=signers, expected_model=None, unkinded_roles=frozenset({"model"}),
        accept_model_renamed=False)
