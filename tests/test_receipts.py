"""Receipts: written durably, one line per completion, and re-checkable offline.

Genuine receipts are built from the simulator's evidence (real-format TDX quotes binding a
simulated node's key and a nonce) and signatures made by that node, exactly as the proxy would
record them; tampered variants are named after the attack.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from sidecar import receipts
from sidecar.receipts import (
    GENESIS_PREV_SHA256,
    Receipt,
    ReceiptFormatError,
    ReceiptLog,
    ReceiptLogError,
    ReceiptOutcome,
    decode_receipt_line,
    encode_receipt_line,
    receipt_time,
    verify_receipts,
)
from sidecar.cli import main as cli_main
from sidecar.simulator.evidence import SimulatedEvidence
from sidecar.simulator.provider import Faults, SigningNode

MODEL = "TEE/simulated-llama-3.3-70b"


def receipts_main(argv: list[str]) -> int:
    """``tee-sidecar receipts ARGV``, through the one CLI tree."""
    return cli_main(["receipts", *argv])
PROMPT_MARKER = "PROMPT-MARKER-do-not-log-7f3a9c"
COMPLETION_MARKER = "COMPLETION-MARKER-do-not-log-51be"


@dataclass(frozen=True)
class Attestation:
    """An attestation report body as a provider served it, and the nonce it was requested with."""

    body: bytes
    digest: str
    nonce: str


@pytest.fixture(scope="module")
def evidence() -> SimulatedEvidence:
    return SimulatedEvidence()


@pytest.fixture(scope="module")
def node() -> SigningNode:
    return SigningNode()


def attest(evidence: SimulatedEvidence, nodes: list[SigningNode], algo: str = "ecdsa",
           faults: Faults | None = None) -> Attestation:
    nonce = secrets.token_hex(32)
    report = evidence(nodes, algo, nonce, bytes.fromhex(nonce), faults or Faults())
    body = json.dumps(report).encode()
    return Attestation(body, hashlib.sha256(body).hexdigest(), nonce)


def signed_receipt(node: SigningNode, attestation: Attestation, *, algo: str = "ecdsa",
                   chat_id: str = "chatcmpl-1", request: bytes | None = None,
                   response: bytes | None = None) -> Receipt:
    """A verified receipt as the proxy records it for a completion ``node`` signed."""
    request = request if request is not None else json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": PROMPT_MARKER}]}).encode()
    response = response if response is not None else json.dumps(
        {"id": chat_id, "choices": [{"message": {"content": COMPLETION_MARKER}}]}).encode()
    request_sha256 = hashlib.sha256(request).hexdigest()
    response_sha256 = hashlib.sha256(response).hexdigest()
    text = f"{request_sha256}:{response_sha256}"
    return Receipt(
        time=receipt_time(), model=MODEL, request_sha256=request_sha256,
        response_sha256=response_sha256, chat_id=chat_id, text=text,
        signature=node.sign(text, algo), signing_address=node.address(algo), signing_algo=algo,
        evidence_sha256=attestation.digest, nonce=attestation.nonce, verdict="verified",
        failure_code=None)


def failed_receipt(chat_id: str | None = "chatcmpl-failed") -> Receipt:
    """A completion refused before any signature was had (e.g. attestation unavailable)."""
    return Receipt(
        time=receipt_time(), model=MODEL, request_sha256=hashlib.sha256(b"req").hexdigest(),
        response_sha256=hashlib.sha256(b"resp").hexdigest(), chat_id=chat_id, text=None,
        signature=None, signing_address=None, signing_algo=None, evidence_sha256=None,
        nonce=None, verdict="failed", failure_code="attestation.unavailable")


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def rewrite_line(path: Path, number: int, mutate: Callable[[dict[str, Any]], None]) -> None:
    """Edit one line's JSON in place (what someone doctoring the file would do)."""
    lines = path.read_bytes().splitlines(keepends=True)
    obj = json.loads(lines[number - 1])
    mutate(obj)
    lines[number - 1] = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))


@dataclass
class Written:
    log_path: Path
    attestations: list[Attestation]
    node: SigningNode


