"""Attestation with I/O: fetch a report under a fresh nonce, gather off-box evidence, verify, cache.

``ModelAttester`` does one attestation: a new 32-byte nonce, the report, then per node the DCAP
collateral and the NRAS answer, and hands everything to the sans-I/O
``sidecar.verify.attestation.verify_attestation``. ``AttestationCache`` runs it once per model
per session (single-flight under concurrency) and keeps only reports with at least one fully
attested model node, until the policy's TTL. A failed re-attestation never evicts a still-valid
entry early and never extends an expired one. Two bounds keep a hostile provider from turning
requests into evidence fetches: forced re-attestations (a signer the cache lacks) at most once
per ``REFRESH_MIN_INTERVAL_SECONDS``, whether they succeed or not, doubling after each failure up
to ``REFRESH_MAX_INTERVAL_SECONDS``; and a failed attestation answered from memory for
``FAILED_ATTESTATION_BACKOFF_SECONDS``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from sidecar.config import MAX_NODES
from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.pins import IdentityGate
from sidecar.providers.wire import (
    AttestationDocument,
    canonical_report,
    parse_attestation_document,
)
from sidecar.proxy.collateral import CollateralSource
from sidecar.proxy.nras_client import NrasClient
from sidecar.proxy.provenance_source import ProvenanceGate
from sidecar.proxy.upstream import UpstreamClient
from sidecar.telemetry import Telemetry
from sidecar.archive import encode_context
from sidecar.verify.attestation import (
    AttestationReport,
    NodeEvidence,
    TrustRoots,
    verify_attestation,
)
from sidecar.verify.checks import Status
from sidecar.verify.nvidia import token_kids
from sidecar.verify.policy import PolicySet

log = structlog.get_logger("tee_sidecar.attestation")

# A genuine key rotation is one re-attestation; more than one per model in this interval is a
# gateway naming keys it cannot have attested, and is not worth another round of evidence.
REFRESH_MIN_INTERVAL_SECONDS = 10.0
# Every forced re-attestation counts, failed ones too, and each consecutive failure doubles the
# interval up to this bound: a gateway naming throw-away keys must not buy an attestation (a
# report fetch and an NRAS call per node) with every completion (issue 11, finding 4).
REFRESH_MAX_INTERVAL_SECONDS = 300.0
# After an attestation of a model failed, requests for it fail with the same error for this long
# instead of each starting another attestation (every node's quote, collateral and NRAS call):
# a failing provider must not turn every app request into a burst of evidence fetches.
FAILED_ATTESTATION_BACKOFF_SECONDS = 5.0
# Failures are remembered for the back-off only, at most this many models at once (the oldest
# goes first), and as code and message, never the exception with its traceback and frames: a
# flood of made-up model names must not grow the process (issue 11, finding 6).
MAX_REMEMBERED_FAILURES = 1024


def _refresh_interval(failures: int) -> float:
    """Seconds between forced re-attestations after ``failures`` consecutive failures."""
    return min(REFRESH_MAX_INTERVAL_SECONDS, REFRESH_MIN_INTERVAL_SECONDS * float(2 ** min(failures, 16)))


class ModelAttester:
    """Performs one full attestation of a model."""

    def __init__(self, upstream: UpstreamClient, *, collateral: CollateralSource,
                 nras: NrasClient, roots: TrustRoots, policies: PolicySet, signing_algo: str,
                 pinned_jwks: Mapping[str, Any] | None = None,
                 max_nodes: int = MAX_NODES,
                 clock: Callable[[], float] = time.time) -> None:
        self._upstream = upstream
        self._collateral = collateral
        self._nras = nras
        self._roots = roots
        self._policies = policies
        self._signing_algo = signing_algo
        self._pinned_jwks = pinned_jwks
        self._clock = clock
        self._max_nodes = max_nodes
        self.simulated = roots.simulated

    async def attest(self, model: str, signing_address: str | None = None
                     ) -> tuple[AttestationReport, bytes, bytes]:
        """Attest ``model`` now, under a nonce never used before (the node holding
        ``signing_address``, where the provider can select one: spec 0.4).

        Returns:
            The report (whatever its verdict), the report body verified and archived
            (``canonical_report`` of the body received: its digest is the report's
            ``evidence_sha256``), and the context it was verified with (``encode_context``).

        Raises:
            VerificationFailed: the policy refuses the model, the report is malformed, names
                more distinct nodes than ``max_nodes`` (``attestation.too_many_nodes``), or the
                provider has no attestation for it.
            VerificationIncomplete: the report could not be fetched.
        """
        policy = self._policies.for_model(model)
        nonce = secrets.token_hex(32)
        fetched = await self._upstream.fetch_attestation(model, nonce, self._signing_algo,
                                                         signing_address)
        body = canonical_report(fetched.body)
        document = parse_attestation_document(body)
        if len(document.nodes) > self._max_nodes:
            raise VerificationFailed(
                f"attestation report names {len(document.nodes)} distinct nodes, more than "
                f"attestation.max_nodes ({self._max_nodes})", code="attestation.too_many_nodes")
        peer = fetched.peer
        evidence = await self._gather(document, peer.spki_sha256 if peer else None)
        report = verify_attestation(document, model=model, nonce=nonce, evidence=evidence,
                                    roots=self._roots, policy=policy, now=int(self._clock()),
                                    gateway_policy=self._policies.gateway)
        tls_bound = any(node.bound_tls_spki is not None
                        for node in report.nodes if node.status is Status.PASS)
        if tls_bound and peer is not None:
            self._upstream.pin_certificate(peer.der_sha256)
        return report, body, encode_context(report, evidence)

    async def _gather(self, document: AttestationDocument,
                      tls_spki: bytes | None) -> dict[str, NodeEvidence]:
        """Per evidence label (``document.quotes()``: every node, and every compose-manager
        quote under its own label), the collateral of its quote; per node, the NRAS answer."""
        payloads = {claim.label: claim.wire.nvidia_payload_text() for claim in document.nodes}

        async def one(quote_hex: str | None, payload: str | None) -> NodeEvidence:
            collateral = nras_response = jwks = None
            collateral_error = "no quote"
            nras_error = "no GPU payload"
            if quote_hex:
                try:
                    collateral = await self._collateral.get(bytes.fromhex(quote_hex.removeprefix("0x")))
                except ValueError:
                    collateral_error = "quote is not hex"
                except VerificationIncomplete as exc:
                    collateral_error = exc.message
            if payload is not None:
                try:
                    nras_response = await self._nras.attest(payload)
                    jwks = self._pinned_jwks or await self._nras.jwks(
                        require_kids=token_kids(nras_response))
                except VerificationIncomplete as exc:
                    nras_error = exc.message
                except Exception as exc:  # fail closed: the GPU check is undecided, not passed
                    log.exception("nras_error")
                    nras_error = f"NRAS call failed: {type(exc).__name__}"
            return NodeEvidence(collateral, collateral_error, nras_response, nras_error, jwks,
                                tls_spki)

        # Nodes that carry the same quote and GPU evidence share one collateral fetch and one
        # NRAS call: repeating a node must not multiply the off-box work (issue 11, finding 3).
        fetches: dict[tuple[str | None, str | None], asyncio.Future[NodeEvidence]] = {}
        keys = []
        for label, quote_hex in document.quotes():
            key = (quote_hex, payloads.get(label))
            if key not in fetches:
                fetches[key] = asyncio.ensure_future(one(*key))
            keys.append((label, key))
        await asyncio.gather(*fetches.values())
        return {label: fetches[key].result() for label, key in keys}


@dataclass(frozen=True, slots=True)
class _RememberedFailure:
    """A failed attestation, as much of it as the back-off answers with."""

    until: float
    code: str
    message: str
    kind: type[VerificationFailed]

    def error(self) -> VerificationFailed:
        return self.kind(self.message, code=self.code)


@dataclass(frozen=True, slots=True)
class CachedAttestation:
    """A verified report, the exact body it came from, when it stops counting, and what it was
    verified with (``encode_context``)."""

    report: AttestationReport
    body: bytes
    expires_at: float
    context: bytes = b""
    model_name: str | None = None

    @property
    def canonical_model(self) -> str | None:
        """The model the attested nodes say they serve (``model_name``), if they name one."""
        return self.model_name


class AttestationCache:
    """Per-model attestations for this process, single-flight, expiring by TTL."""

    def __init__(self, attester: ModelAttester, ttl_for: Callable[[str], int], *,
                 telemetry: Telemetry | None = None,
                 on_attested: Callable[[CachedAttestation], Awaitable[None]] | None = None,
                 identity: IdentityGate | None = None,
                 provenance: ProvenanceGate | None = None,
                 admit: Callable[[str], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._attester = attester
        self._ttl_for = ttl_for
        self._telemetry = telemetry or Telemetry()
        self._on_attested = on_attested
        self._identity = identity
        self._provenance = provenance
        self._clock = clock
        self._entries: dict[str, CachedAttestation] = {}
        self._inflight: dict[str, asyncio.Task[CachedAttestation]] = {}
        self._next_refresh: dict[str, float] = {}
        self._refresh_failures: dict[str, int] = {}
        self._failed: OrderedDict[str, _RememberedFailure] = OrderedDict()
        # Which names may be attested at all (``sidecar.proxy.model_names``); None: any.
        self._admit = admit
        self.attestations_run = 0

    def peek(self, model: str) -> CachedAttestation | None:
        """The entry for ``model`` if it is still valid (no I/O)."""
        entry = self._entries.get(model)
        return entry if entry is not None and entry.expires_at > self._clock() else None

    def entries(self) -> dict[str, CachedAttestation]:
        """All entries, valid or not (for status pages)."""
        return dict(self._entries)

    async def get(self, model: str) -> CachedAttestation:
        """A valid attestation of ``model``: cached, or run now (once, however many callers).

        Raises:
            VerificationFailed: (or ``VerificationIncomplete``) no node of the model attested.
            BadRequest: ``request.unknown_model`` from the ``admit`` hook: a name not worth an
                attestation.
        """
        entry = self.peek(model)
        if entry is not None:
            return entry
        failed = self._failed.get(model)
        if failed is not None:
            if failed.until > self._clock():
                raise failed.error()
            del self._failed[model]
        if self._admit is not None:
            await self._admit(model)
        return await self._run(model)

    async def refresh(self, model: str, signing_address: str | None = None) -> CachedAttestation:
        """Attest again (a signature named a key the cache lacks: rotation, another node).

        While a valid entry exists, at most one attempt per model per interval, failed attempts
        included: ``REFRESH_MIN_INTERVAL_SECONDS``, doubled after each consecutive failure up to
        ``REFRESH_MAX_INTERVAL_SECONDS`` and reset by a success. Otherwise a hostile gateway
        could make every completion, signed by a key of its own, cost a full attestation.
        Within the interval the current entry is returned unchanged, so the unknown signer stays
        unattested and the completion fails closed; a failed refresh leaves the previous entry
        exactly as it was, valid until its own expiry. Without a valid entry this is ``get``
        (a failed attestation is answered from memory for its back-off).

        Raises:
            VerificationFailed: the re-attestation did not verify.
        """
        now = self._clock()
        current = self.peek(model)
        if current is None:
            return await self.get(model)
        if now < self._next_refresh.get(model, now):
            return current
        failures = self._refresh_failures.get(model, 0)
        # The interval starts with the attempt, so concurrent callers do not start another.
        self._next_refresh[model] = now + _refresh_interval(failures)
        try:
            entry = await self._run(model, signing_address)
        except VerificationFailed:
            self._refresh_failures[model] = failures + 1
            self._next_refresh[model] = now + _refresh_interval(failures + 1)
            raise
        self._refresh_failures.pop(model, None)
        self._next_refresh[model] = now + _refresh_interval(0)
        return entry

    async def _run(self, model: str, signing_address: str | None = None) -> CachedAttestation:
        task = self._inflight.get(model)
        if task is None:
            task = asyncio.ensure_future(self._attest(model, signing_address))
            self._inflight[model] = task
            task.add_done_callback(lambda _: self._inflight.pop(model, None))
        # shield: one impatient caller disconnecting must not cancel the others' attestation.
        return await asyncio.shield(task)

    async def _attest(self, model: str, signing_address: str | None = None) -> CachedAttestation:
        self.attestations_run += 1
        started = self._clock()
        timer = time.perf_counter()
        try:
            entry = await self._attest_once(model, started, signing_address)
        except VerificationFailed as exc:
            self._telemetry.observe_verification(
                "attestation", "incomplete" if isinstance(exc, VerificationIncomplete) else "fail",
                time.perf_counter() - timer)
            self._telemetry.record_failure(model, exc.code, exc.message)
            self._remember_failure(model, exc)
            raise
        self._failed.pop(model, None)
        self._telemetry.observe_verification("attestation", "pass", time.perf_counter() - timer)
        return entry

    def _remember_failure(self, model: str, exc: VerificationFailed) -> None:
        now = self._clock()
        # Entries share one back-off, so the oldest insertions expire first.
        while self._failed and next(iter(self._failed.values())).until <= now:
            self._failed.popitem(last=False)
        self._failed.pop(model, None)
        self._failed[model] = _RememberedFailure(
            now + FAILED_ATTESTATION_BACKOFF_SECONDS, exc.code, exc.message, type(exc))
        while len(self._failed) > MAX_REMEMBERED_FAILURES:
            self._failed.popitem(last=False)

    async def _attest_once(self, model: str, started: float,
                           signing_address: str | None = None) -> CachedAttestation:
        report, body, context = await self._attester.attest(model, signing_address)
        log.info("attestation", model=model, verdict=report.verdict,
                 evidence_sha256=report.evidence_sha256, simulated_roots=self._attester.simulated,
                 nodes=[{"node": n.label, "key": n.signing_key, "status": str(n.status),
                         "failure": n.failure.code if n.failure else None} for n in report.nodes])
        report.raise_unless_attested()
        entry = CachedAttestation(report, body, started + self._ttl_for(model), context,
                                  _served_model(model, report))
        if self._on_attested is not None:
            # The evidence is archived before any receipt can name it.
            await self._on_attested(entry)
        if self._identity is not None:
            # Which code runs (sidecar.pins): after archiving, so a refused change's evidence is
            # kept for `pins accept`; before caching, so a refused change never serves.
            entry = dataclasses.replace(entry, report=self._identity.enforce(model, report))
        if self._provenance is not None:  # who built the images (sidecar.verify.provenance)
            entry = dataclasses.replace(
                entry, report=await self._provenance.enforce(model, entry.report))
        self._entries[model] = entry
        return entry


def _served_model(model: str, report: AttestationReport) -> str | None:
    """The one model the report's attested model nodes serve (spec 0.4 ``model_name``).

    A report resolved for one model whose nodes name different models says nothing certain
    about which model answers: it is refused.

    Raises:
        VerificationFailed: ``attestation.model_ambiguous``.
    """
    names = {signer.model_name for signer in report.attested_signers.values()
             if signer.role == "model" and signer.model_name is not None}
    if len(names) > 1:
        raise VerificationFailed(f"the report for {model} names several models: {sorted(names)}",
                                 code="attestation.model_ambiguous")
    return names.pop() if names else None
