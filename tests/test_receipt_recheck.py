"""``sidecar.verify.receipt``: every check a re-checked receipt line carries, with its name, code
and detail, on the simulator's real-format evidence (quotes binding a node's key and a nonce).

``tests/test_receipts.py`` drives the file-backed path and the tampering table; this pins each
step of the recipe from memory (issue 10): what an archived node without a usable quote, a
multi-node or NEAR report with a gateway, a broken chain across files, and the evidence cache
turn into.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.receipts import (
    GENESIS_PREV_SHA256,
    Receipt,
    decode_receipt_line,
    encode_receipt_line,
)
from sidecar.simulator.evidence import SimulatedEvidence
from sidecar.simulator.provider import Faults, SigningNode
from sidecar.verify.checks import Check, Status
from sidecar.verify.receipt import (
    ReceiptLine,
    ReceiptLineResult,
    ReceiptOutcome,
    ReceiptsReport,
    verify_receipt_lines,
)
from tests.test_receipts import Attestation, failed_receipt, signed_receipt
from tests.test_verify_receipt import Archive

FILE = Path("receipts.jsonl")
P, F = Status.PASS, Status.FAIL
EVIDENCE = SimulatedEvidence()


def attest(nodes: Sequence[SigningNode], *, algo: str = "ecdsa", faults: Faults | None = None,
           edit: Callable[[dict[str, Any]], None] | None = None,
           evidence: SimulatedEvidence = EVIDENCE) -> Attestation:
    """The simulator's report for ``nodes``, optionally edited before it is archived."""
    nonce = secrets.token_hex(32)
    report = evidence(list(nodes), algo, nonce, bytes.fromhex(nonce), faults or Faults())
    if edit is not None:
        edit(report)
    body = json.dumps(report).encode()
    return Attestation(body, hashlib.sha256(body).hexdigest(), nonce)


def chain(receipts: Sequence[Receipt], file: Path = FILE, prev: str = GENESIS_PREV_SHA256,
          start: int = 1) -> list[ReceiptLine]:
    """The receipts as the log writes them: each line linked to the one before."""
    lines = []
    for number, receipt in enumerate(receipts, start=start):
        raw = encode_receipt_line(receipt, prev)
        lines.append(ReceiptLine(file, number, raw, True))
        prev = hashlib.sha256(raw).hexdigest()
    return lines


def recheck(lines: Sequence[ReceiptLine], *attestations: Attestation,
            archive: Archive | None = None) -> ReceiptsReport:
    archive = archive or Archive({a.digest: a.body for a in attestations})
    files = tuple(dict.fromkeys(line.file for line in lines))
    return verify_receipt_lines(files, lines, decode=decode_receipt_line, evidence=archive)


def rows(result: ReceiptLineResult) -> list[tuple[str, Status, str | None, str]]:
    return [(c.name, c.status, c.code, c.detail) for c in result.checks]


def failures(result: ReceiptLineResult) -> list[tuple[str, str | None, str]]:
    return [(c.name, c.code, c.detail) for c in result.failures]


@pytest.fixture(scope="module")
def node() -> SigningNode:
    return SigningNode()


# -- a genuine line: every check, in order ------------------------------------------------------


@pytest.mark.parametrize("algo", ["ecdsa", "ed25519"])
def test_every_check_of_a_genuine_line(node: SigningNode, algo: str) -> None:
    attestation = attest([node], algo=algo)
    receipt = signed_receipt(node, attestation, algo=algo)
    (result,) = recheck(chain([receipt]), attestation).lines
    address = receipt.signing_address
    assert address is not None
    claimed = address.lower() if algo == "ecdsa" else address
    assert result.outcome is ReceiptOutcome.VERIFIED
    assert result.receipt == receipt
    assert [(c.name, c.status) for c in result.checks] == [
        ("receipt.format", P), ("receipt.signature", P), ("receipt.evidence", P),
        ("receipt.node", P), ("binding.signing_key", P), ("binding.nonce", P),
        ("receipt.signer_role", P)]
    details = {c.name: c.detail for c in result.checks}
    assert details["receipt.format"] == "a receipt of a known format"
    assert details["receipt.signature"] == (
        f"{algo} signature by {claimed} over request and response hashes")
    assert details["receipt.evidence"] == f"archived evidence hashes to {attestation.digest}"
    assert details["receipt.node"] == f"{claimed} is node node-0"
    assert details["receipt.signer_role"] == "a model node"  # a flat report names no model


