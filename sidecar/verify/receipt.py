"""Re-check receipt lines, without the network or the disk: line bytes and an evidence lookup in,
a report out. Sans-I/O.

``sidecar.receipts`` reads the files (the log and its rotated siblings) and the archived evidence
(``evidence/<sha256>.json``) and hands both here; the recipe for each line:

  (1) the line parses, has exactly the receipt fields, and is chained to the line before it
      (``prev_sha256`` = sha256 of the previous line's bytes), so an edit to a field the enclave
      did not sign (time, model, chat id, verdict) breaks the chain at the edited line;
  (2) the signed text is ``"<request_sha256>:<response_sha256>"`` of this very receipt;
  (3) the signature recovers (ecdsa) or verifies (ed25519) to the receipt's ``signing_address``;
  (4) the archived evidence with the receipt's digest exists and hashes to that digest;
  (5) the signing address is one of the evidence's nodes, and that node's quote REPORTDATA binds
      the address and the receipt's nonce.

What this does not re-check (the quote's signature chain, TCB status, GPU evidence) needs
collateral and NRAS; ``tee-sidecar attest --report`` does that from the same archived body.

The receipt format itself (fields, versions, the line codec) belongs to the log writer in
``sidecar.receipts``; this module takes the decoder as an argument and reads a receipt through
the ``ReceiptFields`` protocol, so the format has one home and the verifier no upward import.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sidecar.errors import VerificationFailed
from sidecar.providers.wire import AttestationDocument, parse_attestation_document
from sidecar.verify.binding import NONCE_LENGTH, check_report_data_binding
from sidecar.verify.checks import Check, CheckedReport, Verdict
from sidecar.verify.signature import (
    AttestedSigner,
    CompletionSignature,
    Role,
    SignatureKind,
    normalise_key,
    parse_signed_text,
    verify_completion_signature,
)
from sidecar.verify.tdx import parse_quote_measurements


class ReceiptFormatError(ValueError):
    """A receipt (or a line claiming to be one) does not have the receipt format."""


class ReceiptFields(Protocol):
    """What the verifier reads of a receipt (``sidecar.receipts.Receipt`` has these fields)."""

    @property
    def request_sha256(self) -> str: ...
    @property
    def response_sha256(self) -> str: ...
    @property
    def text(self) -> str | None: ...
    @property
    def signature(self) -> str | None: ...
    @property
    def signing_address(self) -> str | None: ...
    @property
    def signing_algo(self) -> str | None: ...
    @property
    def evidence_sha256(self) -> str | None: ...
    @property
    def nonce(self) -> str | None: ...
    @property
    def verdict(self) -> str: ...
    @property
    def served_model(self) -> str | None: ...
    @property
    def signature_kind(self) -> str | None: ...
    @property
    def request_binding(self) -> str | None: ...


ReceiptDecoder = Callable[[bytes], tuple[ReceiptFields, str]]
"""Parses one line into the receipt and its ``prev_sha256``; raises ``ReceiptFormatError``."""


class EvidenceMissing(Exception):
    """The lookup has no evidence under that digest (or cannot read it); the message says why."""


class EvidenceRefused(Exception):
    """The lookup refused what it found under that digest (not a regular file, over the bound)."""


class EvidenceLookup(Protocol):
    """Where archived attestation bodies come from (the I/O side implements it)."""

    def evidence_body(self, digest: str) -> bytes:
        """The bytes archived under ``digest`` (64 lower-case hex), unverified.

        Raises:
            EvidenceMissing: nothing readable is archived under it.
            EvidenceRefused: what is there must not be read (not a regular file, too large).
        """
        ...


@dataclass(frozen=True, slots=True)
class ReceiptLine:
    """One line as read: where it is, its bytes, and whether it ended in a newline.

    Attributes:
        file: the receipts file it is in.
        number: 1-based line number in that file.
        raw: the line's bytes (with its newline).
        complete: False for a last line the writer did not finish (no newline).
    """

    file: Path
    number: int
    raw: bytes
    complete: bool


class ReceiptOutcome(StrEnum):
    """What one line of a receipts file turned out to be."""

    VERIFIED = "verified"  # a verified receipt whose proof re-checks
    RECORDED_FAILED = "recorded_failed"  # a well-formed receipt of a completion that failed
    INVALID = "invalid"  # malformed, altered, or its proof does not re-check


@dataclass(frozen=True, slots=True)
class ReceiptLineResult(CheckedReport):
    """The outcome for one line, with every check made on it.

    Attributes:
        file: the receipts file the line is in.
        line: 1-based line number in that file.
        outcome: verified, recorded as failed, or invalid.
        checks: the checks, in order (failing ones say why the line is invalid).
        receipt: the parsed receipt (``None`` when the line did not parse).
        line_sha256: sha256 of the line's bytes (the next line's ``prev_sha256``).
    """

    file: Path
    line: int
    outcome: ReceiptOutcome
    checks: tuple[Check, ...]
    receipt: ReceiptFields | None
    line_sha256: str = ""

    def failure_message(self, check: Check | None) -> str:
        """``<file> line <n>: <detail>``."""
        return f"{self.file.name} line {self.line}: " + (check.detail if check else "not verified")


@dataclass(frozen=True, slots=True)
class ReceiptsReport:
    """The outcome of ``verify_receipt_lines`` (and ``sidecar.receipts.verify_receipts``): one
    result per line, and the counts.

    Attributes:
        files: the files read, oldest first.
        lines: one result per line, in file order.
        head_sha256: sha256 of the last line (compare with a head noted down earlier to detect
            an edit to, or removal of, the newest lines), ``None`` for an empty log.
    """

    files: tuple[Path, ...]
    lines: tuple[ReceiptLineResult, ...]
    head_sha256: str | None

    def _count(self, outcome: ReceiptOutcome) -> int:
        return sum(1 for result in self.lines if result.outcome is outcome)

    @property
    def total(self) -> int:
        """Number of lines."""
        return len(self.lines)

    @property
    def verified(self) -> int:
        """Verified receipts whose proof re-checked."""
        return self._count(ReceiptOutcome.VERIFIED)

    @property
    def recorded_failed(self) -> int:
        """Well-formed receipts of completions that failed verification when they were served."""
        return self._count(ReceiptOutcome.RECORDED_FAILED)

    @property
    def invalid(self) -> int:
        """Lines that are malformed, altered, or whose proof does not re-check."""
        return self._count(ReceiptOutcome.INVALID)

    @property
    def invalid_lines(self) -> tuple[ReceiptLineResult, ...]:
        """The invalid lines' results."""
        return tuple(r for r in self.lines if r.outcome is ReceiptOutcome.INVALID)

    @property
    def ok(self) -> bool:
        """True when no line is invalid."""
        return self.invalid == 0

    def raise_for_failure(self) -> None:
        """Raise for the first invalid line.

        Raises:
            VerificationFailed: with that line's failing check's code, and its line in the message.
        """
        for result in self.invalid_lines:
            result.raise_for_failure()


