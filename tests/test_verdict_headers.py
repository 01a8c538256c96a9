"""``verdict.CompletionVerdict``: the one verdict of a completion as the app reads it (the
``x-tee-*`` headers of each mode, the request binding label) and as the audit trail keeps it
(its receipt), on the real NEAR Cloud signature records of ``tests/assets/near/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import Mode
from sidecar.errors import VerificationFailed
from sidecar.providers.wire import SignatureRecordWire, parse_signature_record
from sidecar.proxy.verdict import CompletionVerdict
from sidecar.receipts import ReceiptFormatError
from sidecar.verify.signature import RequestBinding

RECORDS = json.loads((Path(__file__).parent / "assets" / "near"
                      / "cloud_signature_records.json").read_text())


def record(name: str, **changes: Any) -> SignatureRecordWire:
    fields = {k: v for k, v in RECORDS[name].items() if not k.startswith("_")} | changes
    return parse_signature_record(json.dumps(fields).encode())


NODE = record("provider_tee_ed25519")
REQUEST, RESPONSE = NODE.text.split(":")[1:]
SIGNER = NODE.signing_address
EVIDENCE, NONCE = "ee" * 32, "9a" * 32
MODEL = "Qwen/Qwen3.6-35B-A3B-FP8"
MISMATCH = VerificationFailed("response hash differs", code="signature.response_hash_mismatch")


def verified(**changes: Any) -> CompletionVerdict:
    """A verified verdict as ``CompletionVerifier.verify`` builds it for the real record."""
    fields: dict[str, Any] = dict(
        chat_id="chatcmpl-1", request_sha256=REQUEST, response_sha256=RESPONSE, record=NODE,
        signer=SIGNER, evidence_sha256=EVIDENCE, nonce=NONCE,
        request_binding=RequestBinding.EXACT, served_model=MODEL, e2ee="false") | changes
    return CompletionVerdict(True, **fields)


def failed(failure: VerificationFailed = MISMATCH, **changes: Any) -> CompletionVerdict:
    fields: dict[str, Any] = dict(
        chat_id="chatcmpl-1", request_sha256=REQUEST, response_sha256=RESPONSE, record=NODE,
        failure=failure, e2ee="false") | changes
    return CompletionVerdict(False, **fields)


# -- the headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Mode.ENFORCE, Mode.FLAG])
def test_a_verified_verdict_names_signer_evidence_model_kind_and_binding(mode: Mode) -> None:
    assert verified().headers(mode) == {
        "x-tee-verified": "true", "x-tee-request-binding": "exact",
        "x-tee-signing-address": SIGNER, "x-tee-evidence-sha256": EVIDENCE,
        "x-tee-served-model": MODEL, "x-tee-signature-kind": "provider_tee"}


def test_a_failed_verdict_says_its_code_and_nothing_it_did_not_establish() -> None:
    assert failed().headers(Mode.FLAG) == {
        "x-tee-verified": "false", "x-tee-request-binding": "unchecked",
        "x-tee-signature-kind": "provider_tee", "x-tee-failure": "signature.response_hash_mismatch"}


@pytest.mark.parametrize("verdict, value", [(verified(), "true"), (failed(), "false")],
                         ids=["verified", "failed"])
def test_monitor_only_says_the_verdict(verdict: CompletionVerdict, value: str) -> None:
    assert verdict.headers(Mode.MONITOR) == {"x-tee-verified": value}


def test_a_record_without_a_kind_sends_no_kind_header() -> None:
    headers = verified(record=record("provider_tee_ed25519", signature_kind=None)).headers(
        Mode.ENFORCE)
    assert "x-tee-signature-kind" not in headers
    assert "x-tee-signature-kind" not in failed(record=None).headers(Mode.FLAG)


def test_the_gateway_kind_is_named() -> None:
    gateway = record("gateway_ed25519_two_part")
    assert verified(record=gateway).headers(Mode.FLAG)["x-tee-signature-kind"] == "gateway"


@pytest.mark.parametrize("served", ["model\r\nx-injected: 1", "modèle", "tab\tmodel", ""],
                         ids=["crlf", "non-ascii", "control", "empty"])
def test_a_served_model_a_header_cannot_carry_is_left_out(served: str) -> None:
    # The model name comes from the provider's attestation: never a header injection.
    headers = verified(served_model=served).headers(Mode.FLAG)
    assert "x-tee-served-model" not in headers
    assert headers["x-tee-verified"] == "true"


def test_empty_signer_and_evidence_are_not_sent() -> None:
    headers = failed(signer="", evidence_sha256="").headers(Mode.ENFORCE)
    assert "x-tee-signing-address" not in headers and "x-tee-evidence-sha256" not in headers


# -- the request binding label (spec 0.1: every verdict says which) ------------------------------


@pytest.mark.parametrize("verdict, label", [
    (verified(), "exact"),
    (verified(request_binding=RequestBinding.MODEL_RENAMED), "model_renamed"),
    (failed(), "unchecked"),
    # The signature check bound the request, then failed later: the binding still stands.
    (failed(request_binding=RequestBinding.EXACT), "exact"),
    # Binding the request is what failed: the label is that failure's code.
    (failed(VerificationFailed("renamed", code="signature.request_model_renamed"),
            request_unbound=True), "signature.request_model_renamed"),
    (failed(VerificationFailed("x", code="signature.request_hash_mismatch"), request_unbound=True,
            request_binding=RequestBinding.EXACT), "signature.request_hash_mismatch"),
    # Unbound without a failure cannot be a verdict the verifier builds; it reads as the binding.
    (CompletionVerdict(True, request_unbound=True, request_binding=RequestBinding.EXACT),
     "exact"),
], ids=["exact", "renamed", "unchecked", "bound-then-failed", "unbound", "unbound-over-binding",
        "unbound-without-failure"])
def test_request_binding_label(verdict: CompletionVerdict, label: str) -> None:
    assert verdict.request_binding_label() == label
    assert verdict.headers(Mode.FLAG)["x-tee-request-binding"] == label


# -- the receipt ---------------------------------------------------------------------------------


def test_a_verified_receipt_records_every_fact_and_no_text() -> None:
    key = "ab" * 32
    receipt = verified(e2ee="true", e2ee_model_key=key).receipt("TEE/qwen")
    assert vars(receipt) | {"time": None} == {
        "time": None, "model": "TEE/qwen", "request_sha256": REQUEST, "response_sha256": RESPONSE,
        "chat_id": "chatcmpl-1", "text": NODE.text, "signature": NODE.signature,
        "signing_address": SIGNER, "signing_algo": "ed25519", "evidence_sha256": EVIDENCE,
        "nonce": NONCE, "verdict": "verified", "failure_code": None, "served_model": MODEL,
        "signature_kind": "provider_tee", "request_binding": "exact", "e2ee": "true",
        "e2ee_model_key": key}
    assert receipt.time.endswith("Z")


def test_a_failed_receipt_keeps_the_record_but_names_no_served_model() -> None:
    receipt = failed(served_model=MODEL, request_binding=RequestBinding.MODEL_RENAMED,
                     e2ee="unavailable").receipt("m")
    assert (receipt.verdict, receipt.failure_code) == ("failed", "signature.response_hash_mismatch")
    assert (receipt.text, receipt.signature, receipt.signing_address, receipt.signing_algo) == (
        NODE.text, NODE.signature, SIGNER, "ed25519")
    assert receipt.served_model is None
    assert (receipt.request_binding, receipt.e2ee) == ("model_renamed", "unavailable")


def test_a_failed_receipt_without_record_or_kind() -> None:
    receipt = failed(record=None, chat_id=None).receipt("m")
    assert (receipt.text, receipt.signature, receipt.signing_address, receipt.signing_algo,
            receipt.signature_kind, receipt.chat_id, receipt.request_binding) == (None,) * 7
    unkinded = failed(record=record("provider_tee_ed25519", signature_kind=None)).receipt("m")
    assert unkinded.signature_kind is None and unkinded.text == NODE.text


def test_the_model_key_is_recorded_only_for_an_e2ee_exchange() -> None:
    assert verified(e2ee="false", e2ee_model_key="ab" * 32).receipt("m").e2ee_model_key is None


def test_an_unrecordable_record_is_dropped_only_from_a_failed_receipt() -> None:
    # A record out of a receipt's bounds (model_construct: as a hostile provider could send it
    # past a looser parser): the failure is still recorded, without the record.
    huge = SignatureRecordWire.model_construct(text="x" * 1000, signature="s" * 10,
                                               signing_address=SIGNER, signing_algo="ed25519",
                                               signature_kind=None)
    receipt = failed(record=huge).receipt("m")
    assert (receipt.text, receipt.signature, receipt.signing_address, receipt.signing_algo) == (
        None, None, None, None)
    assert (receipt.verdict, receipt.failure_code, receipt.chat_id) == (
        "failed", "signature.response_hash_mismatch", "chatcmpl-1")
    # A verified completion is never recorded without the record that verified it.
    with pytest.raises(ReceiptFormatError):
        verified(record=huge).receipt("m")


def test_a_verdict_without_hashes_cannot_be_recorded() -> None:
    # Every completion that reaches a receipt has both hashes; a verdict without them is refused
    # by the receipt's shape check, never written with a made-up digest.
    with pytest.raises(ReceiptFormatError, match="request_sha256"):
        failed(request_sha256=None).receipt("m")
    with pytest.raises(ReceiptFormatError, match="response_sha256"):
        failed(response_sha256=None).receipt("m")
