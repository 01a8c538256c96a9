"""The typed result of one named verification check, shared by every verifier.

Verifiers return ``Check`` objects (what was checked, whether it passed, why not) rather than
bare booleans; the orchestrator collects them per node, and the same records feed the
``attest`` report, response headers, logs and receipts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """Outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    INCOMPLETE = "incomplete"


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
    """Mixin for a report that holds ``checks``: ``ok`` and the first ``failure``.

    A report with no checks is not ok: nothing was verified.
    """

    __slots__ = ()
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True only when checks ran and every one passed."""
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failure(self) -> Check | None:
        """The first check that did not pass, if any."""
        return next((check for check in self.checks if not check.ok), None)