class _EvidenceCache:
    """Archived attestation bodies, fetched, hash-checked and parsed once per digest."""

    def __init__(self, lookup: EvidenceLookup) -> None:
        self._lookup = lookup
        self._documents: dict[str, AttestationDocument | Check] = {}
        self._report_data: dict[tuple[str, int], bytes | Check] = {}

    def document(self, digest: str) -> AttestationDocument | Check:
        if digest not in self._documents:
            self._documents[digest] = self._load(digest)
        return self._documents[digest]

    def _load(self, digest: str) -> AttestationDocument | Check:
        try:
            body = self._lookup.evidence_body(digest)
        except EvidenceMissing as exc:
            return Check.failed("receipt.evidence", "receipt.evidence_missing", str(exc))
        except EvidenceRefused as exc:
            return Check.failed("receipt.evidence", "receipt.evidence_mismatch", str(exc))
        actual = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(actual, digest):
            return Check.failed("receipt.evidence", "receipt.evidence_mismatch",
                                f"archived evidence {digest} hashes to {actual}")
        try:
            return parse_attestation_document(body)
        except VerificationFailed as exc:
            return Check.failed("receipt.evidence", exc.code, f"archived evidence {digest}: {exc.message}")

    def report_data(self, digest: str, index: int, quote_hex: str | None) -> bytes | Check:
        key = (digest, index)
        if key not in self._report_data:
            self._report_data[key] = _quote_report_data(quote_hex)
        return self._report_data[key]


def _quote_report_data(quote_hex: str | None) -> bytes | Check:
    if not quote_hex:
        return Check.failed("receipt.quote", "tdx.quote_missing", "the node carries no intel_quote")
    try:
        quote = bytes.fromhex(quote_hex.removeprefix("0x"))
    except ValueError:
        return Check.failed("receipt.quote", "tdx.quote_malformed", "intel_quote is not hex")
    # Parsed, not verified: the binding is re-read from the archived quote; its signature chain
    # and TCB are what ``tee-sidecar attest --report`` re-verifies with collateral.
    measurements = parse_quote_measurements(quote)
    if measurements is None:
        return Check.failed("receipt.quote", "tdx.quote_malformed",
                            "intel_quote does not have the TDX quote layout")
    return measurements.report_data