def test_a_recorded_failure_is_only_format_checked(node: SigningNode) -> None:
    archive = Archive({})
    report = recheck(chain([failed_receipt()]), archive=archive)
    (result,) = report.lines
    assert result.outcome is ReceiptOutcome.RECORDED_FAILED
    assert rows(result) == [("receipt.format", P, None, "a receipt of a known format")]
    assert archive.asked == []
    assert (report.total, report.verified, report.recorded_failed, report.invalid) == (1, 0, 1, 0)
    assert report.ok and report.invalid_lines == ()


# -- the archived node's quote ------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "code", "detail"), [
    pytest.param(lambda r: r.pop("intel_quote"), "tdx.quote_missing",
                 "the node carries no intel_quote", id="no-quote"),
    pytest.param(lambda r: r.update(intel_quote=""), "tdx.quote_missing",
                 "the node carries no intel_quote", id="empty-quote"),
    pytest.param(lambda r: r.update(intel_quote="zz" + r["intel_quote"]), "tdx.quote_malformed",
                 "intel_quote is not hex", id="not-hex"),
    pytest.param(lambda r: r.update(intel_quote=r["intel_quote"][:200]), "tdx.quote_malformed",
                 "intel_quote does not have the TDX quote layout", id="truncated"),
])
def test_an_archived_node_without_a_usable_quote(node: SigningNode,
                                                 edit: Callable[[dict[str, Any]], None],
                                                 code: str, detail: str) -> None:
    attestation = attest([node], edit=edit)
    (result,) = recheck(chain([signed_receipt(node, attestation)]), attestation).lines
    assert result.outcome is ReceiptOutcome.INVALID
    assert failures(result) == [("receipt.quote", code, detail)]
    # The node was found; it is its quote that cannot bind the key.
    assert [c.name for c in result.checks] == [
        "receipt.format", "receipt.signature", "receipt.evidence", "receipt.node", "receipt.quote"]


def test_a_0x_prefixed_quote_is_read(node: SigningNode) -> None:
    attestation = attest([node], edit=lambda r: r.update(intel_quote="0x" + r["intel_quote"]))
    report = recheck(chain([signed_receipt(node, attestation)]), attestation)
    assert report.verified == 1, report.lines[0].failures


def test_a_tls_fingerprint_that_is_not_hex(node: SigningNode) -> None:
    attestation = attest([node], edit=lambda r: r.update(tls_cert_fingerprint="not hex"))
    (result,) = recheck(chain([signed_receipt(node, attestation)]), attestation).lines
    assert failures(result) == [
        ("binding.tls", "binding.tls_malformed", "tls_cert_fingerprint is not hex")]


def test_a_tls_bound_quote_is_checked_with_the_archived_fingerprint(node: SigningNode) -> None:
    # NEAR AI Cloud binds its TLS key into REPORTDATA (include_tls_fingerprint, spec 0.1).
    tls = SimulatedEvidence()
    tls.tls_spki_sha256 = hashlib.sha256(b"simulated TLS certificate").digest()
    attestation = attest([node], evidence=tls)
    (result,) = recheck(chain([signed_receipt(node, attestation)]), attestation).lines
    assert result.outcome is ReceiptOutcome.VERIFIED, result.failures
    key = next(c.detail for c in result.checks if c.name == "binding.signing_key")
    assert f"TLS fingerprint {tls.tls_spki_sha256.hex()}" in key

    other = hashlib.sha256(b"another certificate").hexdigest()
    swapped = attest([node], evidence=tls, edit=lambda r: r.update(tls_cert_fingerprint=other))
    (result,) = recheck(chain([signed_receipt(node, swapped)]), swapped).lines
    assert result.outcome is ReceiptOutcome.INVALID
    assert [c.code for c in result.failures] == ["binding.signing_key_mismatch"]


