"""TDX quote verification: real Intel evidence, tampering, expiry, TCB policy, simulator evidence."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.simulator.tdx_authority import TestTdxAuthority
from sidecar.verify.checks import Check, Status
from sidecar.verify.policy import build_model_policy
from sidecar.verify.tdx import (
    MAX_COLLATERAL_BYTES,
    MAX_QUOTE_BYTES,
    TdxQuoteReport,
    collateral_next_update,
    parse_quote_measurements,
    quote_platform,
    td_attributes,
    verify_tdx_quote,
)

ASSETS = Path(__file__).parent / "assets" / "tdx"
ANCHORS = Path(__file__).parent.parent / "sidecar" / "anchors"
INTEL_ROOT = (ANCHORS / "intel_sgx_root_ca.der").read_bytes()
SIMULATOR_ROOT = (ANCHORS / "simulator_tdx_root_ca.der").read_bytes()

REAL_QUOTE = (ASSETS / "tdx_quote").read_bytes()
REAL_COLLATERAL = (ASSETS / "tdx_quote_collateral.json").read_text()
# TCB info issueDate 2025-06-19T10:16:03Z + 1 h: inside every validity window of the collateral.
REAL_NOW = 1750331763

BODY = 48  # the TD report body starts after the 48-byte header
SIG = BODY + 584 + 4  # ECDSA signature data starts after the body and its 4-byte length
QE_CERT_BODY = SIG + 64 + 64 + 6  # type-6 certification data body (QE report first)
SIM_NOW = 1_760_000_000


def verify_real(quote: bytes, collateral: str | None = REAL_COLLATERAL, **kw: object) -> TdxQuoteReport:
    now = kw.pop("now", REAL_NOW)
    root = kw.pop("root", INTEL_ROOT)
    return verify_tdx_quote(quote, collateral, root_ca_der=root, now=now)  # type: ignore[arg-type]


def flip(data: bytes, offset: int) -> bytes:
    tampered = bytearray(data)
    tampered[offset] ^= 0x01
    return bytes(tampered)


def sim_measurements() -> dict[str, bytes]:
    return {
        "report_data": bytes(range(64)),
        "mrtd": b"\x11" * 48,
        "rtmr0": b"\x20" * 48,
        "rtmr1": b"\x21" * 48,
        "rtmr2": b"\x22" * 48,
        "rtmr3": bytes(range(100, 148)),
        "mr_config_id": b"\x01" + bytes(range(32)) + bytes(15),
    }


@pytest.fixture(scope="module")
def authority() -> TestTdxAuthority:
    return TestTdxAuthority()


# --- real Intel evidence ------------------------------------------------------------------------


def test_real_quote_verifies_up_to_date_and_measurements_come_from_the_quote() -> None:
    report = verify_real(REAL_QUOTE)

    assert report.ok, report.checks
    assert report.tcb_status == "UpToDate"
    assert report.advisory_ids == ()
    assert [c.detail for c in report.checks] == [
        "TDX quote v4, 5006 bytes, PCK chain of 3 certificates",
        "TD attributes 0000001000000000: DEBUG clear",
        "collateral decoded",
        "quote, QE report and collateral verify to the given root (FMSPC B0C06F000000)",
        "TCB status UpToDate (advisories: none); the policy judges them",
    ]
    assert [c.name for c in report.checks] == [
        "tdx.quote_format",
        "tdx.td_attributes",
        "tdx.collateral",
        "tdx.quote_signature",
        "tdx.tcb_status",
    ]
    m = report.measurements
    assert m is not None
    # Offsets of the TD report body (provider-api.md section 5).
    assert m.mrtd == REAL_QUOTE[BODY + 136 : BODY + 184]
    assert m.mr_config_id == REAL_QUOTE[BODY + 184 : BODY + 232]
    assert m.rtmr0 == REAL_QUOTE[BODY + 328 : BODY + 376]
    assert m.rtmr1 == REAL_QUOTE[BODY + 376 : BODY + 424]
    assert m.rtmr2 == REAL_QUOTE[BODY + 424 : BODY + 472]
    assert m.rtmr3 == REAL_QUOTE[BODY + 472 : BODY + 520]
    assert m.report_data == REAL_QUOTE[BODY + 520 : BODY + 584]
    assert m.report_data.hex().startswith("9a9d48e7f6799642d3d1")
    assert report.verified_measurements() == m


def test_outdated_real_quote_is_rejected() -> None:
    quote = (ASSETS / "tdx_quote_outdated").read_bytes()
    collateral = (ASSETS / "tdx_quote_outdated_collateral.json").read_text()
    # Its TCB info was issued 2026-02-18T10:58:51Z; pin the clock an hour later.
    report = verify_real(quote, collateral, now=1771412331 + 3600)

    assert not report.ok
    assert report.measurements is None
    failure = report.failure
    assert failure is not None
    assert failure.name == "tdx.quote_signature"
    assert failure.code == "tdx.tcb_level_unmatched"
    with pytest.raises(VerificationFailed, match="No matching TCB level found") as info:
        report.raise_for_failure()
    assert info.value.code == "tdx.tcb_level_unmatched"


def _pem_offset(which: int, into: int) -> int:
    start = -1
    for _ in range(which + 1):
        start = REAL_QUOTE.index(b"-----BEGIN CERTIFICATE-----", start + 1)
    return start + 28 + into  # skip the BEGIN line


TAMPERING = [
    # name, offset of the flipped bit, expected code, expected message
    ("header_version", 0, "tdx.quote_invalid", "quote version 5 is not|v5 body type"),
    ("header_user_data", 40, "tdx.quote_invalid", "ISV enclave report signature is invalid"),
    ("body_tee_tcb_svn", BODY + 0, "tdx.quote_invalid", "ISV enclave report signature is invalid"),
    ("body_mrtd", BODY + 136, "tdx.quote_invalid", "ISV enclave report signature is invalid"),
    ("body_rtmr3", BODY + 500, "tdx.quote_invalid", "ISV enclave report signature is invalid"),
    ("body_report_data", BODY + 520, "tdx.quote_invalid", "ISV enclave report signature is invalid"),
    ("body_last_byte", BODY + 583, "tdx.quote_invalid", "ISV enclave report signature is invalid"),
    ("signature_data_length", BODY + 584, "tdx.quote_invalid", "length field says 4166 bytes, the signature data holds 4167"),
    ("quote_signature", SIG + 5, "tdx.quote_invalid", "ISV enclave report signature is invalid"),
    ("attestation_key", SIG + 64 + 3, "tdx.quote_invalid", "QE report hash mismatch"),
    ("certification_data_type", SIG + 128, "tdx.quote_invalid", "certification data type 7 is not 6"),
    ("qe_report", QE_CERT_BODY + 10, "tdx.quote_invalid", "Signature is invalid for qe_report"),
    ("qe_report_data", QE_CERT_BODY + 320, "tdx.quote_invalid", "Signature is invalid for qe_report"),
    ("qe_report_signature", QE_CERT_BODY + 384 + 7, "tdx.quote_invalid", "Signature is invalid for qe_report"),
    ("qe_auth_data", QE_CERT_BODY + 384 + 64 + 2 + 5, "tdx.quote_invalid", "QE report hash mismatch"),
    ("pck_leaf_cert", _pem_offset(0, 200), "tdx.quote_invalid", "certificate chain|PCK certificate"),
    ("pck_leaf_sgx_extension", _pem_offset(0, 1200), "tdx.quote_invalid", "certificate chain|PCK certificate"),
    ("intermediate_cert", _pem_offset(1, 300), "tdx.quote_invalid", "certificate chain"),
    ("root_cert", _pem_offset(2, 300), "tdx.quote_invalid", "does not end in the trusted root CA certificate"),
    ("chain_nul_terminator", REAL_QUOTE.rindex(b"-----END CERTIFICATE-----") + 26, "tdx.quote_invalid", "not a sequence of PEM certificates"),
    ("zero_padding", len(REAL_QUOTE) - 3, "tdx.quote_invalid", "not zero padding"),
]


@pytest.mark.parametrize(
    ("offset", "code", "message"),
    [pytest.param(o, c, m, id=n) for n, o, c, m in TAMPERING],
)
def test_one_flipped_bit_anywhere_is_rejected(offset: int, code: str, message: str) -> None:
    report = verify_real(flip(REAL_QUOTE, offset))

    assert not report.ok
    assert report.measurements is None
    with pytest.raises(VerificationFailed, match=message) as info:
        report.raise_for_failure()
    assert info.value.code == code


GARBAGE = [
    ("empty", b"", "shorter than its 48-byte header"),
    ("not_a_quote", b"\xff" * 100, "quote version 65535 is not a TDX quote version"),
    ("header_only", REAL_QUOTE[:48], "truncated: signature data length"),
    ("truncated_in_chain", REAL_QUOTE[:4000], "signature data length field says 4300 bytes, only 3364 follow"),
    ("sgx_version_3", struct.pack("<H", 3) + REAL_QUOTE[2:], "quote version 3 is not a TDX quote version"),
    ("version_6", struct.pack("<H", 6) + REAL_QUOTE[2:], "quote version 6 is not a TDX quote version"),
    ("sgx_tee_type", REAL_QUOTE[:4] + struct.pack("<I", 0) + REAL_QUOTE[8:], "TEE type 0x0 is not TDX"),
    ("wrong_key_type", REAL_QUOTE[:2] + struct.pack("<H", 3) + REAL_QUOTE[4:], "attestation key type 3"),
    ("foreign_qe_vendor", REAL_QUOTE[:12] + bytes(16) + REAL_QUOTE[28:], "QE vendor id 0+ is not Intel's"),
    ("trailing_bytes", REAL_QUOTE + b"\x01", "71 bytes after the signature data are not zero padding"),
    ("oversized", REAL_QUOTE + bytes(MAX_QUOTE_BYTES), f"more than the {MAX_QUOTE_BYTES} allowed"),
]


@pytest.mark.parametrize(("quote", "message"), [pytest.param(q, m, id=n) for n, q, m in GARBAGE])
def test_garbage_fails_the_format_check_without_raising(quote: bytes, message: str) -> None:
    report = verify_real(quote)

    assert [c.name for c in report.checks] == ["tdx.quote_format"]
    assert report.checks[0].code == "tdx.quote_invalid"
    with pytest.raises(VerificationFailed, match=message):
        report.raise_for_failure()
    assert parse_quote_measurements(quote) is None


def test_zero_padding_is_tolerated_in_any_length() -> None:
    assert verify_real(REAL_QUOTE[:-10]).ok
    assert verify_real(REAL_QUOTE + bytes(10)).ok


@pytest.mark.parametrize(
    ("now", "code", "message"),
    [
        pytest.param(1752920163 + 1, "tdx.collateral_expired", "TCBInfo expired", id="after_next_update"),
        pytest.param(1752919235 + 60, "tdx.collateral_expired", "CrlExpired", id="after_crl_next_update"),
        pytest.param(1750327563 - 1, "tdx.collateral_not_yet_valid", "issue date is in the future", id="before_issue"),
    ],
)
def test_collateral_outside_its_validity_is_rejected(now: int, code: str, message: str) -> None:
    report = verify_real(REAL_QUOTE, now=now)

    assert report.failure is not None and report.failure.code == code
    with pytest.raises(VerificationFailed, match=message):
        report.raise_for_failure()


def test_missing_collateral_is_incomplete_never_verified() -> None:
    report = verify_real(REAL_QUOTE, None)

    assert not report.ok
    assert report.measurements is None
    assert report.checks[-1].status is Status.INCOMPLETE
    assert report.checks[-1].code == "tdx.collateral_missing"
    assert report.checks[-1].name == "tdx.collateral"
    assert report.checks[-1].detail == (
        "no DCAP collateral (TCB info, QE identity, CRLs) was available for this quote")
    assert (report.tcb_status, report.advisory_ids) == (None, ())
    with pytest.raises(VerificationIncomplete, match="no DCAP collateral") as info:
        report.raise_for_failure()
    assert info.value.code == "tdx.collateral_missing"


@pytest.mark.parametrize(
    ("collateral", "message"),
    [
        pytest.param("", "Expecting value", id="empty"),
        pytest.param("[1, 2]", ": collateral: collateral is not a JSON object$",
                     id="array"),
        pytest.param("{}", "missing field `pck_crl_issuer_chain`", id="empty_object"),
        pytest.param("x" * (3 * 1024 * 1024), "more than the 2097152 allowed", id="oversized"),
    ],
)
def test_unreadable_collateral_is_rejected(collateral: str, message: str) -> None:
    report = verify_real(REAL_QUOTE, collateral)

    assert report.failure is not None and report.failure.code == "tdx.collateral_invalid"
    with pytest.raises(VerificationFailed, match=message):
        report.raise_for_failure()


def test_tampered_tcb_info_in_collateral_is_rejected() -> None:
    document = json.loads(REAL_COLLATERAL)
    document["tcb_info"] = document["tcb_info"].replace('"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"')
    report = verify_real(REAL_QUOTE, json.dumps(document))

    with pytest.raises(VerificationFailed, match="Signature is invalid for tcb_info"):
        report.raise_for_failure()


def test_collateral_cannot_substitute_the_pck_chain() -> None:
    # dcap-qvl prefers collateral.pck_certificate_chain over the quote's own chain; the sidecar
    # drops it, so a garbage substitute changes nothing.
    document = json.loads(REAL_COLLATERAL)
    document["pck_certificate_chain"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert verify_real(REAL_QUOTE, json.dumps(document)).ok


def test_real_quote_is_rejected_under_the_simulator_root() -> None:
    report = verify_real(REAL_QUOTE, root=SIMULATOR_ROOT)

    assert not report.ok
    assert report.failure is not None
    assert (report.failure.name, report.failure.code, report.failure.detail) == (
        "tdx.quote_signature", "tdx.quote_invalid",
        "the quote's PCK chain does not end in the trusted root CA certificate")
    with pytest.raises(VerificationFailed, match="does not end in the trusted root CA"):
        report.raise_for_failure()


def test_collateral_next_update_is_the_earliest_deadline() -> None:
    # PCK CRL 2025-07-19T10:00:35Z comes before TCB info (10:16:03Z) and QE identity (10:32:27Z).
    assert collateral_next_update(REAL_COLLATERAL) == 1752919235


@pytest.mark.parametrize("collateral", ["{}", "not json", json.dumps({"tcb_info": "{}"})])
def test_collateral_next_update_refuses_unreadable_collateral(collateral: str) -> None:
    with pytest.raises(VerificationFailed, match="cannot read collateral validity") as info:
        collateral_next_update(collateral)
    assert info.value.code == "tdx.collateral_invalid"


# --- TCB facts (the policy judges them: tests/test_policy.py, tests/test_attestation.py) -------


def _sim_report(authority: TestTdxAuthority) -> TdxQuoteReport:
    quote = authority.make_quote(**sim_measurements())
    return verify_tdx_quote(
        quote,
        authority.collateral_json(SIM_NOW),
        root_ca_der=authority.root_ca_der,
        now=SIM_NOW,
    )


def test_tcb_status_and_advisories_are_reported_not_judged() -> None:
    report = _sim_report(TestTdxAuthority(tcb_status="OutOfDate", advisory_ids=["INTEL-SA-00837"]))

    assert report.ok, report.checks
    assert report.tcb_status == "OutOfDate"
    assert report.advisory_ids == ("INTEL-SA-00837",)
    assert report.measurements is not None
    assert report.checks[-1].name == "tdx.tcb_status"
    assert "TCB status OutOfDate (advisories: INTEL-SA-00837)" in report.checks[-1].detail


@pytest.mark.parametrize(
    ("tolerated", "ok"),
    [
        pytest.param(frozenset({"INTEL-SA-00837"}), True, id="listed"),
        pytest.param(frozenset(), False, id="empty_tolerates_none"),
        pytest.param(frozenset({"INTEL-SA-00615"}), False, id="other_listed"),
    ],
)
def test_reported_advisories_are_judged_by_the_policy(tolerated: frozenset[str], ok: bool) -> None:
    authority = TestTdxAuthority(tcb_status="UpToDate", advisory_ids=["INTEL-SA-00837"])
    report = _sim_report(authority)
    policy = build_model_policy("*", tolerated_advisories=tolerated)

    judged = policy.tcb_checks(report.tcb_status, report.advisory_ids)

    assert report.ok
    assert all(check.ok for check in judged) is ok
    if not ok:
        assert [c.code for c in judged if not c.ok] == ["policy.advisory_not_tolerated"]


@pytest.mark.parametrize(
    ("authority", "code", "message"),
    [
        pytest.param(TestTdxAuthority(tcb_status="Revoked"), "tdx.tcb_revoked", "TCB status is invalid: Revoked", id="revoked"),
        pytest.param(TestTdxAuthority(below_all_tcb_levels=True), "tdx.tcb_level_unmatched", "No matching TCB level found", id="below_all_levels"),
    ],
)
def test_platforms_intel_would_not_certify_fail_even_a_permissive_policy(
    authority: TestTdxAuthority, code: str, message: str
) -> None:
    report = _sim_report(authority)

    with pytest.raises(VerificationFailed, match=message) as info:
        report.raise_for_failure()
    assert info.value.code == code


# --- simulator evidence --------------------------------------------------------------------------


def test_simulator_quote_verifies_under_the_simulator_root(authority: TestTdxAuthority) -> None:
    asked = sim_measurements()
    report = _sim_report(authority)

    assert report.ok, report.checks
    assert report.tcb_status == "UpToDate"
    m = report.measurements
    assert m is not None
    assert {
        "report_data": m.report_data,
        "mrtd": m.mrtd,
        "rtmr0": m.rtmr0,
        "rtmr1": m.rtmr1,
        "rtmr2": m.rtmr2,
        "rtmr3": m.rtmr3,
        "mr_config_id": m.mr_config_id,
    } == asked
    quote = authority.make_quote(**asked)
    assert quote[BODY + 520 : BODY + 584] == asked["report_data"]


def test_simulator_quote_is_rejected_under_the_intel_root(authority: TestTdxAuthority) -> None:
    quote = authority.make_quote(**sim_measurements())
    report = verify_tdx_quote(
        quote, authority.collateral_json(SIM_NOW), root_ca_der=INTEL_ROOT, now=SIM_NOW
    )

    assert not report.ok
    assert report.measurements is None
    with pytest.raises(VerificationFailed, match="does not end in the trusted root CA") as info:
        report.raise_for_failure()
    assert info.value.code == "tdx.quote_invalid"


def test_simulator_collateral_does_not_verify_under_the_intel_root(authority: TestTdxAuthority) -> None:
    # Even a quote whose embedded chain names the Intel root (the real one) cannot borrow the
    # simulator's collateral: dcap-qvl checks the CRLs and TCB signing chain against the anchor.
    report = verify_real(REAL_QUOTE, authority.collateral_json(REAL_NOW))

    with pytest.raises(VerificationFailed, match="Failed to parse root CA CRL"):
        report.raise_for_failure()


def test_simulator_collateral_expires_after_thirty_days(authority: TestTdxAuthority) -> None:
    quote = authority.make_quote(**sim_measurements())
    collateral = authority.collateral_json(SIM_NOW)
    later = collateral_next_update(collateral) + 1
    report = verify_tdx_quote(
        quote, collateral, root_ca_der=authority.root_ca_der, now=later
    )

    assert report.failure is not None and report.failure.code == "tdx.collateral_expired"
    assert collateral_next_update(collateral) == SIM_NOW - 3600 + 30 * 24 * 3600


def test_simulator_root_is_the_shipped_anchor_and_says_it_is_a_test_root(authority: TestTdxAuthority) -> None:
    from cryptography import x509

    assert authority.root_ca_der == SIMULATOR_ROOT
    subject = x509.load_der_x509_certificate(SIMULATOR_ROOT).subject.rfc4514_string()
    assert "SIMULATOR TEST Root CA" in subject
    assert "not Intel" in subject
    assert SIMULATOR_ROOT != INTEL_ROOT


def test_simulator_evidence_is_deterministic() -> None:
    first, second = TestTdxAuthority(), TestTdxAuthority()
    assert first.make_quote(**sim_measurements()) == second.make_quote(**sim_measurements())
    assert first.collateral_json(SIM_NOW) == second.collateral_json(SIM_NOW)


def test_simulator_pck_certificate_carries_the_sgx_extension(authority: TestTdxAuthority) -> None:
    import dcap_qvl

    parsed = dcap_qvl.parse_quote(authority.make_quote(**sim_measurements()))
    extension = parsed.pck_extension()
    assert parsed.fmspc() == authority.fmspc == "5E0000000001"
    assert parsed.ca() == "platform"
    assert extension is not None
    assert extension.pce_svn == 13
    assert extension.pce_id == bytes(2)
    assert extension.sgx_type == 1


def test_simulator_rejects_wrong_sized_measurements(authority: TestTdxAuthority) -> None:
    fields = sim_measurements()
    fields["rtmr3"] = b"\x00" * 32
    with pytest.raises(ValueError, match="rtmr3 must be 48 bytes, got 32"):
        authority.make_quote(**fields)


def test_no_bit_of_the_real_quote_is_malleable() -> None:
    # Every byte is covered by a signature, a structure check or the zero-padding rule; probing
    # every third byte (alternating low and high bit) keeps the test fast. An exhaustive run over
    # all 5,006 bytes and both bits passed when this test was written.
    accepted = []
    for offset in range(0, len(REAL_QUOTE), 3):
        tampered = bytearray(REAL_QUOTE)
        tampered[offset] ^= 0x01 if offset % 2 else 0x80
        if verify_real(bytes(tampered)).ok:
            accepted.append(offset)
    assert accepted == []


# --- the library's refusals, each under its own code ---------------------------------------------


def test_a_certificate_not_yet_valid_is_collateral_not_yet_valid(authority: TestTdxAuthority) -> None:
    # The simulator's certificates are valid from 2025-01-01; collateral issued (and checked) ten
    # seconds before that passes its own issue-date check, so only webpki's CertNotValidYet fails.
    now = 1735689600 - 10
    quote = authority.make_quote(**sim_measurements())
    report = verify_tdx_quote(quote, authority.collateral_json(now),
                              root_ca_der=authority.root_ca_der, now=now)

    assert report.failure is not None
    assert (report.failure.name, report.failure.code) == ("tdx.quote_signature",
                                                           "tdx.collateral_not_yet_valid")
    # dcap-qvl's multi-line anyhow error, joined onto the one line a header can carry.
    assert report.failure.detail == (
        "Failed to verify certificate chain caused by: CertNotValidYet { time: "
        f"UnixTime({now}), not_before: UnixTime(1735689600) }}")
    assert report.measurements is None


def test_a_tdx_module_below_the_signed_minimum_is_an_unmatched_tcb_level(
    authority: TestTdxAuthority,
) -> None:
    # Genuine TCB info, re-signed by the simulator's TCB signing key, that requires a newer TDX
    # module (ISVSVN 7) than the quote's (6): dcap-qvl says "below minimum", not "no matching".
    collateral = json.loads(authority.collateral_json(SIM_NOW))
    tcb_info = json.loads(collateral["tcb_info"])
    tcb_info["tdxModuleIdentities"][0]["tcbLevels"][0]["tcb"]["isvsvn"] = 7
    collateral["tcb_info"] = json.dumps(tcb_info)
    collateral["tcb_info_signature"] = authority.sign_tcb_data(collateral["tcb_info"])
    report = verify_tdx_quote(authority.make_quote(**sim_measurements()), json.dumps(collateral),
                              root_ca_der=authority.root_ca_der, now=SIM_NOW)

    assert report.failure is not None
    assert (report.failure.name, report.failure.code) == ("tdx.quote_signature",
                                                           "tdx.tcb_level_unmatched")
    assert report.failure.detail == (
        "TDX module TCB level check caused by: TDX module ISVSVN 6 is below minimum required "
        "from TDX module TCB levels")


# --- fail-closed edges: TdxQuoteReport, quote_platform, panics in dcap-qvl, unreadable validity -
#
# verify_tdx_quote always runs the format check and never returns passing checks without
# measurements; a report built any other way must still refuse to hand out measurements, with the
# message and code a user reads. quote_platform selects the collateral to fetch: a quote it cannot
# read leaves the verdict undecided, with the same code as an unreachable PCS. (Mutation testing
# found each of these unpinned: docs/mutation.md.)


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
    pytest.param("B0C06F000000", "c" * 100, f"quote names an unknown PCK CA {'c' * 40!r}",
                 id="long_ca_is_cut_in_the_message"),
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


def _replaced(offset: int, byte: bytes) -> bytes:
    return REAL_QUOTE[:offset] + byte + REAL_QUOTE[offset + 1:]


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
    pytest.param(REAL_QUOTE[:SIG_DATA],
                 "signature data length field says 4300 bytes, only 0 follow",
                 id="nothing_after_the_length_field"),
    pytest.param(certification_data(struct.pack("<H", 0) + struct.pack("<HI", 4, 8) + bytes(8)),
                 "nested certification data type 4 is not 5 (PCK chain)",
                 id="nested_certification_data_type_4"),
    # Text after the last PEM block (the newline after END turned into "X"): not a certificate,
    # covered by no signature, so refused.
    pytest.param(_replaced(REAL_QUOTE.rindex(b"-----END CERTIFICATE-----") + 25, b"X"),
                 "PCK chain is not a sequence of PEM certificates", id="text_after_the_chain"),
    # "=" inside a PEM body: the lax decoder would stop there or skip it; the strict one refuses.
    pytest.param(_replaced(REAL_QUOTE.index(b"-----BEGIN CERTIFICATE-----") + 28 + 100, b"="),
                 "PCK chain holds invalid base64: Excess data after padding",
                 id="padding_inside_a_certificate"),
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


def test_a_library_error_without_a_message_is_named_by_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dcap_qvl, "verify_with_root_ca", _raising(ValueError()))
    report = verify_real(REAL_QUOTE)

    assert report.failure is not None
    assert (report.failure.code, report.failure.detail) == ("tdx.quote_invalid", "ValueError")
    assert (report.tcb_status, report.advisory_ids) == (None, ())


@pytest.mark.parametrize("collateral", [REAL_COLLATERAL, None], ids=["with", "offline"])
def test_a_debug_td_fails_from_its_attributes_with_or_without_collateral(
    collateral: str | None,
) -> None:
    # TDATTRIBUTES is at offset 120 of the TD report body; bit 0 of its first byte is DEBUG.
    quote = flip(REAL_QUOTE, BODY + 120)
    report = verify_real(quote, collateral)

    assert [(c.name, c.status, c.code, c.detail) for c in report.checks] == [
        ("tdx.quote_format", Status.PASS, None,
         "TDX quote v4, 5006 bytes, PCK chain of 3 certificates"),
        ("tdx.td_attributes", Status.FAIL, "tdx.debug_enabled",
         "TD attributes 0100001000000000 have DEBUG set: the host can read and change the TD"),
    ]
    assert report.measurements is None


def test_td_attributes_are_read_after_the_v4_header_or_the_v5_body_descriptor() -> None:
    attributes = REAL_QUOTE[BODY + 120:BODY + 128]
    v5 = V5_HEADER + struct.pack("<HI", 2, 584) + REAL_QUOTE[BODY:]

    assert attributes.hex() == "0000001000000000"
    assert td_attributes(REAL_QUOTE) == attributes
    assert td_attributes(v5) == attributes
    # Exactly long enough, then one byte short (and too short to hold even a version).
    assert td_attributes(REAL_QUOTE[:BODY + 128]) == attributes
    assert td_attributes(v5[:BODY + 6 + 128]) == attributes
    for short in (REAL_QUOTE[:BODY + 127], v5[:BODY + 6 + 127], b"\x05"):
        with pytest.raises(ValueError) as raised:
            td_attributes(short)
        assert str(raised.value) == "quote too short for a TD report body"


def test_every_advisory_is_named_in_the_tcb_fact() -> None:
    report = _sim_report(TestTdxAuthority(advisory_ids=["INTEL-SA-00837", "INTEL-SA-00615"]))

    assert report.advisory_ids == ("INTEL-SA-00837", "INTEL-SA-00615")
    assert report.checks[-1].detail == ("TCB status UpToDate (advisories: INTEL-SA-00837, "
                                        "INTEL-SA-00615); the policy judges them")
