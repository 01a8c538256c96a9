"""``TdxQuoteReport`` and ``quote_platform`` at their fail-closed edges (``sidecar/verify/tdx.py``).

``verify_tdx_quote`` always runs the format check and never returns passing checks without
measurements; a report built any other way (a caller's, a future refactor's) must still refuse
to hand out measurements, with the message and code a user reads. ``quote_platform`` selects
the collateral to fetch: a quote it cannot read leaves the verdict undecided, with the same code
as an unreachable PCS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.verify.checks import Check
from sidecar.verify.tdx import MAX_QUOTE_BYTES, TdxQuoteReport, quote_platform

REAL_QUOTE = (Path(__file__).parent / "assets" / "tdx" / "tdx_quote").read_bytes()


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


def test_a_quote_of_exactly_the_bound_is_read() -> None:
    # The real quote padded with zeros (which its layout allows) to the byte limit.
    padded = REAL_QUOTE + bytes(MAX_QUOTE_BYTES - len(REAL_QUOTE))
    assert quote_platform(padded) == ("B0C06F000000", "platform")
