"""The one report base (``CheckedReport``) and the one verdict vocabulary (``Verdict``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.verify.attestation import AttestationReport, NodeReport
from sidecar.verify.checks import Check, CheckedReport, Status, Verdict, combine

PASSED = Check.passed("a.pass", "fine")
FAILED = Check.failed("a.fail", "a.failed_code", "bad evidence")
UNDECIDED = Check.incomplete("a.undecided", "a.undecided_code", "no collateral")


@dataclass(frozen=True)
class Report(CheckedReport):
    checks: tuple[Check, ...]
    empty_code: ClassVar[str] = "report.empty"


@pytest.mark.parametrize(("checks", "ok", "verdict", "failure"), [
    pytest.param((PASSED,), True, Verdict.VERIFIED, None, id="all_pass"),
    pytest.param((), False, Verdict.FAILED, None, id="nothing_checked"),
    pytest.param((PASSED, UNDECIDED), False, Verdict.INCOMPLETE, UNDECIDED, id="undecided"),
    pytest.param((UNDECIDED, FAILED), False, Verdict.FAILED, FAILED, id="failed_outranks"),
])
def test_ok_verdict_and_failure(checks: tuple[Check, ...], ok: bool, verdict: Verdict,
                                failure: Check | None) -> None:
    report = Report(checks)
    assert report.ok is ok
    assert report.verdict is verdict
    assert report.verdict == str(verdict)  # a str: JSON and comparisons read as before
    assert report.failure == failure
    assert report.failures == tuple(c for c in checks if not c.ok)


def test_raise_for_failure_maps_incomplete_to_verification_incomplete() -> None:
    with pytest.raises(VerificationIncomplete, match="no collateral") as info:
        Report((PASSED, UNDECIDED)).raise_for_failure()
    assert info.value.code == "a.undecided_code"


def test_raise_for_failure_raises_failed_when_a_check_failed_after_an_undecided_one() -> None:
    with pytest.raises(VerificationFailed, match="bad evidence") as info:
        Report((UNDECIDED, FAILED)).raise_for_failure()
    assert type(info.value) is VerificationFailed
    assert info.value.code == "a.failed_code"


def test_raise_for_failure_on_nothing_checked_uses_the_empty_code() -> None:
    with pytest.raises(VerificationFailed) as info:
        Report(()).raise_for_failure()
    assert type(info.value) is VerificationFailed
    assert info.value.code == "report.empty"
    Report((PASSED,)).raise_for_failure()


def test_combine() -> None:
    assert combine([]) is Status.FAIL
    assert combine([Status.PASS, Status.INCOMPLETE]) is Status.INCOMPLETE
    assert combine([Status.INCOMPLETE, Status.FAIL]) is Status.FAIL


def node(role: str, *checks: Check) -> NodeReport:
    return NodeReport(f"{role}-0", role, "0x" + "11" * 20, "ecdsa", checks)


def attestation(*nodes: NodeReport) -> AttestationReport:
    return AttestationReport("TEE/m", "00" * 32, "22" * 32, nodes, 0)


def test_attestation_raises_unless_a_model_node_is_attested() -> None:
    attestation(node("model", PASSED), node("model", FAILED)).raise_unless_attested()

    with pytest.raises(VerificationIncomplete, match="attestation of TEE/m undecided: "
                                                     "a.undecided: no collateral") as undecided:
        attestation(node("model", UNDECIDED)).raise_unless_attested()
    assert undecided.value.code == "a.undecided_code"

    with pytest.raises(VerificationFailed, match="attestation of TEE/m failed: a.fail") as failed:
        attestation(node("model", UNDECIDED), node("model", FAILED)).raise_unless_attested()
    assert failed.value.code == "a.failed_code"

    # A gateway that passed signs no completion: nothing attested, though every check passed.
    with pytest.raises(VerificationFailed, match="no node attested") as gateway_only:
        attestation(node("gateway", PASSED)).raise_unless_attested()
    assert gateway_only.value.code == "attestation.failed"
    assert attestation(node("gateway", PASSED)).verdict == "verified"


def test_the_error_for_nothing_checked_says_so() -> None:
    with pytest.raises(VerificationFailed) as info:
        Report(()).raise_for_failure()
    assert info.value.message == "nothing was verified"