@pytest.fixture
def three_verified(tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> Written:
    """Three verified receipts, each from its own attestation (so evidence tampering stays local)."""
    path = tmp_path / "receipts.jsonl"
    attestations = [attest(evidence, [node]) for _ in range(3)]
    with ReceiptLog(path) as log:
        for i, attestation in enumerate(attestations, start=1):
            log.archive_evidence(attestation.digest, attestation.body)
            log.append(signed_receipt(node, attestation, chat_id=f"chatcmpl-{i}"))
    return Written(path, attestations, node)


# --- writing and verifying genuine receipts ------------------------------------------------------


@pytest.mark.parametrize("algo", ["ecdsa", "ed25519"])
def test_genuine_receipts_verify(tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode,
                                 algo: str) -> None:
    path = tmp_path / "receipts.jsonl"
    attestation = attest(evidence, [node], algo)
    with ReceiptLog(path) as log:
        log.archive_evidence(attestation.digest, attestation.body)
        log.append(signed_receipt(node, attestation, algo=algo, chat_id="chatcmpl-a"))
        log.append(failed_receipt())
        log.append(signed_receipt(node, attestation, algo=algo, chat_id="chatcmpl-b"))
        head = log.head_sha256

    report = verify_receipts(path)

    assert (report.total, report.verified, report.recorded_failed, report.invalid) == (3, 2, 1, 0)
    assert report.ok
    assert [r.outcome for r in report.lines] == [
        ReceiptOutcome.VERIFIED, ReceiptOutcome.RECORDED_FAILED, ReceiptOutcome.VERIFIED]
    assert report.head_sha256 == head
    report.raise_for_failure()


def test_line_format(tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    attestation = attest(evidence, [node])
    receipt = signed_receipt(node, attestation)
    with ReceiptLog(tmp_path / "receipts.jsonl") as log:
        log.append(receipt)
    (obj,) = read_lines(tmp_path / "receipts.jsonl")
    assert list(obj) == ["v", "time", "model", "request_sha256", "response_sha256", "chat_id",
                         "text", "signature", "signing_address", "signing_algo",
                         "evidence_sha256", "nonce", "verdict", "failure_code", "served_model",
                         "signature_kind", "request_binding", "e2ee", "e2ee_model_key",
                         "prev_sha256"]
    assert obj["v"] == 3
    assert obj["prev_sha256"] == GENESIS_PREV_SHA256
    assert obj["time"].endswith("Z")
    assert decode_receipt_line(encode_receipt_line(receipt, GENESIS_PREV_SHA256)) == (
        receipt, GENESIS_PREV_SHA256)


def test_receipt_from_second_node_of_multi_node_evidence(
        tmp_path: Path, evidence: SimulatedEvidence) -> None:
    nodes = [SigningNode(), SigningNode()]
    attestation = attest(evidence, nodes)
    path = tmp_path / "receipts.jsonl"
    with ReceiptLog(path) as log:
        log.archive_evidence(attestation.digest, attestation.body)
        log.append(signed_receipt(nodes[1], attestation))
    assert verify_receipts(path).verified == 1


def test_receipt_never_contains_prompt_or_completion(three_verified: Written) -> None:
    everything = three_verified.log_path.read_bytes()
    assert PROMPT_MARKER.encode() not in everything
    assert COMPLETION_MARKER.encode() not in everything
    for archived in (three_verified.log_path.parent / "evidence").iterdir():
        assert PROMPT_MARKER.encode() not in archived.read_bytes()


# --- tampering: every field, reported by its line ------------------------------------------------

OTHER = SigningNode()


def _set(field: str, value: Any) -> Callable[[dict[str, Any], Written], None]:
    def mutate(obj: dict[str, Any], _: Written) -> None:
        obj[field] = value
    return mutate


def _signed_by_other_key(obj: dict[str, Any], _: Written) -> None:
    obj["signature"] = OTHER.sign(obj["text"], "ecdsa")


def _fully_resigned_by_unattested_key(obj: dict[str, Any], _: Written) -> None:
    # A self-consistent receipt (signature by the named key) whose key no evidence attests.
    obj["signature"] = OTHER.sign(obj["text"], "ecdsa")
    obj["signing_address"] = OTHER.address("ecdsa")


def _evidence_of_another_attestation(obj: dict[str, Any], written: Written) -> None:
    obj["evidence_sha256"] = written.attestations[2].digest


def _attested_address_of_other_node(obj: dict[str, Any], _: Written) -> None:
    obj["signing_address"] = OTHER.address("ecdsa")


def _text_over_other_hashes(obj: dict[str, Any], _: Written) -> None:
    obj["text"] = f"{'1' * 64}:{'2' * 64}"


def _failed_turned_verified_keeps_nothing(obj: dict[str, Any], _: Written) -> None:
    obj["verdict"] = "failed"  # the failure_code stays null: a failed receipt must name its code


def _archived_evidence_edited(_: dict[str, Any], written: Written) -> None:
    target = written.log_path.parent / "evidence" / f"{written.attestations[1].digest}.json"
    target.write_bytes(target.read_bytes().replace(b'"ecdsa"', b'"ECDSA"', 1))


def _archived_evidence_deleted(_: dict[str, Any], written: Written) -> None:
    (written.log_path.parent / "evidence" / f"{written.attestations[1].digest}.json").unlink()


TAMPERING = [
    pytest.param(_set("response_sha256", "ab" * 32), "signature.response_hash_mismatch",
                 "signed response hash", id="response_hash"),
    pytest.param(_set("request_sha256", "cd" * 32), "signature.request_hash_mismatch",
                 "signed request hash", id="request_hash"),
    pytest.param(_text_over_other_hashes, "signature.request_hash_mismatch", "signed request hash",
                 id="signed_text"),
    pytest.param(_attested_address_of_other_node, "signature.address_mismatch",
                 r"signature recovers 0x[0-9a-f]{40} not 0x[0-9a-f]{40}", id="address"),
    pytest.param(_signed_by_other_key, "signature.address_mismatch", "signature recovers",
                 id="signature_from_other_key"),
    pytest.param(_set("signature", "0x" + "00" * 65), "signature.malformed", "ecdsa signature",
                 id="signature_garbage"),
    pytest.param(_fully_resigned_by_unattested_key, "receipt.signer_not_in_evidence",
                 "is not an ecdsa node of evidence", id="signed_by_unattested_key"),
    pytest.param(_set("signing_algo", "ed25519"), "signature.malformed", "ed25519",
                 id="signing_algo"),
    pytest.param(_set("evidence_sha256", "ee" * 32), "receipt.evidence_missing", "not archived",
                 id="evidence_digest"),
    pytest.param(_evidence_of_another_attestation, "binding.nonce_mismatch",
                 "is not the nonce sent", id="evidence_of_another_attestation"),
    pytest.param(_set("nonce", "11" * 32), "binding.nonce_mismatch", "is not the nonce sent",
                 id="nonce"),
    pytest.param(_archived_evidence_edited, "receipt.evidence_mismatch", "hashes to",
                 id="archived_evidence_bytes"),
    pytest.param(_archived_evidence_deleted, "receipt.evidence_missing", "not archived",
                 id="deleted_evidence"),
    # Fields no signature covers: the hash chain catches the edit at the edited line.
    pytest.param(_set("model", "TEE/some-other-model"), "receipt.chain_broken", "was altered",
                 id="model"),
    pytest.param(_set("chat_id", "chatcmpl-forged"), "receipt.chain_broken", "was altered",
                 id="chat_id"),
    pytest.param(_set("time", "2020-01-01T00:00:00.000Z"), "receipt.chain_broken", "was altered",
                 id="time"),
    pytest.param(_failed_turned_verified_keeps_nothing, "receipt.malformed", "failure_code",
                 id="verdict"),
    pytest.param(_set("extra", "x"), "receipt.malformed", "unknown field", id="added_field"),
    pytest.param(lambda obj, _: obj.pop("nonce"), "receipt.malformed", "missing field",
                 id="removed_field"),
]


@pytest.mark.parametrize(("mutate", "code", "message"), TAMPERING)
def test_tampered_receipt_is_reported_by_its_line(
        three_verified: Written, mutate: Callable[[dict[str, Any], Written], None], code: str,
        message: str) -> None:
    rewrite_line(three_verified.log_path, 2, lambda obj: mutate(obj, three_verified))

    report = verify_receipts(three_verified.log_path)

    assert [r.line for r in report.invalid_lines] == [2]
    (bad,) = report.invalid_lines
    assert code in {check.code for check in bad.failures}
    failure = next(check for check in bad.failures if check.code == code)
    assert re.search(message, failure.detail), failure.detail
    assert (report.total, report.verified, report.invalid) == (3, 2, 1)


def test_evidence_that_binds_another_address_is_caught(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    # The report's JSON names the node's address, but its quote binds someone else's key.
    forged = attest(evidence, [node], faults=Faults(report_binds_other_address=True))
    path = tmp_path / "receipts.jsonl"
    with ReceiptLog(path) as log:
        log.archive_evidence(forged.digest, forged.body)
        log.append(signed_receipt(node, forged))
    (result,) = verify_receipts(path).lines
    assert result.outcome is ReceiptOutcome.INVALID
    assert [c.code for c in result.failures] == ["binding.signing_key_mismatch"]


def test_unparseable_lines_reported_by_number(three_verified: Written) -> None:
    lines = three_verified.log_path.read_bytes().splitlines(keepends=True)
    lines.insert(1, b"this is not json\n")
    lines.insert(3, b'{"v":1,"v":1}\n')
    three_verified.log_path.write_bytes(b"".join(lines))

    report = verify_receipts(three_verified.log_path)

    details = {r.line: r.failure.detail for r in report.invalid_lines if r.failure}
    assert details[2] == "not valid JSON"
    assert details[4] == "duplicate field 'v'"
    # The next line's link names the inserted line as the one that does not belong.
    assert any(c.code == "receipt.chain_broken" for c in report.lines[1].failures)
    assert set(details) == {2, 4}
    assert report.verified == 3


def test_edit_of_newest_line_shows_only_in_the_chain_head(three_verified: Written) -> None:
    """The documented limit: the newest line has no successor to vouch for its unsigned fields."""
    before = verify_receipts(three_verified.log_path).head_sha256
    rewrite_line(three_verified.log_path, 3, lambda obj: obj.update(model="TEE/other"))
    after = verify_receipts(three_verified.log_path)
    assert after.ok
    assert after.head_sha256 != before


# --- the writer: rotation, crashes, concurrency --------------------------------------------------


def test_rotation_keeps_every_line_across_files(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    line_size = len(encode_receipt_line(failed_receipt("chatcmpl-00"), GENESIS_PREV_SHA256))
    with ReceiptLog(path, max_bytes=3 * line_size, backups=10) as log:
        for i in range(10):
            log.append(failed_receipt(f"chatcmpl-{i:02d}"))

    files = receipts.rotated_paths(path) + [path]
    assert [f.name for f in files] == ["receipts.jsonl.3", "receipts.jsonl.2", "receipts.jsonl.1",
                                       "receipts.jsonl"]
    assert all(f.stat().st_size <= 3 * line_size for f in files)
    chat_ids = [obj["chat_id"] for f in files for obj in read_lines(f)]
    assert chat_ids == [f"chatcmpl-{i:02d}" for i in range(10)]
    report = verify_receipts(path, include_rotated=True)
    assert report.ok and report.recorded_failed == 10
    # Without include_rotated, only the current file; its first link is taken as given.
    assert verify_receipts(path).total == 1


def test_a_batch_that_crosses_max_bytes_rotates_between_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    line_size = len(encode_receipt_line(failed_receipt("chatcmpl-00"), GENESIS_PREV_SHA256))
    with ReceiptLog(path, max_bytes=3 * line_size, backups=10) as log:
        log.append_batch([failed_receipt(f"chatcmpl-{i:02d}") for i in range(2)])
        log.append_batch([failed_receipt(f"chatcmpl-{i:02d}") for i in range(2, 10)])

    files = receipts.rotated_paths(path) + [path]
    assert all(f.stat().st_size <= 3 * line_size for f in files)
    chat_ids = [obj["chat_id"] for f in files for obj in read_lines(f)]
    assert chat_ids == [f"chatcmpl-{i:02d}" for i in range(10)]
    assert verify_receipts(path, include_rotated=True).ok


def test_a_batch_that_fits_is_one_write_and_chains_like_single_appends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    single, batched = tmp_path / "single.jsonl", tmp_path / "batched.jsonl"
    batch = [failed_receipt(f"chatcmpl-{i}") for i in range(5)]
    with ReceiptLog(single) as log:
        for receipt in batch:
            log.append(receipt)
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    with ReceiptLog(batched) as log:
        monkeypatch.setattr("sidecar.receipts.os.write", counting_write)
        log.append_batch(batch)
        monkeypatch.undo()
    assert len(writes) == 1
    assert batched.read_bytes() == single.read_bytes()
    assert verify_receipts(batched).ok


def test_a_short_write_of_a_batch_undoes_all_of_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "receipts.jsonl"
    log = ReceiptLog(path)
    log.append(failed_receipt("chatcmpl-1"))
    size = path.stat().st_size
    real_write = os.write

    def half_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data)[: len(data) // 2])

    monkeypatch.setattr("sidecar.receipts.os.write", half_write)
    with pytest.raises(ReceiptLogError, match="short write"):
        log.append_batch([failed_receipt("chatcmpl-2"), failed_receipt("chatcmpl-3")])
    monkeypatch.undo()
    assert path.stat().st_size == size
    log.append(failed_receipt("chatcmpl-4"))
    log.close()
    assert verify_receipts(path).ok


def test_rotation_drops_files_beyond_backups(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    line_size = len(encode_receipt_line(failed_receipt("chatcmpl-00"), GENESIS_PREV_SHA256))
    with ReceiptLog(path, max_bytes=2 * line_size, backups=2) as log:
        for i in range(10):
            log.append(failed_receipt(f"chatcmpl-{i:02d}"))

    assert sorted(p.name for p in tmp_path.glob("receipts.jsonl*") if p.suffix != ".lock") == [
        "receipts.jsonl", "receipts.jsonl.1", "receipts.jsonl.2"]
    files = receipts.rotated_paths(path) + [path]
    chat_ids = [obj["chat_id"] for f in files for obj in read_lines(f)]
    assert chat_ids == [f"chatcmpl-{i:02d}" for i in range(4, 10)]
    # The oldest kept line's link points into a dropped file: it is the chain's anchor.
    assert verify_receipts(path, include_rotated=True).ok


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    with ReceiptLog(path) as log:
        log.append(failed_receipt("chatcmpl-1"))
    with ReceiptLog(path) as log:
        log.append(failed_receipt("chatcmpl-2"))
    first, second = path.read_bytes().splitlines(keepends=True)
    assert json.loads(second)["prev_sha256"] == hashlib.sha256(first).hexdigest()
    assert verify_receipts(path).ok


def test_reopen_after_rotation_continues_from_the_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    with ReceiptLog(path, max_bytes=1) as log:
        log.append(failed_receipt("chatcmpl-1"))
        log.append(failed_receipt("chatcmpl-2"))
    path.write_bytes(b"")  # as if the process stopped right after a rotation
    with ReceiptLog(path, max_bytes=1 << 20) as log:
        log.append(failed_receipt("chatcmpl-3"))
    assert verify_receipts(path, include_rotated=True).ok


def test_crash_mid_write_is_repaired_on_open(tmp_path: Path, evidence: SimulatedEvidence,
                                            node: SigningNode) -> None:
    path = tmp_path / "receipts.jsonl"
    with ReceiptLog(path) as log:
        log.append(failed_receipt("chatcmpl-1"))
        log.append(failed_receipt("chatcmpl-2"))
        prev = log.head_sha256
    torn = encode_receipt_line(failed_receipt("chatcmpl-torn"), prev)[:57]
    with path.open("ab") as fh:
        fh.write(torn)

    before = verify_receipts(path)
    assert [(r.line, r.failure.code if r.failure else None) for r in before.invalid_lines] == [
        (3, "receipt.torn")]

    with ReceiptLog(path) as log:
        assert path.read_bytes().endswith(b"\n")
        assert len(path.read_bytes().splitlines()) == 2
        assert (tmp_path / "receipts.jsonl.torn").read_bytes() == torn + b"\n"
        log.append(failed_receipt("chatcmpl-3"))

    after = verify_receipts(path)
    assert after.ok and after.total == 3


def test_short_write_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "receipts.jsonl"
    log = ReceiptLog(path)
    log.append(failed_receipt("chatcmpl-1"))
    size = path.stat().st_size
    real_write = os.write

    def half_write(fd: int, data: bytes | memoryview) -> int:  # a disk that fills mid-line
        return real_write(fd, bytes(data)[: len(data) // 2])

    monkeypatch.setattr("sidecar.receipts.os.write", half_write)
    with pytest.raises(ReceiptLogError, match="short write"):
        log.append(failed_receipt("chatcmpl-2"))
    monkeypatch.undo()

    assert path.stat().st_size == size
    log.append(failed_receipt("chatcmpl-3"))
    log.close()
    assert verify_receipts(path).ok


async def test_concurrent_appends_do_not_interleave(tmp_path: Path, evidence: SimulatedEvidence,
                                                    node: SigningNode) -> None:
    path = tmp_path / "receipts.jsonl"
    attestation = attest(evidence, [node])
    log = ReceiptLog(path)
    await log.archive_evidence_async(attestation.digest, attestation.body)
    await asyncio.gather(*(
        log.append_async(signed_receipt(node, attestation, chat_id=f"chatcmpl-{i}"))
        for i in range(50)))
    await log.aclose()

    report = verify_receipts(path)
    assert (report.total, report.verified, report.invalid) == (50, 50, 0)
    assert {r.receipt.chat_id for r in report.lines if r.receipt} == {
        f"chatcmpl-{i}" for i in range(50)}


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    with ReceiptLog(path), pytest.raises(ReceiptLogError, match="another process is writing"):
        ReceiptLog(path)
    ReceiptLog(path).close()  # the lock goes with the writer


def test_append_after_close_is_refused(tmp_path: Path) -> None:
    log = ReceiptLog(tmp_path / "receipts.jsonl")
    log.close()
    log.close()
    with pytest.raises(ReceiptLogError, match="closed"):
        log.append(failed_receipt())


# --- the evidence archive ------------------------------------------------------------------------


def test_archive_evidence_is_idempotent_and_atomic(tmp_path: Path, evidence: SimulatedEvidence,
                                                   node: SigningNode) -> None:
    attestation = attest(evidence, [node])
    with ReceiptLog(tmp_path / "receipts.jsonl") as log:
        target = log.archive_evidence(attestation.digest, attestation.body)
        assert log.archive_evidence(attestation.digest, attestation.body) == target
    assert target == tmp_path / "evidence" / f"{attestation.digest}.json"
    assert target.read_bytes() == attestation.body
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left over

    # A copy that no longer hashes to its name is replaced by the genuine body.
    target.write_bytes(b"{}")
    with ReceiptLog(tmp_path / "receipts.jsonl") as log:
        log.archive_evidence(attestation.digest, attestation.body)
    assert target.read_bytes() == attestation.body


def test_archive_refuses_a_body_that_is_not_the_digest(tmp_path: Path) -> None:
    with (ReceiptLog(tmp_path / "receipts.jsonl") as log,
          pytest.raises(ReceiptLogError, match="hashes to") as excinfo):
        log.archive_evidence("00" * 32, b"{}")
    assert excinfo.value.code == "receipts.evidence_digest_mismatch"
    assert not (tmp_path / "evidence" / f"{'00' * 32}.json").exists()


# --- the receipt itself --------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"signature": None}, "a verified receipt needs signature"),
    ({"failure_code": "x"}, "a verified receipt has no failure_code"),
    ({"request_sha256": "AB" * 32}, "request_sha256 must be 64 lower-case hex"),
    ({"time": "2026-01-01 00:00:00"}, "time must be RFC 3339 UTC"),
    ({"nonce": "zz"}, "nonce must be null or 64 lower-case hex"),
    ({"verdict": "maybe"}, "verdict must be"),
])
def test_receipt_refuses_inconsistent_fields(evidence: SimulatedEvidence, node: SigningNode,
                                             changes: dict[str, Any], message: str) -> None:
    good = signed_receipt(node, attest(evidence, [node]))
    with pytest.raises(ReceiptFormatError, match=message):
        replace(good, **changes)


def test_failed_receipt_needs_its_code() -> None:
    with pytest.raises(ReceiptFormatError, match="failed receipt needs its failure_code"):
        replace(failed_receipt(), failure_code=None)


# --- the command ---------------------------------------------------------------------------------


def test_cli_all_valid(three_verified: Written, capsys: pytest.CaptureFixture[str]) -> None:
    assert receipts_main(["verify", str(three_verified.log_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "3 receipts: 3 verified, 0 recorded as failed, 0 INVALID"


def test_cli_reports_invalid_lines(three_verified: Written,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    rewrite_line(three_verified.log_path, 2, lambda obj: _signed_by_other_key(obj, three_verified))
    assert receipts_main(["verify", str(three_verified.log_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 receipts: 2 verified, 0 recorded as failed, 1 INVALID"
    assert any(line.startswith("line 2: signature recovers 0x") for line in lines)


def test_cli_json_and_evidence_dir(three_verified: Written, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "elsewhere"
    (tmp_path / "evidence").rename(moved)
    assert receipts_main(["verify", str(three_verified.log_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["invalid"] == 3
    code = receipts_main(["verify", str(three_verified.log_path), "--evidence-dir", str(moved),
                          "--json"])
    obj = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (obj["total"], obj["verified"], obj["invalid"], obj["invalid_lines"]) == (3, 3, 0, [])


@pytest.mark.parametrize("argv", [[], ["verify"], ["nonsense", "x"]])
def test_cli_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        receipts_main(argv)
    assert info.value.code == 64


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert receipts_main(["verify", str(tmp_path / "absent.jsonl")]) == 64
    assert "cannot read" in capsys.readouterr().err


async def test_concurrent_appends_are_group_committed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    path = tmp_path / "receipts.jsonl"
    log = ReceiptLog(path)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    await asyncio.gather(*(log.append_async(failed_receipt(f"chatcmpl-{i}")) for i in range(100)))
    await log.aclose()
    assert verify_receipts(path).total == 100
    # Every line durable before its append returned, with far fewer fsyncs than lines.
    assert fsyncs < 50


async def test_a_failed_batch_fails_every_waiter(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = ReceiptLog(tmp_path / "receipts.jsonl")

    def broken(_: object) -> None:
        raise ReceiptLogError("disk on fire")

    monkeypatch.setattr(log, "append_batch", broken)
    results = await asyncio.gather(*(log.append_async(failed_receipt(f"chatcmpl-{i}"))
                                     for i in range(10)), return_exceptions=True)
    assert all(isinstance(r, ReceiptLogError) and "disk on fire" in str(r) for r in results)
    log.close()


async def test_a_cancelled_caller_still_gets_its_line_written(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    log = ReceiptLog(path)
    waiter = asyncio.ensure_future(log.append_async(failed_receipt("chatcmpl-cancelled")))
    await asyncio.sleep(0)  # queued and handed to the writer
    waiter.cancel()
    await log.aclose()  # waits for the pending batch
    assert verify_receipts(path).total == 1


async def test_a_caller_cancelled_before_the_writer_takes_the_batch_still_gets_its_line(
        tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    log = ReceiptLog(path)
    waiter = asyncio.ensure_future(log.append_async(failed_receipt("chatcmpl-cancelled")))
    await asyncio.sleep(0)
    waiter.cancel()  # cancelled at its own await: only its future goes, not the queued line
    await asyncio.gather(waiter, return_exceptions=True)
    await log.aclose()
    assert verify_receipts(path).total == 1


async def test_the_writer_thread_leaves_when_idle_and_comes_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receipts, "WRITER_IDLE_SECONDS", 0.05)
    path = tmp_path / "receipts.jsonl"
    log = ReceiptLog(path)
    await log.append_async(failed_receipt("chatcmpl-1"))
    for _ in range(100):
        if not log._worker_running:
            break
        await asyncio.sleep(0.02)
    assert not log._worker_running
    await log.append_async(failed_receipt("chatcmpl-2"))  # a new writer takes it
    await log.aclose()
    assert verify_receipts(path).total == 2


async def test_aclose_waits_for_every_pending_append(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    log = ReceiptLog(path)
    pending = [asyncio.ensure_future(log.append_async(failed_receipt(f"chatcmpl-{i}")))
               for i in range(25)]
    await asyncio.sleep(0)
    await log.aclose()
    await asyncio.gather(*pending)
    assert verify_receipts(path).total == 25


def test_a_failed_verdict_with_an_unrecordable_record_keeps_its_receipt() -> None:
    from sidecar.errors import VerificationFailed
    from sidecar.providers.wire import SignatureRecordWire
    from sidecar.proxy.verdict import CompletionVerdict

    record = SignatureRecordWire.model_construct(text="x" * 1000, signature="", signing_address="",
                                                 signing_algo="ecdsa")
    verdict = CompletionVerdict(False, "chatcmpl-1", "ab" * 32, "cd" * 32, record,
                                failure=VerificationFailed("bad", code="signature.text_malformed"))
    receipt = verdict.receipt("TEE/m")
    assert (receipt.text, receipt.signature, receipt.failure_code) == (
        None, None, "signature.text_malformed")


def test_a_fifo_in_the_evidence_directory_does_not_hang_verification(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    path = tmp_path / "receipts.jsonl"
    attestation = attest(evidence, [node])
    with ReceiptLog(path) as log:
        log.append(signed_receipt(node, attestation, chat_id="chatcmpl-fifo"))
    (tmp_path / "evidence").mkdir(exist_ok=True)
    os.mkfifo(tmp_path / "evidence" / f"{attestation.digest}.json")
    report = verify_receipts(path)
    assert report.invalid == 1
    assert "not a regular file" in report.invalid_lines[0].failure.detail  # type: ignore[union-attr]


def test_expect_head_catches_a_chain_rebuilt_after_an_edit(
        three_verified: Written, capsys: pytest.CaptureFixture[str]) -> None:
    path = three_verified.log_path
    head = verify_receipts(path).head_sha256
    assert receipts_main(["verify", str(path), "--expect-head", head]) == 0
    # Rewrite the chain from scratch: drop the last line and re-link nothing (a valid, shorter
    # file); the head noted earlier is no longer in it.
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    capsys.readouterr()
    assert verify_receipts(path).ok
    assert receipts_main(["verify", str(path), "--expect-head", head]) == 1
    assert "is not a line of this chain" in capsys.readouterr().out


def test_format_1_lines_still_read(tmp_path: Path, evidence: SimulatedEvidence,
                                   node: SigningNode) -> None:
    """Logs written before format 2 verify as they are: the new fields read as null."""
    receipt = signed_receipt(node, attest(evidence, [node]))
    obj = json.loads(encode_receipt_line(receipt, GENESIS_PREV_SHA256))
    for name in ("served_model", "signature_kind", "request_binding", "e2ee", "e2ee_model_key"):
        del obj[name]
    obj["v"] = 1
    line = json.dumps(obj, separators=(",", ":")).encode()
    assert decode_receipt_line(line) == (receipt, GENESIS_PREV_SHA256)
    obj["served_model"] = "m"  # a format 1 line with a format 2 field is doctored
    with pytest.raises(ReceiptFormatError, match="unknown field"):
        decode_receipt_line(json.dumps(obj).encode())
def test_format_2_lines_still_read(tmp_path: Path, evidence: SimulatedEvidence,
                                   node: SigningNode) -> None:
    """Logs written before format 3 verify as they are: ``e2ee`` and its key read as null."""
    receipt = signed_receipt(node, attest(evidence, [node]))
    obj = json.loads(encode_receipt_line(receipt, GENESIS_PREV_SHA256))
    for name in ("e2ee", "e2ee_model_key"):
        del obj[name]
    obj["v"] = 2
    line = json.dumps(obj, separators=(",", ":")).encode()
    assert decode_receipt_line(line) == (receipt, GENESIS_PREV_SHA256)
    obj["e2ee"] = "true"  # a format 2 line with a format 3 field is doctored
    with pytest.raises(ReceiptFormatError, match="unknown field"):
        decode_receipt_line(json.dumps(obj).encode())


def test_e2ee_fields_are_checked(tmp_path: Path, evidence: SimulatedEvidence,
                                 node: SigningNode) -> None:
    receipt = signed_receipt(node, attest(evidence, [node]))
    from dataclasses import replace
    ok = replace(receipt, e2ee="true", e2ee_model_key="ab" * 32)
    assert decode_receipt_line(encode_receipt_line(ok, GENESIS_PREV_SHA256))[0] == ok
    with pytest.raises(ReceiptFormatError, match="e2ee must be"):
        replace(receipt, e2ee="yes")
    with pytest.raises(ReceiptFormatError, match="e2ee_model_key"):
        replace(receipt, e2ee="false", e2ee_model_key="ab" * 32)
    with pytest.raises(ReceiptFormatError, match="e2ee_model_key"):
        replace(receipt, e2ee="true", e2ee_model_key="AB" * 32)


# --- replay memory (issue 11, finding 7) ---------------------------------------------------------


def test_recent_chat_ids_survive_a_restart_with_the_receipts(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    path = tmp_path / "receipts.jsonl"
    attestation = attest(evidence, [node])
    with ReceiptLog(path, max_bytes=4096, backups=3) as log:
        assert log.recent_chat_ids.first_use(MODEL, "chatcmpl-fresh")
        for i in range(8):  # enough to rotate: the ids in rotated files count too
            log.append(signed_receipt(node, attestation, chat_id=f"chatcmpl-{i}"))
        log.append(failed_receipt("chatcmpl-failed"))
    assert receipts.rotated_paths(path)
    with ReceiptLog(path) as reopened:
        recent = reopened.recent_chat_ids
        assert not recent.first_use(MODEL, "chatcmpl-0")
        assert not recent.first_use(MODEL, "chatcmpl-7")
        assert recent.first_use(MODEL, "chatcmpl-failed")  # only verified ids were delivered
        assert recent.first_use("other-model", "chatcmpl-0")  # per model


def test_recent_chat_ids_are_bounded() -> None:
    recent = receipts.RecentChatIds(per_model=3, max_models=2)
    for i in range(10):
        assert recent.first_use("a", f"id-{i}")
    assert len(recent) == 3 and recent.first_use("a", "id-0")
    recent.first_use("b", "x")
    recent.first_use("c", "x")
    assert len(recent) == 2  # "a" was the least recently used model


# --- the evidence archive's bounds (issue 11, finding 3) ----------------------------------------


def _archive_padding(log: ReceiptLog, count: int, size: int = 30 << 10) -> None:
    for i in range(count):
        body = json.dumps({"pad": i, "x": "y" * size}).encode()
        digest = hashlib.sha256(body).hexdigest()
        log.archive_evidence(digest, body)
        log.archive_context(digest, b'{"context": 1}')


def test_the_evidence_archive_is_bounded_and_keeps_what_receipts_name(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    path = tmp_path / "receipts.jsonl"
    named = attest(evidence, [node])
    with ReceiptLog(path, evidence_max_bytes=2 << 20) as log:
        log.archive_evidence(named.digest, named.body)
        log.append(signed_receipt(node, named, chat_id="chatcmpl-named"))
        _archive_padding(log, 300)  # 9 MiB of reports no receipt names
        files = list(log.evidence_dir.iterdir())
        assert sum(p.stat().st_size for p in files) < (2 << 20) + (256 << 10)
        assert (log.evidence_dir / f"{named.digest}.json").exists()
        assert len([p for p in files if p.name.endswith(".context.json")]) == \
            len([p for p in files if not p.name.endswith(".context.json")]) - 1
    assert verify_receipts(path).ok


def test_old_unnamed_evidence_is_pruned_on_restart(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    path = tmp_path / "receipts.jsonl"
    named = attest(evidence, [node])
    with ReceiptLog(path) as log:
        log.archive_evidence(named.digest, named.body)
        log.append(signed_receipt(node, named, chat_id="chatcmpl-named"))
        _archive_padding(log, 5, size=10)
    assert len(list((tmp_path / "evidence").iterdir())) == 11
    later = lambda: __import__("time").time() + 31 * 86400  # noqa: E731
    with ReceiptLog(path, evidence_max_age=30 * 86400, clock=later) as log:
        assert [p.name for p in log.evidence_dir.iterdir()] == [f"{named.digest}.json"]
    assert verify_receipts(path).ok


def _near_receipt(node: SigningNode, attestation: Attestation, *, served_model: str | None,
                  kind: str | None, three_part: bool = True,
                  renamed_request: bytes | None = None) -> Receipt:
    """A verified format-2 receipt for a 3-part (or 2-part) text by ``node``."""
    request = json.dumps({"model": MODEL, "messages": []}).encode()
    response = json.dumps({"id": "chatcmpl-near"}).encode()
    signed_request = renamed_request if renamed_request is not None else request
    text = f"{hashlib.sha256(signed_request).hexdigest()}:{hashlib.sha256(response).hexdigest()}"
    if three_part:
        text = f"simulated:{text}"
    return Receipt(
        time=receipt_time(), model=MODEL, request_sha256=hashlib.sha256(request).hexdigest(),
        response_sha256=hashlib.sha256(response).hexdigest(), chat_id="chatcmpl-near", text=text,
        signature=node.sign(text, "ecdsa"), signing_address=node.address("ecdsa"),
        signing_algo="ecdsa", evidence_sha256=attestation.digest, nonce=attestation.nonce,
        verdict="verified", failure_code=None, served_model=served_model, signature_kind=kind,
        request_binding="model_renamed" if renamed_request is not None else "exact")


def _verify_one(tmp_path: Path, attestation: Attestation, receipt: Receipt) -> Any:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "receipts.jsonl"
    with ReceiptLog(path) as log:
        log.archive_evidence(attestation.digest, attestation.body)
        log.append(receipt)
    (result,) = verify_receipts(path).lines
    return result


def test_three_part_receipt_of_an_attested_model_verifies(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    near = attest(evidence, [node], faults=Faults(evidence={"shape": "near"}))  # model "simulated"
    result = _verify_one(tmp_path, near, _near_receipt(node, near, served_model="simulated",
                                                       kind="provider_tee"))
    assert result.outcome is ReceiptOutcome.VERIFIED, result.failures


def test_receipt_naming_another_model_than_the_evidence_is_invalid(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    near = attest(evidence, [node], faults=Faults(evidence={"shape": "near"}))
    receipt = _near_receipt(node, near, served_model="other-model", kind="provider_tee",
                            three_part=False)
    result = _verify_one(tmp_path, near, receipt)
    assert [c.code for c in result.failures] == ["receipt.served_model_mismatch"]


def test_gateway_kind_receipt_by_a_model_node_is_invalid(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    near = attest(evidence, [node], faults=Faults(evidence={"shape": "near"}))
    receipt = _near_receipt(node, near, served_model="simulated", kind="gateway",
                            three_part=False)
    result = _verify_one(tmp_path, near, receipt)
    assert [c.code for c in result.failures] == ["receipt.signer_role_mismatch"]


def test_renamed_request_receipt_verifies_as_recorded(
        tmp_path: Path, evidence: SimulatedEvidence, node: SigningNode) -> None:
    """NanoGPT's renamed request cannot be re-hashed without its bytes: the receipt's text is
    checked over the hash it names, and the check says the binding was taken as recorded."""
    near = attest(evidence, [node], faults=Faults(evidence={"shape": "near"}))
    receipt = _near_receipt(node, near, served_model="simulated", kind=None,
                            renamed_request=b'{"model":"upstream/model","messages":[]}')
    result = _verify_one(tmp_path, near, receipt)
    assert result.outcome is ReceiptOutcome.VERIFIED, result.failures
    # The same receipt claiming an exact binding fails: the hashes differ.
    exact = replace(receipt, request_binding="exact")
    assert [c.code for c in _verify_one(tmp_path / "x", near, exact).failures] == [
        "signature.request_hash_mismatch"]
