"""The typed result of one named verification check, shared by every verifier.

Verifiers return ``Check`` objects (what was checked, whether it passed, why not) rather than
bare booleans; the orchestrator collects them per node, and the same records feed the
``attest`` report, response headers, logs and receipts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from sidecar.errors import VerificationFailed, VerificationIncomplete


class Status(StrEnum):
    """Outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    INCOMPLETE = "incomplete"


class Verdict(StrEnum):
    """Outcome of a whole report (attestation, node, signature, GPU, receipt line): one vocabulary.

    It is a ``str``: ``report.verdict == "verified"`` and JSON output read as before.
    """

    VERIFIED = "verified"
    FAILED = "failed"
    INCOMPLETE = "incomplete"

    @classmethod
    def of(cls, status: Status) -> Verdict:
        """The verdict a combined check status amounts to."""
        return {Status.PASS: cls.VERIFIED, Status.FAIL: cls.FAILED,
                Status.INCOMPLETE: cls.INCOMPLETE}[status]


def combine(statuses: Iterable[Status]) -> Status:
    """fail if any failed (or nothing was checked), else incomplete if any was undecided, else pass.

    Nothing checked is a failure, never a pass: an empty report verified nothing.
    """
    seen = set(statuses)
    if not seen or Status.FAIL in seen:
        return Status.FAIL
    return Status.INCOMPLETE if Status.INCOMPLETE in seen else Status.PASS


@dataclass(frozen=True, slots=True)
class Check:
    """One named check and its outcome.

    Attributes:
        name: dotted check name, e.g. ``tdx.quote`` or ``binding.report_data``.
        status: pass, fail or incomplete.
        detail: why it passed or failed, for people.
        code: stable failure code (``None`` when it passed).
    """

    name: str
    status: Status
    detail: str
    code: str | None = None

    @classmethod
    def passed(cls, name: str, detail: str) -> Check:
        """A passing check."""
        return cls(name, Status.PASS, detail)

    @classmethod
    def failed(cls, name: str, code: str, detail: str) -> Check:
        """A failing check with its failure code."""
        return cls(name, Status.FAIL, detail, code)

    @classmethod
    def incomplete(cls, name: str, code: str, detail: str) -> Check:
        """A check that could not be decided (counts as not verified)."""
        return cls(name, Status.INCOMPLETE, detail, code)

    @property
    def ok(self) -> bool:
        """True only for a passing check."""
        return self.status is Status.PASS


class CheckedReport:
    """Base of every report that holds ``checks``: one ``ok``, ``failure``, ``failures``,
    ``status``, ``verdict`` and ``raise_for_failure`` for all of them.

    A report with no checks is not ok: nothing was verified. A failed check outranks an
    undecided one (``failure``), so a report with bad evidence is reported, and raised, as bad
    even when an earlier check could not be decided.

    Subclasses may set ``empty_code`` (the code raised when no check ran) and override
    ``failure_message`` (how the raised error reads); nothing else.
    """

    __slots__ = ()
    checks: tuple[Check, ...]
    #: The failure code raised for a report with no checks, or a failing check with no code.
    empty_code: ClassVar[str] = "verification.failed"

    @property
    def ok(self) -> bool:
        """True only when checks ran and every one passed."""
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        """Every check that did not pass, in order."""
        return tuple(check for check in self.checks if not check.ok)

    @property
    def failure(self) -> Check | None:
        """The first failed check, else the first undecided one; ``None`` when none failed."""
        failures = self.failures
        return next((c for c in failures if c.status is Status.FAIL),
                    failures[0] if failures else None)

    @property
    def status(self) -> Status:
        """The checks combined (:func:`combine`)."""
        return combine(check.status for check in self.checks)

    @property
    def verdict(self) -> Verdict:
        """``verified`` only when checks ran and all passed."""
        return Verdict.of(self.status)

    def failure_message(self, check: Check | None) -> str:
        """The message of the error ``raise_for_failure`` raises for ``check`` (``None``: no
        check ran)."""
        return check.detail if check is not None else "nothing was verified"

    def raise_for_failure(self) -> None:
        """Return when the report is ok; else raise for ``failure``.

        Raises:
            VerificationIncomplete: the failure is an undecided check (no failed one).
            VerificationFailed: a check failed, or no check ran (``empty_code``).
        """
        if self.ok:
            return
        failure = self.failure
        message = self.failure_message(failure)
        code = (failure.code if failure is not None else None) or self.empty_code
        if failure is not None and failure.status is Status.INCOMPLETE:
            raise VerificationIncomplete(message, code=code)
        raise VerificationFailed(message, code=code)
