"""``sidecar/verify/tdx.py`` at its fail-closed edges: ``TdxQuoteReport``, ``quote_platform``, a
panic inside dcap-qvl, and collateral whose validity cannot be read.

``verify_tdx_quote`` always runs the format check and never returns passing checks without
measurements; a report built any other way (a caller's, a future refactor's) must still refuse
to hand out measurements, with the message and code a user reads. ``quote_platform`` selects
the collateral to fetch: a quote it cannot read leaves the verdict undecided, with the same code
as an unreachable PCS.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.verify.checks import Check
from sidecar.verify.tdx import (
    MAX_COLLATERAL_BYTES,
    MAX_QUOTE_BYTES,
    TdxQuoteReport,
    collateral_next_update,
    parse_quote_measurements,
    quote_platform,
    verify_tdx_quote,
)

ASSETS = Path(__file__).parent / "assets" / "tdx"
REAL_QUOTE = (ASSETS / "tdx_quote").read_bytes()
REAL_COLLATERAL = (ASSETS / "tdx_quote_collateral.json").read_text()
INTEL_ROOT = (Path(__file__).parent.parent / "sidecar" / "anchors" / "intel_sgx_root_ca.der").read_bytes()
REAL_NOW = 1750331763  # inside every validity window of the real collateral (test_tdx_quote.py)


def test_a_report_without_checks_verified_nothing() -> None:
    report = TdxQuoteReport((), None, (), None)

    assert not report.ok
    for call in (report.raise_for_failure, report.verified_measurements):
        with pytest.raises(VerificationFailed) as raised:
            call()
        assert type(raised.value) is VerificationFailed
        assert (raised.value.code, raised.value.message) == (
            "tdx.quote_invalid", "TDX quote was not verified")


def test_passing_checks_without_measurements_still_refuse_to_hand_any_out() -> None:
    report = TdxQuoteReport((Check.passed("tdx.quote_format", "fine"),), "UpToDate", (), None)

    assert report.ok
    with pytest.raises(VerificationFailed) as raised:
        report.verified_measurements()
    assert (raised.value.code, raised.value.message) == (
        "tdx.quote_invalid", "TDX quote was not verified")


def test_a_failed_check_is_raised_as_its_name_and_detail() -> None:
    report = TdxQuoteReport((Check.failed("tdx.quote_format", "tdx.quote_invalid", "bad"),),
                            None, (), None)

    with pytest.raises(VerificationFailed) as raised:
        report.verified_measurements()
    assert (raised.value.code, raised.value.message) == ("tdx.quote_invalid",
                                                         "tdx.quote_format: bad")


@pytest.mark.parametrize(("quote", "message"), [
    pytest.param(b"", "cannot read the platform (FMSPC) from the quote: ", id="empty"),
    pytest.param(b"\x04\x00" + bytes(1000), "cannot read the platform (FMSPC) from the quote: ",
                 id="zeros"),
    pytest.param(REAL_QUOTE + bytes(MAX_QUOTE_BYTES),
                 f"quote is {len(REAL_QUOTE) + MAX_QUOTE_BYTES} bytes, more than the "
                 f"{MAX_QUOTE_BYTES} allowed", id="oversized"),
])
def test_a_quote_without_a_readable_platform_is_undecided(quote: bytes, message: str) -> None:
    with pytest.raises(VerificationIncomplete) as raised:
        quote_platform(quote)
    assert raised.value.code == "tdx.collateral_unavailable"
    assert raised.value.message.startswith(message)


def test_a_quote_of_exactly_the_bound_is_read_and_verified_one_byte_more_is_not() -> None:
    # The real quote padded with zeros (which its layout allows) to the byte limit.
    padded = REAL_QUOTE + bytes(MAX_QUOTE_BYTES - len(REAL_QUOTE))
    assert quote_platform(padded) == ("B0C06F000000", "platform")
    assert verify_tdx_quote(padded, REAL_COLLATERAL, root_ca_der=INTEL_ROOT, now=REAL_NOW).ok
    assert parse_quote_measurements(padded) is not None

    over = padded + bytes(1)
    report = verify_tdx_quote(over, REAL_COLLATERAL, root_ca_der=INTEL_ROOT, now=REAL_NOW)
    assert report.failure is not None
    assert (report.failure.name, report.failure.code, report.failure.detail) == (
        "tdx.quote_format", "tdx.quote_invalid",
        f"quote is {MAX_QUOTE_BYTES + 1} bytes, more than the {MAX_QUOTE_BYTES} allowed")
    assert parse_quote_measurements(over) is None


# --- a Rust panic inside dcap-qvl fails the check; an interrupt still propagates ----------------


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic: ``pyo3_runtime.PanicException``, a ``BaseException``
    (so a plain ``except Exception`` would let a hostile quote crash the caller)."""