def _check_signature(receipt: ReceiptFields) -> list[Check]:
    assert receipt.text is not None and receipt.signature is not None
    assert receipt.signing_address is not None and receipt.signing_algo is not None
    algo = receipt.signing_algo
    claimed = normalise_key(receipt.signing_address, algo)
    # The receipt's own hashes stand in for "the bytes sent and received": step (2) of the
    # module recipe is then verify_completion_signature's steps (1)-(3); (6) is moot here (the
    # key's attestation is re-checked from the archived evidence instead), so it is given the
    # claimed key and its own (5) decides whether the signature is by that key.
    # The role and model the signer was attested with are re-read from the archived evidence by
    # _check_evidence; here they are taken as the receipt states them. A request the provider
    # renamed (NanoGPT) cannot be re-hashed without its bytes: the receipt's binding says so.
    kind = SignatureKind(receipt.signature_kind) if receipt.signature_kind else None
    role: Role = "gateway" if kind is SignatureKind.GATEWAY else "model"
    checks: list[Check] = []
    request_sha256 = receipt.request_sha256
    if receipt.request_binding == "model_renamed":
        try:
            request_sha256 = parse_signed_text(receipt.text).request_sha256
        except VerificationFailed as exc:
            return [Check.failed("receipt.signature", exc.code, exc.message)]
        checks.append(Check.passed(
            "receipt.request_binding", "the provider renamed the model in the request (spec "
            "0.1): the sidecar checked the rename when it delivered; without the request "
            "bytes it is taken as recorded"))
    report = verify_completion_signature(
        CompletionSignature(receipt.text, receipt.signature, receipt.signing_address, algo, kind),
        request_sha256=request_sha256, response_sha256=receipt.response_sha256,
        attested={claimed: AttestedSigner(claimed, algo, role, receipt.served_model)},
        expected_model=receipt.served_model, unkinded_roles=frozenset({"model"}))
    failure = report.failure
    if failure is None:
        return checks + [Check.passed(
            "receipt.signature", f"{algo} signature by {report.signer} over request and response "
                                 "hashes")]
    if failure.code == "signature.address_mismatch":
        return checks + [Check.failed("receipt.signature", failure.code,
                                      f"signature recovers {report.signer} not {claimed}")]
    return checks + [Check.failed("receipt.signature", failure.code or "signature.invalid",
                                  failure.detail)]


def _check_evidence(receipt: ReceiptFields, archive: _EvidenceCache) -> list[Check]:
    assert receipt.evidence_sha256 is not None and receipt.nonce is not None
    assert receipt.signing_address is not None and receipt.signing_algo is not None
    digest = receipt.evidence_sha256
    document = archive.document(digest)
    if isinstance(document, Check):
        return [document]
    checks = [Check.passed("receipt.evidence", f"archived evidence hashes to {digest}")]
    algo = receipt.signing_algo
    claimed = normalise_key(receipt.signing_address, algo)
    candidates = [(index, claim) for index, claim in enumerate(document.nodes)
                  if claim.wire.signing_algo == algo
                  and normalise_key(claim.wire.signing_address, algo) == claimed]
    if not candidates:
        checks.append(Check.failed("receipt.node", "receipt.signer_not_in_evidence",
                                   f"{claimed} is not an {algo} node of evidence {digest}"))
        return checks
    nonce = bytes.fromhex(receipt.nonce)
    assert len(nonce) == NONCE_LENGTH
    attempts: list[list[Check]] = []
    for index, claim in candidates:
        node_checks = [Check.passed("receipt.node", f"{claimed} is node {claim.label}")]
        report_data = archive.report_data(digest, index, claim.wire.intel_quote)
        if isinstance(report_data, Check):
            attempts.append(node_checks + [report_data])
            continue
        fingerprint_hex = claim.wire.tls_cert_fingerprint
        try:
            fingerprint = bytes.fromhex(fingerprint_hex) if fingerprint_hex is not None else None
        except ValueError:
            attempts.append(node_checks + [Check.failed(
                "binding.tls", "binding.tls_malformed", "tls_cert_fingerprint is not hex")])
            continue
        node_checks.extend(check_report_data_binding(
            report_data, signing_address=receipt.signing_address, algo=algo, nonce=nonce,
            tls_fingerprint=fingerprint))
        node_checks.append(_check_signer_standing(receipt, claim.role, claim.wire.model_name))
        if all(check.ok for check in node_checks):
            return checks + node_checks
        attempts.append(node_checks)
    # No node with this key binds it under this nonce: show the first node's reasons.
    return checks + attempts[0]


