"""The one I/O interface to the provider: completions, attestation reports, signatures.

Every transport failure (refused, reset, timeout, TLS) leaves this module as one error type:
``UpstreamError`` for the completion path, ``VerificationIncomplete`` for evidence fetches, so
callers fail closed with a stable code instead of a stack trace.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs

from sidecar.errors import AttestationUnavailable, VerificationFailed, VerificationIncomplete
from sidecar.providers.contracts import NO_ALIASING_HEADER, ProviderContract
from sidecar.providers.wire import MAX_REPORT_BYTES, MAX_SIGNATURE_RECORD_BYTES
from sidecar.proxy.fetch import Fetcher, PeerCertificate

USER_AGENT = "tee-sidecar/0.1"
# Attestation reports are tens of KiB; signature records a few hundred bytes. Reading more than
# the parsers' own bounds would let a hostile gateway exhaust memory through the evidence path.
MAX_EVIDENCE_BYTES = MAX_REPORT_BYTES
MAX_SIGNATURE_BYTES = MAX_SIGNATURE_RECORD_BYTES
# The longest pause between two fetches of a signature not yet stored: NEAR stores records
# within moments of the answer's end, so waiting longer only delays the verdict.
MAX_RETRY_DELAY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class FetchedReport:
    """An attestation report body and the TLS certificate of the connection it came over."""

    body: bytes
    peer: PeerCertificate | None


class UpstreamClient:
    """The provider as seen from the sidecar (one shared ``aiohttp.ClientSession``)."""

    def __init__(self, session: aiohttp.ClientSession, contract: ProviderContract,
                 api_key: str | None, *, signature_retries: int, signature_retry_delay: float,
                 signature_deadline: float, evidence_timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self._fetcher = Fetcher(session)
        # For the provider's connections only: the system store (True), or with
        # upstream.ca_file a context that adds that bundle; a Fingerprint once an attestation
        # bound the provider's TLS key. PCS and NRAS keep the session's system store.
        self._ssl: ssl.SSLContext | aiohttp.Fingerprint | bool = ssl_context or True
        self.pinned_certificate: bytes | None = None
        self.contract = contract
        self._api_key = api_key
        self._signature_retries = signature_retries
        self._signature_retry_delay = signature_retry_delay
        self._signature_deadline = signature_deadline
        self._evidence_timeout = evidence_timeout

    def pin_certificate(self, der_sha256: bytes) -> None:
        """Accept only this certificate from the provider for the rest of the session.

        Called once an attestation bound the TLS key of the connection it arrived over into the
        quote (spec section 2, TLS binding): from then on every connection must present that very
        certificate, checked right after the handshake, before any request byte is sent.
        """
        self.pinned_certificate = der_sha256
        self._ssl = aiohttp.Fingerprint(der_sha256)

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        """Headers for every upstream call: our key (never the app's), no compression.

        ``Accept-Encoding: identity`` because the enclave hashes bodies before transport
        compression (spec section 3); hashing decoded bytes would work too, but identity keeps
        "the bytes we hash" and "the bytes on the wire" the same thing.
        """
        headers: dict[str, str] = {hdrs.ACCEPT_ENCODING: "identity", hdrs.USER_AGENT: USER_AGENT}
        if self._api_key:
            headers[hdrs.AUTHORIZATION] = f"Bearer {self._api_key}"
        if content_type:
            headers[hdrs.CONTENT_TYPE] = content_type
        return headers

    async def open(self, method: str, path: str, body: bytes | None,
                   timeout: aiohttp.ClientTimeout,
                   extra_headers: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """Send an OpenAI request upstream and return the response with its body unread.

        ``extra_headers`` are the sidecar's own (E2EE, spec 0.5); no header of the app's is
        ever forwarded, so an app cannot choose the key its prompt is sealed to.

        Raises:
            UpstreamError: ``upstream.timeout`` or ``upstream.unavailable``.
        """
        headers = self.headers("application/json" if body is not None else None)
        if body is not None and self.contract.profile.canonical_model:
            # NEAR answers an alias by rewriting the body it returns (a "warning" field), which
            # no node signature then covers; with this header it refuses aliases instead, and
            # the sidecar sends the attested canonical id (spec 0.2).
            headers[NO_ALIASING_HEADER] = "true"
        headers.update(extra_headers or {})
        return await self._fetcher.open(method, self.contract.openai_url(path), data=body,
                                        headers=headers, timeout=timeout, ssl=self._ssl)

    async def fetch_attestation(self, model: str, nonce: str, signing_algo: str,
                                signing_address: str | None = None) -> FetchedReport:
        """Fetch the attestation report of ``model`` bound to ``nonce`` (of the node holding
        ``signing_address``, where the profile can select one).

        Raises:
            VerificationFailed: ``attestation.unavailable`` when the provider says the model has
                no attestation (404); ``attestation.refused`` for other 3xx/4xx answers.
                ``upstream.tls_pin_mismatch``; ``evidence.too_large``.
            VerificationIncomplete: ``attestation.fetch_failed`` on transport errors and 5xx.
        """
        url, query = self.contract.attestation_url(model, nonce, signing_algo, signing_address)
        fetched = await self._fetcher.fetch(
            url, params=query, headers=self.headers(), timeout=self._evidence_timeout,
            ssl=self._ssl, limit=MAX_EVIDENCE_BYTES, purpose="attestation report",
            code="attestation.fetch_failed", too_large_code="evidence.too_large")
        if fetched.status >= 500:
            raise VerificationIncomplete(f"attestation endpoint answered {fetched.status}",
                                         code="attestation.fetch_failed")
        if fetched.status == 404:
            raise AttestationUnavailable(f"provider has no attestation for {model} (HTTP 404)")
        if fetched.status != 200:
            # 429, 401, a redirect: not "this model has no TEE", only "not now".
            raise VerificationFailed(f"attestation endpoint refused (HTTP {fetched.status})",
                                     code="attestation.refused")
        return FetchedReport(fetched.body, fetched.peer)

    async def fetch_signature(self, chat_id: str, model: str, signing_algo: str) -> bytes:
        """Fetch the signature record of ``chat_id``, retrying while it is not yet written.

        Providers store a record only after the answer ended (NEAR: asynchronously, after the
        upstream connection closed; direct nodes per node, so a fetch may land on another one;
        spec 0.3), so 404 is retried with a doubling delay (at most ``MAX_RETRY_DELAY_SECONDS``)
        until ``signature_retries`` retries or ``signature_deadline`` seconds are spent. A 200
        record saying "unavailable" is returned as it is: the parser makes it a final failure.

        Raises:
            VerificationFailed: ``signature.missing`` when it never appears (404 to the end)
                or the endpoint refuses (4xx).
                ``upstream.tls_pin_mismatch``; ``evidence.too_large``.
            VerificationIncomplete: ``signature.fetch_failed`` on transport errors and 5xx.
        """
        url, query = self.contract.signature_url(chat_id, model, signing_algo)
        delay = self._signature_retry_delay
        deadline = time.monotonic() + self._signature_deadline
        tries = 0
        while True:
            tries += 1
            fetched = await self._fetcher.fetch(
                url, params=query, headers=self.headers(), timeout=self._evidence_timeout,
                ssl=self._ssl, limit=MAX_SIGNATURE_BYTES, purpose="signature record",
                code="signature.fetch_failed", too_large_code="evidence.too_large")
            if fetched.status == 200:
                return fetched.body
            if fetched.status >= 500:
                raise VerificationIncomplete(f"signature endpoint answered {fetched.status}",
                                             code="signature.fetch_failed")
            if fetched.status != 404:
                raise VerificationFailed(f"signature endpoint answered {fetched.status}",
                                         code="signature.missing")
            if tries > self._signature_retries or time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)
        raise VerificationFailed(f"no signature for completion {chat_id} after {tries} tries",
                                 code="signature.missing")

    async def fetch_model_list(self, timeout: float, limit: int) -> bytes:
        """The provider's ``/v1/models`` body, at most ``limit`` bytes.

        Raises:
            VerificationIncomplete: ``attestation.model_list_unavailable`` for every failure
                (a list that cannot be read only leaves the model undecided).
        """
        code = "attestation.model_list_unavailable"
        try:
            fetched = await self._fetcher.fetch(
                self.contract.openai_url("/v1/models"), headers=self.headers(), timeout=timeout,
                ssl=self._ssl, limit=limit, purpose="the provider's model list", code=code)
        except VerificationFailed as exc:
            if isinstance(exc, VerificationIncomplete):
                raise
            raise VerificationIncomplete(f"the provider's model list: {exc.message}",
                                         code=code) from None
        if fetched.status != 200:
            raise VerificationIncomplete(
                f"the provider's model list answered HTTP {fetched.status}", code=code)
        return fetched.body