def _raising(exc: BaseException) -> Any:
    def call(*args: object, **kwargs: object) -> Any:
        raise exc
    return call


def test_a_panic_in_the_quote_verification_fails_the_signature_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dcap_qvl, "verify_with_root_ca",
                        _raising(PanicException("index out of bounds: the len is 4")))
    report = verify_tdx_quote(REAL_QUOTE, REAL_COLLATERAL, root_ca_der=INTEL_ROOT, now=REAL_NOW)

    assert report.failure is not None
    assert (report.failure.name, report.failure.code, report.failure.detail) == (
        "tdx.quote_signature", "tdx.quote_invalid", "index out of bounds: the len is 4")
    assert report.measurements is None


def test_a_panic_while_decoding_collateral_fails_the_collateral_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Collateral:
        from_json = staticmethod(_raising(PanicException("attempt to subtract with overflow")))

    monkeypatch.setattr(dcap_qvl, "QuoteCollateralV3", Collateral)
    report = verify_tdx_quote(REAL_QUOTE, REAL_COLLATERAL, root_ca_der=INTEL_ROOT, now=REAL_NOW)

    assert report.failure is not None
    assert (report.failure.name, report.failure.code, report.failure.detail) == (
        "tdx.collateral", "tdx.collateral_invalid", "collateral: attempt to subtract with overflow")


def test_a_panic_while_reading_measurements_is_no_measurements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dcap_qvl, "parse_quote", _raising(PanicException("unreachable")))
    assert parse_quote_measurements(REAL_QUOTE) is None


