"""Intel TDX quote verification (DCAP), sans-I/O.

The quote, its DCAP collateral (TCB info, QE identity, CRLs and their issuer chains), a trust
anchor and the clock come in; a :class:`TdxQuoteReport` of named :class:`~sidecar.verify.checks.Check`
records comes out. The cryptography is done by Phala's ``dcap-qvl`` (PyPI ``dcap-qvl`` 0.7,
``verify_with_root_ca``), the same library NEAR's verifier uses; this module adds what a
zero-trust client needs around it: strict structure checks before the library sees the bytes,
bounds, the TCB status and advisories as facts for the policy to judge (provider-api.md
section 2: reference verifiers accept ``OutOfDate`` unconditionally; our policy does not), typed
failure codes, and measurements read only from a quote that verified.

Algorithm of :func:`verify_tdx_quote`:

    (1) Bound the quote size and walk its layout ourselves: header (version 4 or 5, ECDSA-P256
        attestation key, TEE type TDX, Intel QE vendor id), a TD report body, signature data whose
        length fields add up *exactly* (only zero padding may follow, as Intel's quote generation
        leaves it), certification data type 6 (QE report certification data) nesting type 5: PEM
        certificates and nothing else. dcap-qvl checks none of the outer type, the trailing
        bytes or the text around the PEM blocks, and those bytes are outside every signature.
        Then TDATTRIBUTES: a DEBUG TD fails (``tdx.debug_enabled``), with or without collateral.
    (2) No collateral → the check is INCOMPLETE (``tdx.collateral_missing``), never a pass.
    (3) Bound and decode the collateral JSON; drop any ``pck_certificate_chain`` in it, because
        dcap-qvl *prefers* that chain over the one inside the quote (src/verify.rs,
        ``verify_pck_cert_chain``) and we verify the quote's own chain.
    (4) The quote's embedded chain must end in ``root_ca_der`` itself (webpki ignores that copy,
        so otherwise its bytes would be malleable). Then ``dcap_qvl.verify_with_root_ca``: every
        chain to ``root_ca_der``, both CRLs, TCB info and QE identity signatures and validity
        windows at ``now``, the PCK signature over the QE
        report, the QE report binding of the attestation key, the quote signature over header ‖
        body, the TDX module identity, debug/reserved TD attributes, and the TCB level match.
    (5) Report the TCB status and advisories as facts; the policy (``sidecar.verify.policy``,
        ``AcceptedTcbStatuses``/``ToleratedAdvisories``) is the one gate that judges them.
    (6) Only now read the measurements, from the verified bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import dcap_qvl
from cryptography import x509

from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.verify.checks import Check, CheckedReport

__all__ = [
    "MAX_COLLATERAL_BYTES",
    "MAX_QUOTE_BYTES",
    "TdxMeasurements",
    "TdxQuoteReport",
    "collateral_next_update",
    "parse_quote_measurements",
    "quote_platform",
    "td_attributes",
    "verify_tdx_quote",
]

#: A real v4 quote with its PEM chain is ~5 KB; 64 KiB leaves room for long chains while keeping
#: a hostile provider from making us parse megabytes per request.
MAX_QUOTE_BYTES = 64 * 1024
#: Real collateral is 15-20 KB; the processor-CA PCK CRL of Intel can reach a few hundred KB.
#: Anything above this is not collateral.
MAX_COLLATERAL_BYTES = 2 * 1024 * 1024

# Quote layout (Intel TDX DCAP quote v4/v5; provider-api.md section 5).
_HEADER_LEN = 48
_TD_REPORT10_LEN = 584
_TD_REPORT15_LEN = 648
_V5_BODY_TYPES = {2: _TD_REPORT10_LEN, 3: _TD_REPORT15_LEN}  # TD report 1.0 / 1.5
_ACCEPTED_QUOTE_VERSIONS = (4, 5)
_ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
_TEE_TYPE_TDX = 0x81
_INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
_CERT_DATA_QE_REPORT = 6
_CERT_DATA_PCK_CHAIN = 5
_ECDSA_SIG_LEN = 64
_ECDSA_KEY_LEN = 64
_QE_REPORT_LEN = 384

# The nested PCK chain: PEM certificates and nothing else, then optional NUL termination (Intel's
# quote library NUL-terminates it). Text between PEM blocks would be ignored by the PEM parser
# yet is covered by no signature, so it is refused: every byte of a quote must matter.
_PEM_CHAIN = re.compile(
    rb"(?:-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----(?:\r?\n)?)+"
)

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\r\n]+)-----END CERTIFICATE-----")

# TDATTRIBUTES: 8 bytes at offset 120 of the TD report body (after TEE_TCB_SVN 16, MRSEAM 48,
# MRSIGNERSEAM 48, SEAMATTRIBUTES 8; Intel TDX DCAP quote format, TD report body; checked against
# dcap_qvl.parse_quote(...).report.td_attributes on the shared samples). Bit 0 is DEBUG: the
# host VMM can then read and write the TD's memory and registers, so nothing it attests is secret.
_TD_ATTRIBUTES_OFFSET = 120
_TD_ATTRIBUTES_DEBUG = 0x01

_CHECK_FORMAT = "tdx.quote_format"
_CHECK_ATTRIBUTES = "tdx.td_attributes"
_CHECK_COLLATERAL = "tdx.collateral"
_CHECK_SIGNATURE = "tdx.quote_signature"
_CHECK_TCB = "tdx.tcb_status"


@dataclass(frozen=True)
class TdxMeasurements:
    """Measurement registers of a TD, read from a verified quote's TD report only.

    Attributes:
        mrtd: MRTD, the initial TD memory measurement (48 bytes).
        rtmr0: RTMR0..RTMR3, runtime measurement registers (48 bytes each).
        report_data: REPORTDATA (64 bytes): signing key and nonce binding (spec section 2).
        mr_config_id: MRCONFIGID (48 bytes): ``0x01 ‖ sha256(app_compose)`` on dstack.
    """

    mrtd: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    mr_config_id: bytes


@dataclass(frozen=True)
class TdxQuoteReport(CheckedReport):
    """Outcome of :func:`verify_tdx_quote`.

    Attributes:
        checks: the checks that ran, in order; verification stops at the first failure.
        tcb_status: Intel TCB status when the signature verified, else ``None``. A fact, not a
            verdict: ``ok`` does not mean it is acceptable; the policy judges it.
        advisory_ids: Intel security advisories that apply to the platform (a fact, likewise).
        measurements: the TD's registers; ``None`` unless every check passed, so that no caller
            can act on measurements of an unverified quote.
    """

    checks: tuple[Check, ...]
    tcb_status: str | None
    advisory_ids: tuple[str, ...]
    measurements: TdxMeasurements | None

    empty_code: ClassVar[str] = "tdx.quote_invalid"

    def failure_message(self, check: Check | None) -> str:
        """``<check>: <detail>``; for no checks, that the quote was not verified."""
        return f"{check.name}: {check.detail}" if check else "TDX quote was not verified"

    def verified_measurements(self) -> TdxMeasurements:
        """The verified measurements, or raise for the first failing check.

        Raises:
            VerificationIncomplete: a check could not be decided (e.g. no collateral).
            VerificationFailed: the quote or its collateral failed.
        """
        self.raise_for_failure()
        if self.measurements is None:
            raise VerificationFailed(self.failure_message(None), code=self.empty_code)
        return self.measurements


class _Malformed(ValueError):
    """Internal: the quote bytes do not have the TDX quote layout."""


def _check_quote_layout(quote: bytes) -> tuple[str, list[bytes]]:
    """Walk the quote layout; return a one-line description and the embedded chain (DER, leaf first).

    Raises:
        _Malformed: on any deviation, with the reason.
    """
    if len(quote) > MAX_QUOTE_BYTES:
        raise _Malformed(f"quote is {len(quote)} bytes, more than the {MAX_QUOTE_BYTES} allowed")
    if len(quote) < _HEADER_LEN:
        raise _Malformed(f"quote is {len(quote)} bytes, shorter than its 48-byte header")
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if version not in _ACCEPTED_QUOTE_VERSIONS:
        raise _Malformed(f"quote version {version} is not a TDX quote version (4 or 5)")
    if tee_type != _TEE_TYPE_TDX:
        raise _Malformed(f"TEE type 0x{tee_type:x} is not TDX (0x81)")
    if key_type != _ATTESTATION_KEY_TYPE_ECDSA_P256:
        raise _Malformed(f"attestation key type {key_type} is not ECDSA-P256 (2)")
    if quote[12:28] != _INTEL_QE_VENDOR_ID:
        raise _Malformed(f"QE vendor id {quote[12:28].hex()} is not Intel's")

    offset = _HEADER_LEN
    body_len = _TD_REPORT10_LEN
    if version == 5:
        body_type, body_size = _unpack("<HI", quote, offset, "v5 body descriptor")
        if _V5_BODY_TYPES.get(body_type) != body_size:
            raise _Malformed(f"v5 body type {body_type} with size {body_size} is not a TD report")
        offset += 6
        body_len = body_size
    offset += body_len
    (sig_len,) = _unpack("<I", quote, offset, "signature data length")
    offset += 4
    end = offset + sig_len
    if end > len(quote):
        raise _Malformed(
            f"signature data length field says {sig_len} bytes, only {len(quote) - offset} follow"
        )
    # Intel's quote generation hands out a fixed-size buffer: real quotes end in zero padding
    # after the signature data. Padding is outside every signature, so only zeros are allowed.
    if any(quote[end:]):
        raise _Malformed(f"{len(quote) - end} bytes after the signature data are not zero padding")

    offset += _ECDSA_SIG_LEN + _ECDSA_KEY_LEN
    cert_type, cert_size = _unpack("<HI", quote, offset, "certification data header", end)
    offset += 6
    if cert_type != _CERT_DATA_QE_REPORT:
        raise _Malformed(f"certification data type {cert_type} is not 6 (QE report)")
    if end - offset != cert_size:
        raise _Malformed(
            f"certification data length field says {cert_size} bytes, the signature data holds "
            f"{end - offset}"
        )

    offset += _QE_REPORT_LEN + _ECDSA_SIG_LEN
    (auth_len,) = _unpack("<H", quote, offset, "QE authentication data length", end)
    offset += 2 + auth_len
    inner_type, inner_size = _unpack("<HI", quote, offset, "nested certification data header", end)
    offset += 6
    if inner_type != _CERT_DATA_PCK_CHAIN:
        raise _Malformed(f"nested certification data type {inner_type} is not 5 (PCK chain)")
    if end - offset != inner_size:
        raise _Malformed(
            f"PCK chain length field says {inner_size} bytes, the certification data holds "
            f"{end - offset}"
        )
    chain = quote[offset:end].rstrip(b"\x00")
    if not _PEM_CHAIN.fullmatch(chain):
        raise _Malformed("PCK chain is not a sequence of PEM certificates")
    try:
        certificates = [
            base64.b64decode(b"".join(block.split()), validate=True)
            for block in _PEM_BLOCK.findall(chain)
        ]
    except binascii.Error as exc:
        raise _Malformed(f"PCK chain holds invalid base64: {exc}") from exc
    description = (
        f"TDX quote v{version}, {len(quote)} bytes, PCK chain of {len(certificates)} certificates"
    )
    return description, certificates


def _unpack(
    fmt: str, data: bytes, offset: int, what: str, limit: int | None = None
) -> tuple[int, ...]:
    # Offsets start at the 48-byte header and only grow by constants and unsigned length fields,
    # so only the end can be overrun.
    size = struct.calcsize(fmt)
    if offset + size > (len(data) if limit is None else limit):
        raise _Malformed(f"quote is truncated: {what} at offset {offset} is missing")
    return struct.unpack_from(fmt, data, offset)


def _is_library_failure(exc: BaseException) -> bool:
    """True for errors a hostile input can provoke inside dcap-qvl.

    pyo3 turns a Rust panic into ``pyo3_runtime.PanicException``, which derives from
    ``BaseException``; it must fail the check, not escape. Interrupts and cancellation still
    propagate.
    """
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _one_line(exc: BaseException) -> str:
    """dcap-qvl (anyhow) errors span lines ("…\\n\\nCaused by:\\n    …"); headers need one."""
    parts = [part.strip() for part in str(exc).splitlines() if part.strip()]
    text = " ".join(parts).replace("Caused by:", "caused by:")
    return text.removeprefix("Verification failed: ") or type(exc).__name__


def _classify_library_error(message: str) -> str:
    """Map a dcap-qvl failure to a stable failure code (messages from src/verify.rs, webpki)."""
    lowered = message.lower()
    if "issue date is in the future" in lowered or "certnotvalidyet" in lowered:
        return "tdx.collateral_not_yet_valid"
    if "expired" in lowered:  # "TCBInfo expired", "QE Identity expired", CrlExpired, CertExpired
        return "tdx.collateral_expired"
    if "no matching tcb level" in lowered or "below minimum" in lowered:
        return "tdx.tcb_level_unmatched"
    if "tcb status is invalid" in lowered:  # Revoked
        return "tdx.tcb_revoked"
    return "tdx.quote_invalid"


def _decode_collateral(collateral_json: str) -> Any:
    """Decode and sanitise collateral JSON into a ``dcap_qvl.QuoteCollateralV3``.

    Raises:
        ValueError: if it is oversized, not a JSON object, or rejected by dcap-qvl.
    """
    if len(collateral_json) > MAX_COLLATERAL_BYTES:
        raise ValueError(
            f"collateral is {len(collateral_json)} characters, "
            f"more than the {MAX_COLLATERAL_BYTES} allowed"
        )
    document = json.loads(collateral_json)
    if not isinstance(document, dict):
        raise ValueError("collateral is not a JSON object")
    # Step (3): verify the chain *inside the quote*, never one substituted by the collateral.
    document.pop("pck_certificate_chain", None)
    return dcap_qvl.QuoteCollateralV3.from_json(json.dumps(document))


def verify_tdx_quote(
    quote: bytes,
    collateral_json: str | None,
    *,
    root_ca_der: bytes,
    now: int,
) -> TdxQuoteReport:
    """Verify a TDX DCAP quote against its collateral and a trust anchor.

    Args:
        quote: the raw quote (``intel_quote`` of the attestation report, hex-decoded).
        collateral_json: DCAP collateral in ``QuoteCollateralV3`` JSON form, or ``None`` if it
            could not be obtained (the result is then incomplete, never verified).
        root_ca_der: the trust anchor: Intel's SGX root CA in production
            (``sidecar/anchors/intel_sgx_root_ca.der``), the simulator's test root in demos.
        now: the current time, unix seconds (injected so tests can freeze it).

    Returns:
        The report; ``report.ok`` is true only when every step passed. This function does not
        raise on bad evidence: call :meth:`TdxQuoteReport.raise_for_failure` to fail closed.
    """
    checks: list[Check] = []

    def finish() -> TdxQuoteReport:
        # A report that stops early has no TCB facts and no measurements.
        return TdxQuoteReport(tuple(checks), None, (), None)

    # (1) Structure, before any library parses the bytes; then the DEBUG attribute.
    structure, embedded_chain = _check_structure(bytes(quote))
    checks.extend(structure)
    if embedded_chain is None:
        return finish()

    # (2) Without collateral nothing can be decided.
    if collateral_json is None:
        checks.append(
            Check.incomplete(
                _CHECK_COLLATERAL,
                "tdx.collateral_missing",
                "no DCAP collateral (TCB info, QE identity, CRLs) was available for this quote",
            )
        )
        return finish()

    # (3) Collateral document.
    collateral, decoded = _check_collateral(collateral_json)
    checks.append(decoded)
    if not decoded.ok:
        return finish()

    # (4) Chains, CRLs, signatures, validity windows, TCB level: dcap-qvl.
    signature, verified = _check_signatures(
        bytes(quote), collateral, embedded_chain, root_ca_der, now
    )
    checks.append(signature)
    if verified is None:
        return finish()
    tcb_status, advisories, parsed = verified

    # (5) The TCB status and advisories are facts of the verified platform, reported here and
    # judged once, by the policy (``policy.tcb_status``, ``policy.advisories``).
    advisory_text = ", ".join(advisories) or "none"
    checks.append(
        Check.passed(_CHECK_TCB, f"TCB status {tcb_status} (advisories: {advisory_text}); the "
                                 "policy judges them")
    )

    # (6) Measurements, from the bytes that just verified.
    return TdxQuoteReport(tuple(checks), tcb_status, advisories, _measurements(parsed.report))


def _check_structure(quote: bytes) -> tuple[list[Check], list[bytes] | None]:
    """Step (1): the quote's layout, then its TD attributes.

    Returns the checks and the quote's embedded PCK chain (``None`` when a check failed).
    """
    try:
        layout, embedded_chain = _check_quote_layout(quote)
    except _Malformed as exc:
        return [Check.failed(_CHECK_FORMAT, "tdx.quote_invalid", str(exc))], None
    checks = [Check.passed(_CHECK_FORMAT, layout)]
    # A DEBUG TD is refused from the body itself, before and without collateral, so an offline
    # check fails it too (dcap-qvl refuses it as well, but only once collateral is at hand).
    attributes = td_attributes(quote)
    if attributes[0] & _TD_ATTRIBUTES_DEBUG:
        checks.append(Check.failed(_CHECK_ATTRIBUTES, "tdx.debug_enabled",
                                   f"TD attributes {attributes.hex()} have DEBUG set: the host "
                                   "can read and change the TD"))
        return checks, None
    checks.append(Check.passed(_CHECK_ATTRIBUTES, f"TD attributes {attributes.hex()}: DEBUG clear"))
    return checks, embedded_chain


def _check_collateral(collateral_json: str) -> tuple[Any, Check]:
    """Step (3): decode the collateral document; returns it (``None`` if it failed) and the check.

    Raises:
        Nothing of its own: an interrupt (or any error that is not the library's) propagates.
    """
    try:
        collateral = _decode_collateral(collateral_json)
    except BaseException as exc:
        if not _is_library_failure(exc):
            raise
        return None, Check.failed(
            _CHECK_COLLATERAL, "tdx.collateral_invalid", f"collateral: {_one_line(exc)}"
        )
    return collateral, Check.passed(_CHECK_COLLATERAL, "collateral decoded")


def _check_signatures(
    quote: bytes, collateral: Any, embedded_chain: list[bytes], root_ca_der: bytes, now: int
) -> tuple[Check, tuple[str, tuple[str, ...], Any] | None]:
    """Step (4): the embedded root, then ``dcap_qvl.verify_with_root_ca``.

    Returns the check and, when it passed, the TCB status, the advisory ids and the parsed quote.

    Raises:
        Nothing of its own: an interrupt (or any error that is not the library's) propagates.
    """
    # webpki builds the path to the anchor we pass and never looks at the root *copy* inside the
    # quote, so those bytes would be malleable; a genuine quote carries exactly the root we trust.
    if embedded_chain[-1:] != [root_ca_der]:
        return Check.failed(
            _CHECK_SIGNATURE,
            "tdx.quote_invalid",
            "the quote's PCK chain does not end in the trusted root CA certificate",
        ), None
    try:
        verified = dcap_qvl.verify_with_root_ca(quote, collateral, root_ca_der, now)
        parsed = dcap_qvl.parse_quote(quote)
        tcb_status = str(verified.status)
        advisories = tuple(str(a) for a in verified.advisory_ids)
    except BaseException as exc:
        if not _is_library_failure(exc):
            raise
        message = _one_line(exc)
        return Check.failed(_CHECK_SIGNATURE, _classify_library_error(message), message), None
    return Check.passed(
        _CHECK_SIGNATURE,
        f"quote, QE report and collateral verify to the given root (FMSPC {parsed.fmspc()})",
    ), (tcb_status, advisories, parsed)


def quote_platform(quote: bytes) -> tuple[str, str]:
    """The FMSPC (12 upper-case hex digits) and PCK CA type (``platform``/``processor``) of a quote.

    Read from the PCK leaf certificate embedded in the quote; nothing here is verified
    (:func:`verify_tdx_quote` does that), it only selects which collateral to fetch, so a quote
    whose platform cannot be read leaves the collateral, and the verdict, undecided.

    Raises:
        VerificationIncomplete: if the quote carries no readable PCK certificate.
    """
    if len(quote) > MAX_QUOTE_BYTES:
        raise _platform_unreadable(f"quote is {len(quote)} bytes, more than the {MAX_QUOTE_BYTES} allowed")
    try:
        parsed = dcap_qvl.parse_quote(bytes(quote))
        fmspc = str(parsed.fmspc()).upper()
        ca = str(parsed.ca())
    except BaseException as exc:
        # dcap-qvl raises ValueError, and pyo3 turns a Rust panic into PanicException (a
        # BaseException): neither may escape on a hostile quote. Interrupts still propagate.
        if not _is_library_failure(exc):
            raise
        raise _platform_unreadable(f"cannot read the platform (FMSPC) from the quote: {exc}") from exc
    if len(fmspc) != 12 or any(c not in "0123456789ABCDEF" for c in fmspc):
        raise _platform_unreadable(f"quote names an invalid FMSPC {fmspc[:40]!r}")
    if ca not in ("platform", "processor"):
        raise _platform_unreadable(f"quote names an unknown PCK CA {ca[:40]!r}")
    return fmspc, ca


def _platform_unreadable(message: str) -> VerificationIncomplete:
    # Without the platform no collateral can be fetched: the same code as a PCS that is down.
    return VerificationIncomplete(message, code="tdx.collateral_unavailable")


def td_attributes(quote: bytes) -> bytes:
    """The 8 TDATTRIBUTES bytes of a quote whose layout :func:`verify_tdx_quote` accepted.

    Raises:
        ValueError: the quote is too short to hold a TD report body.
    """
    # The little-endian version field; a quote too short to hold it fails the length test below.
    version = int.from_bytes(quote[:2], "little")
    start = _HEADER_LEN + (6 if version == 5 else 0) + _TD_ATTRIBUTES_OFFSET
    if len(quote) < start + 8:
        raise ValueError("quote too short for a TD report body")
    return quote[start:start + 8]


def parse_quote_measurements(quote: bytes) -> TdxMeasurements | None:
    """Read a quote's registers WITHOUT verifying anything: for display of undecided evidence.

    An offline report (no collateral) still shows what the quote claims, and later checks can run
    against it, but the verdict must stay incomplete: nothing here is attested. Returns ``None``
    if the bytes do not have the TDX quote layout.
    """
    try:
        _check_quote_layout(bytes(quote))  # same structural bar as verification
        return _measurements(dcap_qvl.parse_quote(bytes(quote)).report)
    except BaseException as exc:
        if not _is_library_failure(exc):
            raise
        return None


def _measurements(report: Any) -> TdxMeasurements:
    return TdxMeasurements(
        mrtd=bytes(report.mr_td),
        rtmr0=bytes(report.rt_mr0),
        rtmr1=bytes(report.rt_mr1),
        rtmr2=bytes(report.rt_mr2),
        rtmr3=bytes(report.rt_mr3),
        report_data=bytes(report.report_data),
        mr_config_id=bytes(report.mr_config_id),
    )


def collateral_next_update(collateral_json: str) -> int:
    """When cached collateral must be refreshed: the earliest ``nextUpdate`` in it (unix seconds).

    Takes the minimum over TCB info, QE identity, the PCK CRL and the root CA CRL, because
    verification fails as soon as any one of them expires.

    Raises:
        VerificationFailed: (code ``tdx.collateral_invalid``) if the collateral cannot be read.
    """
    try:
        if len(collateral_json) > MAX_COLLATERAL_BYTES:
            raise ValueError("collateral is oversized")
        document = json.loads(collateral_json)
        deadlines = [
            _rfc3339(json.loads(document["tcb_info"])["nextUpdate"]),
            _rfc3339(json.loads(document["qe_identity"])["nextUpdate"]),
        ]
        for field in ("pck_crl", "root_ca_crl"):
            crl = x509.load_der_x509_crl(bytes.fromhex(document[field]))
            if crl.next_update_utc is None:
                raise ValueError(f"{field} has no nextUpdate")
            deadlines.append(int(crl.next_update_utc.timestamp()))
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationFailed(
            f"cannot read collateral validity: {exc}", code="tdx.collateral_invalid"
        ) from exc
    return min(deadlines)


def _rfc3339(text: Any) -> int:
    if not isinstance(text, str):
        raise TypeError("nextUpdate is not a string")
    # Python 3.11's fromisoformat reads Intel's trailing "Z" as UTC itself.
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        # A naive time would silently be read in the local zone; Intel always writes UTC "Z".
        raise ValueError(f"nextUpdate {text!r} has no time zone")
    return int(moment.timestamp())