# -- which node of the evidence ----------------------------------------------------------------


def test_each_node_of_multi_node_evidence_is_bound_by_its_own_quote(node: SigningNode) -> None:
    other = SigningNode()
    attestation = attest([node, other])
    archive = Archive({attestation.digest: attestation.body})
    report = recheck(chain([signed_receipt(node, attestation, chat_id="chatcmpl-a"),
                            signed_receipt(other, attestation, chat_id="chatcmpl-b"),
                            signed_receipt(node, attestation, chat_id="chatcmpl-c")]),
                     archive=archive)
    assert [r.outcome for r in report.lines] == [ReceiptOutcome.VERIFIED] * 3
    nodes = [next(c.detail for c in r.checks if c.name == "receipt.node") for r in report.lines]
    assert [d.rsplit(" ", 1)[1] for d in nodes] == ["node-0", "node-1", "node-0"]
    assert archive.asked == [attestation.digest]  # fetched, hashed and parsed once


def test_a_key_listed_twice_verifies_by_the_node_whose_quote_binds_it(node: SigningNode) -> None:
    def first_quote_gone(report: dict[str, Any]) -> None:
        report["all_attestations"][0].pop("intel_quote")

    attestation = attest([node, node], edit=first_quote_gone)
    (result,) = recheck(chain([signed_receipt(node, attestation)]), attestation).lines
    assert result.outcome is ReceiptOutcome.VERIFIED, result.failures
    assert next(c.detail for c in result.checks if c.name == "receipt.node").endswith("node-1")


def test_a_node_with_a_malformed_fingerprint_does_not_hide_the_next_one(
        node: SigningNode) -> None:
    def first_fingerprint_garbled(report: dict[str, Any]) -> None:
        report["all_attestations"][0]["tls_cert_fingerprint"] = "not hex"

    attestation = attest([node, node], edit=first_fingerprint_garbled)
    (result,) = recheck(chain([signed_receipt(node, attestation)]), attestation).lines
    assert result.outcome is ReceiptOutcome.VERIFIED, result.failures
    assert next(c.detail for c in result.checks if c.name == "receipt.node").endswith("node-1")


def test_when_no_listed_node_binds_the_key_the_first_ones_reasons_are_shown(
        node: SigningNode) -> None:
    def both_broken(report: dict[str, Any]) -> None:
        report["all_attestations"][0].pop("intel_quote")
        report["all_attestations"][1]["intel_quote"] = "zz"

    attestation = attest([node, node], edit=both_broken)
    (result,) = recheck(chain([signed_receipt(node, attestation)]), attestation).lines
    assert failures(result) == [
        ("receipt.quote", "tdx.quote_missing", "the node carries no intel_quote")]
    assert next(c.detail for c in result.checks if c.name == "receipt.node").endswith("node-0")


def test_a_key_of_another_algorithm_is_not_that_node(node: SigningNode) -> None:
    attestation = attest([node], algo="ed25519")
    receipt = signed_receipt(node, attestation)  # an ecdsa record against ed25519 evidence
    (result,) = recheck(chain([receipt]), attestation).lines
    claimed = node.address("ecdsa").lower()
    assert failures(result) == [("receipt.node", "receipt.signer_not_in_evidence",
                                 f"{claimed} is not an ecdsa node of evidence "
                                 f"{attestation.digest}")]


def test_a_signature_over_other_hashes_fails_the_signature_check(node: SigningNode) -> None:
    attestation = attest([node])
    receipt = signed_receipt(node, attestation)
    moved = replace(receipt, response_sha256="ab" * 32)
    (result,) = recheck(chain([moved]), attestation).lines
    (failure,) = result.failures
    assert (failure.name, failure.code) == ("receipt.signature",
                                            "signature.response_hash_mismatch")
    assert failure.detail.startswith(f"signed response hash {receipt.response_sha256}")