@pytest.mark.parametrize("target", ["verify_with_root_ca", "parse_quote"])
def test_an_interrupt_inside_dcap_qvl_is_not_taken_for_bad_evidence(
    monkeypatch: pytest.MonkeyPatch, target: str,
) -> None:
    monkeypatch.setattr(dcap_qvl, target, _raising(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        verify_tdx_quote(REAL_QUOTE, REAL_COLLATERAL, root_ca_der=INTEL_ROOT, now=REAL_NOW)
    if target == "parse_quote":
        with pytest.raises(KeyboardInterrupt):
            parse_quote_measurements(REAL_QUOTE)


def test_an_interrupt_while_decoding_collateral_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    class Collateral:
        from_json = staticmethod(_raising(KeyboardInterrupt()))

    monkeypatch.setattr(dcap_qvl, "QuoteCollateralV3", Collateral)
    with pytest.raises(KeyboardInterrupt):
        verify_tdx_quote(REAL_QUOTE, REAL_COLLATERAL, root_ca_der=INTEL_ROOT, now=REAL_NOW)


# --- collateral whose validity cannot be read ----------------------------------------------------


@pytest.mark.parametrize(("next_update", "reason"), [
    pytest.param(1752920163, "nextUpdate is not a string", id="number"),
    pytest.param("2025-07-19T10:16:03", "nextUpdate '2025-07-19T10:16:03' has no time zone",
                 id="naive"),
])
def test_a_tcb_info_next_update_that_is_no_utc_time_is_unreadable(next_update: object,
                                                                  reason: str) -> None:
    document = json.loads(REAL_COLLATERAL)
    tcb_info = json.loads(document["tcb_info"])
    tcb_info["nextUpdate"] = next_update
    document["tcb_info"] = json.dumps(tcb_info)

    with pytest.raises(VerificationFailed) as raised:
        collateral_next_update(json.dumps(document))
    assert (raised.value.code, raised.value.message) == (
        "tdx.collateral_invalid", f"cannot read collateral validity: {reason}")


def test_a_panic_while_reading_the_platform_leaves_it_undecided(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dcap_qvl, "parse_quote", _raising(PanicException("unreachable")))
    with pytest.raises(VerificationIncomplete) as raised:
        quote_platform(REAL_QUOTE)
    assert (raised.value.code, raised.value.message) == (
        "tdx.collateral_unavailable", "cannot read the platform (FMSPC) from the quote: unreachable")
    monkeypatch.setattr(dcap_qvl, "parse_quote", _raising(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        quote_platform(REAL_QUOTE)


def test_collateral_of_exactly_the_bound_is_read_one_character_more_is_not() -> None:
    # The real collateral padded with JSON whitespace: the same document, at and over the bound.
    at_bound = REAL_COLLATERAL + " " * (MAX_COLLATERAL_BYTES - len(REAL_COLLATERAL))
    assert collateral_next_update(at_bound) == 1752919235
    assert verify_tdx_quote(REAL_QUOTE, at_bound, root_ca_der=INTEL_ROOT, now=REAL_NOW).ok

    over = at_bound + " "
    with pytest.raises(VerificationFailed) as raised:
        collateral_next_update(over)
    assert (raised.value.code, raised.value.message) == (
        "tdx.collateral_invalid", "cannot read collateral validity: collateral is oversized")
    report = verify_tdx_quote(REAL_QUOTE, over, root_ca_der=INTEL_ROOT, now=REAL_NOW)
    assert report.failure is not None
    assert (report.failure.name, report.failure.code, report.failure.detail) == (
        "tdx.collateral", "tdx.collateral_invalid",
        f"collateral: collateral is {MAX_COLLATERAL_BYTES + 1} characters, more than the "
        f"{MAX_COLLATERAL_BYTES} allowed")


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _children(sequence: bytes) -> list[bytes]:
    """The DER elements inside one SEQUENCE (DER: definite lengths only)."""
    first = sequence[1]
    body = sequence[2 + (first & 0x7F if first & 0x80 else 0):]
    elements, i = [], 0
    while i < len(body):
        first = body[i + 1]
        count = first & 0x7F if first & 0x80 else 0
        length = int.from_bytes(body[i + 2:i + 2 + count], "big") if count else first
        elements.append(body[i:i + 2 + count + length])
        i += 2 + count + length
    return elements


def _sequence(elements: list[bytes]) -> bytes:
    content = b"".join(elements)
    return b"\x30" + _der_length(len(content)) + content


def _without_next_update(crl_der: bytes) -> bytes:
    """The CRL with its (OPTIONAL, RFC 5280 section 5.1) nextUpdate left out: the second time
    of the TBSCertList. The signature no longer verifies; only the validity reader sees it."""
    tbs, *rest = _children(crl_der)
    fields = _children(tbs)
    times = [i for i, element in enumerate(fields) if element[0] in (0x17, 0x18)]
    del fields[times[1]]
    return _sequence([_sequence(fields), *rest])


@pytest.mark.parametrize("field", ["pck_crl", "root_ca_crl"])
def test_a_crl_without_next_update_has_no_readable_deadline(field: str) -> None:
    document = json.loads(REAL_COLLATERAL)
    document[field] = _without_next_update(bytes.fromhex(document[field])).hex()

    with pytest.raises(VerificationFailed) as raised:
        collateral_next_update(json.dumps(document))
    assert (raised.value.code, raised.value.message) == (
        "tdx.collateral_invalid", f"cannot read collateral validity: {field} has no nextUpdate")


class _Parsed:
    """What ``dcap_qvl.parse_quote`` returns, as far as ``quote_platform`` reads it."""

    def __init__(self, fmspc: str, ca: str) -> None:
        self._fmspc, self._ca = fmspc, ca

    def fmspc(self) -> str:
        return self._fmspc

    def ca(self) -> str:
        return self._ca


@pytest.mark.parametrize(("fmspc", "ca", "message"), [
    pytest.param("b0c06f000000", "processor", None, id="lower_case_is_upper_cased"),
    pytest.param("B0C06F0000", "platform", "quote names an invalid FMSPC 'B0C06F0000'",
                 id="ten_digits"),
    pytest.param("B0C06F00000X", "platform", "quote names an invalid FMSPC 'B0C06F00000X'",
                 id="not_hex"),
    pytest.param("../../admin?", "platform", "quote names an invalid FMSPC '../../ADMIN?'",
                 id="path"),
    pytest.param("B0C06F000000", "root", "quote names an unknown PCK CA 'root'", id="ca"),
    pytest.param("F" * 100, "platform", f"quote names an invalid FMSPC {'F' * 40!r}",
                 id="long_is_cut_in_the_message"),
])
def test_the_platform_read_from_the_quote_must_be_a_fmspc_and_a_known_ca(
    monkeypatch: pytest.MonkeyPatch, fmspc: str, ca: str, message: str | None,
) -> None:
    # Both values go into the PCS URL (``fmspc=…&ca=…``): only 12 hex digits and the two CA
    # names Intel's PCS knows may get there, whatever the quote's certificate says.
    monkeypatch.setattr(dcap_qvl, "parse_quote", lambda quote: _Parsed(fmspc, ca))
    if message is None:
        assert quote_platform(REAL_QUOTE) == (fmspc.upper(), ca)
        return
    with pytest.raises(VerificationIncomplete) as raised:
        quote_platform(REAL_QUOTE)
    assert (raised.value.code, raised.value.message) == ("tdx.collateral_unavailable", message)


# --- the format check's details name exactly what is wrong ---------------------------------------

V5_HEADER = struct.pack("<H", 5) + REAL_QUOTE[2:48]
SIG_DATA = 48 + 584 + 4  # the real v4 quote's signature data starts after header, body, length
QE_CERT = SIG_DATA + 64 + 64  # then the quote signature and attestation key; then certification
QE_REPORT_END = QE_CERT + 6 + 384 + 64  # data: header, QE report, QE report signature


def signature_data(data: bytes, length: int | None = None) -> bytes:
    """The real quote's header and body with ``data`` as signature data (its length field
    ``length``, else the true one), then zero padding as Intel's quote buffers end in."""
    size = len(data) if length is None else length
    return REAL_QUOTE[:SIG_DATA - 4] + struct.pack("<I", size) + data + bytes(100)


def certification_data(after_qe_report: bytes) -> bytes:
    """The real signature, key, QE report and its signature, then ``after_qe_report``, as type-6
    certification data of the right length."""
    body = REAL_QUOTE[QE_CERT + 6:QE_REPORT_END] + after_qe_report
    return signature_data(REAL_QUOTE[SIG_DATA:QE_CERT] + struct.pack("<HI", 6, len(body)) + body)


@pytest.mark.parametrize(("quote", "detail"), [
    pytest.param(REAL_QUOTE[:12] + bytes(16) + REAL_QUOTE[28:],
                 f"QE vendor id {'00' * 16} is not Intel's", id="foreign_qe_vendor"),
    pytest.param(V5_HEADER, "quote is truncated: v5 body descriptor at offset 48 is missing",
                 id="v5_without_descriptor"),
    pytest.param(V5_HEADER + struct.pack("<HI", 0xFFFF, 0xFFFFFFFF) + REAL_QUOTE[48:],
                 "v5 body type 65535 with size 4294967295 is not a TD report",
                 id="v5_descriptor_out_of_range"),
    pytest.param(signature_data(REAL_QUOTE[SIG_DATA:], 0xFFFFFFFF),
                 f"signature data length field says 4294967295 bytes, only "
                 f"{len(REAL_QUOTE) - SIG_DATA + 100} follow", id="signature_data_length_max"),
    pytest.param(signature_data(REAL_QUOTE[SIG_DATA:QE_CERT]),
                 f"quote is truncated: certification data header at offset {QE_CERT} is missing",
                 id="no_certification_data"),
    pytest.param(signature_data(REAL_QUOTE[SIG_DATA:QE_CERT] + struct.pack("<HI", 6, 0xFFFFFFFF)
                                + bytes(10)),
                 "certification data length field says 4294967295 bytes, the signature data "
                 "holds 10", id="certification_data_length_max"),
    pytest.param(signature_data(REAL_QUOTE[SIG_DATA:QE_CERT] + struct.pack("<HI", 6, 448)
                                + REAL_QUOTE[QE_CERT + 6:QE_REPORT_END]),
                 f"quote is truncated: QE authentication data length at offset {QE_REPORT_END} "
                 "is missing", id="no_qe_authentication_data"),
    pytest.param(certification_data(struct.pack("<H", 0)),
                 f"quote is truncated: nested certification data header at offset "
                 f"{QE_REPORT_END + 2} is missing", id="no_nested_certification_data"),
    pytest.param(certification_data(struct.pack("<H", 0xFFFF) + bytes(64)),
                 f"quote is truncated: nested certification data header at offset "
                 f"{QE_REPORT_END + 2 + 0xFFFF} is missing", id="qe_authentication_data_max"),
    pytest.param(certification_data(struct.pack("<H", 0) + struct.pack("<HI", 5, 0xFFFFFFFF)
                                    + bytes(8)),
                 "PCK chain length field says 4294967295 bytes, the certification data holds 8",
                 id="pck_chain_length_max"),
])
def test_the_format_detail_names_the_fault(quote: bytes, detail: str) -> None:
    report = verify_tdx_quote(quote, REAL_COLLATERAL, root_ca_der=INTEL_ROOT, now=REAL_NOW)

    assert [(c.name, c.code, c.detail) for c in report.checks] == [
        ("tdx.quote_format", "tdx.quote_invalid", detail)]
