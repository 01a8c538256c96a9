"""``sidecar.verify.receipt`` on its own: line bytes and an in-memory evidence lookup, no disk.

The file-backed path (``sidecar.receipts.verify_receipts``) is tested in tests/test_receipts.py;
this pins the seam: what the lookup says (missing, refused, some bytes) maps to one code each.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest

from sidecar.errors import VerificationFailed
from sidecar.receipts import GENESIS_PREV_SHA256, decode_receipt_line, encode_receipt_line
from sidecar.simulator.evidence import SimulatedEvidence
from sidecar.simulator.provider import Faults, SigningNode
from sidecar.verify.receipt import (
    EvidenceMissing,
    EvidenceRefused,
    ReceiptLine,
    ReceiptOutcome,
    verify_receipt_lines,
)
from tests.test_receipts import Attestation, signed_receipt

FILE = Path("receipts.jsonl")


class Archive:
    """An in-memory EvidenceLookup; ``refuse`` names digests it must not hand out."""

    def __init__(self, bodies: dict[str, bytes], refuse: frozenset[str] = frozenset()) -> None:
        self.bodies = bodies
        self.refuse = refuse
        self.asked: list[str] = []

    def evidence_body(self, digest: str) -> bytes:
        self.asked.append(digest)
        if digest in self.refuse:
            raise EvidenceRefused(f"archived evidence {digest} is not a regular file")
        if digest not in self.bodies:
            raise EvidenceMissing(f"evidence {digest} is not archived")
        return self.bodies[digest]


@pytest.fixture(scope="module")
def genuine() -> tuple[bytes, Attestation]:
    node = SigningNode()
    nonce = secrets.token_hex(32)
    body = json.dumps(SimulatedEvidence()([node], "ecdsa", nonce, bytes.fromhex(nonce),
                                          Faults())).encode()
    attestation = Attestation(body, hashlib.sha256(body).hexdigest(), nonce)
    return encode_receipt_line(signed_receipt(node, attestation), GENESIS_PREV_SHA256), attestation


def check(line: bytes, archive: Archive, complete: bool = True) -> tuple[ReceiptOutcome, list[str | None]]:
    report = verify_receipt_lines([FILE], [ReceiptLine(FILE, 1, line, complete)],
                                  decode=decode_receipt_line, evidence=archive)
    (result,) = report.lines
    return result.outcome, [c.code for c in result.failures]


def test_a_genuine_line_verifies_from_memory(genuine: tuple[bytes, Attestation]) -> None:
    line, attestation = genuine
    archive = Archive({attestation.digest: attestation.body})
    report = verify_receipt_lines([FILE], [ReceiptLine(FILE, 1, line, True)],
                                  decode=decode_receipt_line, evidence=archive)
    assert report.ok and report.verified == 1
    assert report.head_sha256 == hashlib.sha256(line).hexdigest()
    assert archive.asked == [attestation.digest]


@pytest.mark.parametrize(("bodies", "refuse", "code"), [
    pytest.param(False, False, "receipt.evidence_missing", id="missing"),
    pytest.param(True, True, "receipt.evidence_mismatch", id="refused_by_the_lookup"),
])
def test_what_the_lookup_says_maps_to_one_code(genuine: tuple[bytes, Attestation], bodies: bool,
                                               refuse: bool, code: str) -> None:
    line, attestation = genuine
    archive = Archive({attestation.digest: attestation.body} if bodies else {},
                      frozenset({attestation.digest}) if refuse else frozenset())
    assert check(line, archive) == (ReceiptOutcome.INVALID, [code])


def test_bytes_that_do_not_hash_to_the_digest_are_refused(genuine: tuple[bytes, Attestation]) -> None:
    line, attestation = genuine
    archive = Archive({attestation.digest: attestation.body + b" "})
    assert check(line, archive) == (ReceiptOutcome.INVALID, ["receipt.evidence_mismatch"])


def test_torn_and_malformed_lines(genuine: tuple[bytes, Attestation]) -> None:
    line, attestation = genuine
    archive = Archive({attestation.digest: attestation.body})
    assert check(line.rstrip(b"\n"), archive, complete=False) == (ReceiptOutcome.INVALID,
                                                                   ["receipt.torn"])
    assert check(b"{}\n", archive) == (ReceiptOutcome.INVALID, ["receipt.malformed"])
    assert archive.asked == []


def test_the_report_raises_with_the_line(genuine: tuple[bytes, Attestation]) -> None:
    line, _ = genuine
    report = verify_receipt_lines([FILE], [ReceiptLine(FILE, 1, line, True)],
                                  decode=decode_receipt_line, evidence=Archive({}))
    with pytest.raises(VerificationFailed, match="receipts.jsonl line 1: evidence") as info:
        report.raise_for_failure()
    assert info.value.code == "receipt.evidence_missing"