def test_the_signature_check_names_both_keys_on_a_mismatch(node: SigningNode) -> None:
    attestation = attest([node])
    other = SigningNode()
    receipt = signed_receipt(node, attestation)
    assert receipt.text is not None
    forged = replace(receipt, signature=other.sign(receipt.text, "ecdsa"))
    (result,) = recheck(chain([forged]), attestation).lines
    assert failures(result) == [(
        "receipt.signature", "signature.address_mismatch",
        f"signature recovers {other.address('ecdsa').lower()} not "
        f"{node.address('ecdsa').lower()}")]


# -- the NEAR shape: a gateway and a model that names itself ------------------------------------


def _near(node: SigningNode, gateway: SigningNode) -> Attestation:
    def add_gateway(report: dict[str, Any]) -> None:
        nonce = report["model_attestations"][0]["request_nonce"]
        report["gateway_attestation"] = EVIDENCE.near_gateway_entry(
            gateway, "ecdsa", nonce, bytes.fromhex(nonce), Faults())

    return attest([node], faults=Faults(evidence={"shape": "near"}), edit=add_gateway)


def _kinded(signer: SigningNode, attestation: Attestation, kind: str | None,
            served_model: str | None) -> Receipt:
    receipt = signed_receipt(signer, attestation)
    return replace(receipt, signature_kind=kind, served_model=served_model)


def test_a_gateway_signed_record_verifies_by_the_gateway_node(node: SigningNode) -> None:
    gateway = SigningNode()
    attestation = _near(node, gateway)
    (result,) = recheck(chain([_kinded(gateway, attestation, "gateway", None)]),
                        attestation).lines
    assert result.outcome is ReceiptOutcome.VERIFIED, result.failures
    checks = {c.name: c.detail for c in result.checks}
    assert checks["receipt.node"].endswith(" is node gateway")
    assert checks["receipt.signer_role"] == "a gateway node"


def test_a_model_record_signed_by_the_gateway_key_is_invalid(node: SigningNode) -> None:
    gateway = SigningNode()
    attestation = _near(node, gateway)
    (result,) = recheck(chain([_kinded(gateway, attestation, "provider_tee", "simulated")]),
                        attestation).lines
    assert failures(result) == [
        ("receipt.signer_role", "receipt.signer_role_mismatch",
         "the signer is a gateway node of the evidence; the record needs a model key")]


def test_a_model_record_names_the_model_its_node_serves(node: SigningNode) -> None:
    attestation = _near(node, SigningNode())
    good, unnamed, other = (_kinded(node, attestation, "provider_tee", model)
                            for model in ("simulated", None, "other-model"))
    report = recheck(chain([good, unnamed, other]), attestation)
    served = [next(c.detail for c in r.checks if c.name == "receipt.signer_role")
              for r in report.lines[:2]]
    assert served == ["a model node serving simulated", "a model node serving simulated"]
    assert [r.outcome for r in report.lines[:2]] == [ReceiptOutcome.VERIFIED] * 2
    assert failures(report.lines[2]) == [
        ("receipt.signer_role", "receipt.served_model_mismatch",
         "the evidence names model 'simulated' for the signer, not 'other-model'")]


def _three_part(signer: SigningNode, attestation: Attestation, served_model: str | None,
                text_model: str = "simulated") -> Receipt:
    receipt = signed_receipt(signer, attestation)
    text = f"{text_model}:{receipt.request_sha256}:{receipt.response_sha256}"
    return replace(receipt, text=text, signature=signer.sign(text, "ecdsa"),
                   signature_kind="provider_tee", served_model=served_model)


def test_the_model_a_three_part_text_names_is_the_recorded_one(node: SigningNode) -> None:
    attestation = _near(node, SigningNode())
    report = recheck(chain([_three_part(node, attestation, "simulated"),
                            _three_part(node, attestation, None),
                            _three_part(node, attestation, "simulated", text_model="other")]),
                     attestation)
    assert report.lines[0].outcome is ReceiptOutcome.VERIFIED, report.lines[0].failures
    # A record that names no served model cannot vouch for the model the text names.
    assert [c.code for c in report.lines[1].failures] == ["signature.model_unattested"]
    assert [c.code for c in report.lines[2].failures] == ["signature.text_model_mismatch"]