def _check_signer_standing(receipt: ReceiptFields, role: str, model_name: str | None) -> Check:
    """The archived node is what the receipt says signed: a gateway for a gateway-kind record,
    else a model node, serving the receipt's ``served_model`` (spec 0.2)."""
    wanted = "gateway" if receipt.signature_kind == "gateway" else "model"
    if role != wanted:
        return Check.failed("receipt.signer_role", "receipt.signer_role_mismatch",
                            f"the signer is a {role} node of the evidence; the record needs a "
                            f"{wanted} key")
    if receipt.served_model is not None and model_name != receipt.served_model:
        return Check.failed("receipt.signer_role", "receipt.served_model_mismatch",
                            f"the evidence names model {model_name!r} for the signer, not "
                            f"{receipt.served_model!r}")
    return Check.passed("receipt.signer_role", f"a {role} node"
                        + (f" serving {model_name}" if model_name else ""))


@dataclass
class _Line:
    file: Path
    number: int
    digest: str
    checks: list[Check]
    receipt: ReceiptFields | None
    prev: str | None


def verify_receipt_lines(files: Iterable[Path], lines: Iterable[ReceiptLine], *,
                         decode: ReceiptDecoder, evidence: EvidenceLookup) -> ReceiptsReport:
    """Re-check receipt lines in order (see the module docstring for the recipe).

    Each line must parse with exactly the receipt fields; a ``verified`` receipt must also prove
    itself from the archived evidence. Lines are chained (``prev_sha256``), so a line whose
    successor records another digest for it is reported as altered; the first line's
    ``prev_sha256`` is taken as given.

    Args:
        files: the files the lines come from, oldest first (carried into the report).
        lines: every line of those files, in order.
        decode: the receipt format's line decoder.
        evidence: where archived attestation bodies are looked up.

    Returns:
        The report; ``report.ok`` when no line is invalid.
    """
    cache = _EvidenceCache(evidence)
    checked = [_verify_line(line, decode, cache) for line in lines]

    # (1) The chain: each line's prev_sha256 must be the digest of the line before it. A broken
    # link most likely means the earlier line was edited, so that is the line reported.
    for earlier, later in itertools.pairwise(checked):
        if later.prev is None or hmac.compare_digest(later.prev, earlier.digest):
            continue
        where = (f"line {later.number}" if later.file == earlier.file
                 else f"{later.file.name} line {later.number}")
        earlier.checks.append(Check.failed(
            "receipt.chain", "receipt.chain_broken",
            f"line hashes to {earlier.digest}, but {where} records {later.prev} before it: this "
            f"line was altered, or lines were removed or inserted after it"))

    results = tuple(_result(line) for line in checked)
    return ReceiptsReport(tuple(files), results, checked[-1].digest if checked else None)


def _verify_line(read: ReceiptLine, decode: ReceiptDecoder, archive: _EvidenceCache) -> _Line:
    line = _Line(read.file, read.number, hashlib.sha256(read.raw).hexdigest(), [], None, None)
    if not read.complete:
        line.checks.append(Check.failed(
            "receipt.format", "receipt.torn",
            "torn last line (no newline): the writer stopped mid-write; opening the log repairs it"))
        return line
    try:
        receipt, line.prev = decode(read.raw)
    except ReceiptFormatError as exc:
        line.checks.append(Check.failed("receipt.format", "receipt.malformed", str(exc)))
        return line
    line.receipt = receipt
    line.checks.append(Check.passed("receipt.format", "a receipt of a known format"))
    if receipt.verdict == Verdict.VERIFIED:
        # (2), (3): the enclave's signature; (4), (5): the key's attestation from the archive.
        line.checks.extend(_check_signature(receipt))
        line.checks.extend(_check_evidence(receipt, archive))
    return line


def _result(line: _Line) -> ReceiptLineResult:
    if any(not check.ok for check in line.checks) or line.receipt is None:
        outcome = ReceiptOutcome.INVALID
    elif line.receipt.verdict == Verdict.VERIFIED:
        outcome = ReceiptOutcome.VERIFIED
    else:
        outcome = ReceiptOutcome.RECORDED_FAILED
    return ReceiptLineResult(line.file, line.number, outcome, tuple(line.checks), line.receipt,
                             line.digest)


__all__ = [
    "EvidenceLookup",
    "EvidenceMissing",
    "EvidenceRefused",
    "ReceiptDecoder",
    "ReceiptFields",
    "ReceiptFormatError",
    "ReceiptLine",
    "ReceiptLineResult",
    "ReceiptOutcome",
    "ReceiptsReport",
    "verify_receipt_lines",
]