def test_a_renamed_request_whose_text_does_not_parse(node: SigningNode) -> None:
    attestation = attest([node])
    receipt = replace(signed_receipt(node, attestation), request_binding="model_renamed",
                      text="not a signed text")
    (result,) = recheck(chain([receipt]), attestation).lines
    assert failures(result) == [
        ("receipt.signature", "signature.text_malformed",
         "signed text is neither '<sha256>:<sha256>' nor '<model>:<sha256>:<sha256>'")]
    # Nothing else of the signature was judged (no rename check passed before it).
    assert [c.name for c in result.checks][:2] == ["receipt.format", "receipt.signature"]
    assert "receipt.request_binding" not in [c.name for c in result.checks]


def test_a_renamed_request_is_taken_as_recorded_and_says_so(node: SigningNode) -> None:
    attestation = attest([node])
    genuine = signed_receipt(node, attestation)
    renamed = replace(genuine, request_binding="model_renamed",
                      request_sha256=hashlib.sha256(b"what the app sent").hexdigest())
    (result,) = recheck(chain([renamed]), attestation).lines
    assert result.outcome is ReceiptOutcome.VERIFIED, result.failures
    assert rows(result)[1] == (
        "receipt.request_binding", P, None,
        "the provider renamed the model in the request (spec 0.1): the sidecar checked the "
        "rename when it delivered; without the request bytes it is taken as recorded")
    assert [c.name for c in result.checks][2] == "receipt.signature"


# -- the evidence archive ---------------------------------------------------------------------


def test_what_the_archive_says_is_the_detail(node: SigningNode) -> None:
    attestation = attest([node])
    line = chain([signed_receipt(node, attestation)])
    digest = attestation.digest
    missing = recheck(line, archive=Archive({}))
    assert failures(missing.lines[0]) == [
        ("receipt.evidence", "receipt.evidence_missing", f"evidence {digest} is not archived")]
    refused = recheck(line, archive=Archive({digest: attestation.body}, frozenset({digest})))
    assert failures(refused.lines[0]) == [
        ("receipt.evidence", "receipt.evidence_mismatch",
         f"archived evidence {digest} is not a regular file")]
    other = attestation.body + b" "
    edited = recheck(line, archive=Archive({digest: other}))
    assert failures(edited.lines[0]) == [
        ("receipt.evidence", "receipt.evidence_mismatch",
         f"archived evidence {digest} hashes to {hashlib.sha256(other).hexdigest()}")]


def test_archived_bytes_that_are_not_a_report(node: SigningNode) -> None:
    body = b"not a report"
    attestation = Attestation(body, hashlib.sha256(body).hexdigest(), secrets.token_hex(32))
    (result,) = recheck(chain([signed_receipt(node, attestation)]), attestation).lines
    assert failures(result) == [
        ("receipt.evidence", "attestation.malformed",
         f"archived evidence {attestation.digest}: attestation report is not JSON")]


def test_a_missing_archive_entry_is_asked_for_once_and_fails_every_line(node: SigningNode) -> None:
    attestation = attest([node])
    archive = Archive({})
    report = recheck(chain([signed_receipt(node, attestation, chat_id=f"chatcmpl-{i}")
                            for i in range(3)]), archive=archive)
    assert archive.asked == [attestation.digest]
    assert [[c.code for c in r.failures] for r in report.lines] == [
        ["receipt.evidence_missing"]] * 3


# -- the chain ------------------------------------------------------------------------------


def test_a_broken_link_names_the_line_and_what_it_records(node: SigningNode) -> None:
    first, second = chain([failed_receipt("chatcmpl-1"), failed_receipt("chatcmpl-2")])
    edited = ReceiptLine(FILE, 1, first.raw.replace(b"chatcmpl-1", b"chatcmpl-X"), True)
    report = recheck([edited, second])
    assert [r.outcome for r in report.lines] == [ReceiptOutcome.INVALID,
                                                 ReceiptOutcome.RECORDED_FAILED]
    recorded = hashlib.sha256(first.raw).hexdigest()
    actual = hashlib.sha256(edited.raw).hexdigest()
    assert failures(report.lines[0]) == [(
        "receipt.chain", "receipt.chain_broken",
        f"line hashes to {actual}, but line 2 records {recorded} before it: this line was "
        "altered, or lines were removed or inserted after it")]
    assert report.head_sha256 == hashlib.sha256(second.raw).hexdigest()
    with pytest.raises(VerificationFailed) as info:
        report.raise_for_failure()
    assert info.value.code == "receipt.chain_broken"
    assert info.value.message.startswith(f"receipts.jsonl line 1: line hashes to {actual}")


def test_a_broken_link_across_files_names_the_later_file() -> None:
    rotated = Path("receipts.jsonl.1")
    (old,) = chain([failed_receipt("chatcmpl-1")], file=rotated)
    (new,) = chain([failed_receipt("chatcmpl-2")], prev="ab" * 32)
    report = recheck([old, new])
    (check,) = report.lines[0].failures
    assert check.detail.startswith(
        f"line hashes to {hashlib.sha256(old.raw).hexdigest()}, but receipts.jsonl line 1 "
        f"records {'ab' * 32} before it")
    assert report.files == (rotated, FILE)
    assert [r.file for r in report.lines] == [rotated, FILE]


def test_a_line_that_did_not_parse_vouches_for_nothing_before_it() -> None:
    good, _ = chain([failed_receipt("chatcmpl-1"), failed_receipt("chatcmpl-2")])
    torn = ReceiptLine(FILE, 2, b'{"v":3', False)
    malformed = ReceiptLine(FILE, 3, b"{}\n", True)
    report = recheck([good, torn, malformed])
    assert [r.outcome for r in report.lines] == [
        ReceiptOutcome.RECORDED_FAILED, ReceiptOutcome.INVALID, ReceiptOutcome.INVALID]
    assert rows(report.lines[1]) == [(
        "receipt.format", F, "receipt.torn",
        "torn last line (no newline): the writer stopped mid-write; opening the log repairs it")]
    assert [(c.name, c.code) for c in report.lines[2].checks] == [
        ("receipt.format", "receipt.malformed")]
    assert report.lines[1].receipt is None and report.lines[2].receipt is None
    assert [r.line_sha256 for r in report.lines] == [
        hashlib.sha256(line.raw).hexdigest() for line in (good, torn, malformed)]
    assert (report.total, report.recorded_failed, report.invalid) == (3, 1, 2)
    assert [r.line for r in report.invalid_lines] == [2, 3]
    with pytest.raises(VerificationFailed) as info:
        report.raise_for_failure()  # the first invalid line
    assert info.value.code == "receipt.torn"
    assert info.value.message.startswith("receipts.jsonl line 2: torn last line")


def test_an_empty_log() -> None:
    report = recheck([])
    assert (report.total, report.head_sha256, report.ok, report.files) == (0, None, True, ())
    report.raise_for_failure()


def test_a_line_result_without_checks_is_not_verified() -> None:
    result = ReceiptLineResult(FILE, 7, ReceiptOutcome.INVALID, (), None)
    with pytest.raises(VerificationFailed) as info:
        result.raise_for_failure()
    assert info.value.message == "receipts.jsonl line 7: not verified"
    failing = ReceiptLineResult(FILE, 8, ReceiptOutcome.INVALID,
                                (Check.failed("receipt.format", "receipt.malformed", "bad"),),
                                None)
    with pytest.raises(VerificationFailed) as info:
        failing.raise_for_failure()
    assert (info.value.code, info.value.message) == ("receipt.malformed",
                                                     "receipts.jsonl line 8: bad")
