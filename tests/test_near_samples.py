"""Real NEAR AI signatures (tests/assets/near/, see its README), used exactly as captured.

The direct-node stream is a whole exchange: request bytes, SSE bytes and the node's 3-part ecdsa
record. The two NEAR Cloud ed25519 records come without their bodies, so their digests stand in
for the bytes and the signature, kind and key steps are what is tested.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.providers.wire import parse_signature_record
from sidecar.verify.checks import Check, Status
from sidecar.verify.exchange import verify_exchange
from sidecar.verify.signature import (
    AttestedSigner,
    CompletionSignature,
    CompletionSignatureReport,
    RequestBinding,
    Role,
    SignatureKind,
    parse_signed_text,
    verify_completion_signature,
)

ASSETS = Path(__file__).parent / "assets" / "near"
EXCHANGE = json.loads((ASSETS / "direct_stream_exchange.json").read_text())
RECORDS = json.loads((ASSETS / "cloud_signature_records.json").read_text())
REQUEST = base64.b64decode(EXCHANGE["request_body_b64"])
RESPONSE = base64.b64decode(EXCHANGE["response_body_b64"])
RECORD = EXCHANGE["signature_response"]
NODE_KEY = "0x6525e128afcffebf7eed05d485d7be983cdae934"
NODE_MODEL = "Qwen/Qwen3.5-122B-A10B"
NODE = {NODE_KEY: AttestedSigner(NODE_KEY, "ecdsa", "model", NODE_MODEL)}


def exchange(request: bytes = REQUEST, response: bytes = RESPONSE,
             record: dict[str, Any] = RECORD, **kwargs: Any) -> CompletionSignatureReport:
    options: dict[str, Any] = {"attested": NODE, "expected_model": NODE_MODEL,
                               "unkinded_roles": frozenset({"model"}),
                               "accept_model_renamed": False}
    options.update(kwargs)
    return verify_exchange(request, response, json.dumps(record).encode(), **options)


def code(report: CompletionSignatureReport) -> str | None:
    return report.failure.code if report.failure is not None else None


def test_the_direct_stream_exchange_verifies() -> None:
    report = exchange()
    assert report.ok, report.failure
    assert (report.signer, report.algo, report.signer_role, report.text_model,
            report.request_binding) == (NODE_KEY, "ecdsa", "model", NODE_MODEL, RequestBinding.EXACT)
    assert [c.name for c in report.checks] == [
        "signature.record", "signature.text", "signature.request_hash", "signature.response_hash",
        "signature.cryptographic", "signature.signer", "signature.attested_key", "signature.kind",
        "signature.model"]


def _model_value_bytes() -> range:
    start = REQUEST.index(b'"model":"') + len(b'"model":"')
    return range(start, REQUEST.index(b'"', start))


@pytest.mark.parametrize("index", range(len(REQUEST)))
def test_each_request_byte_changed_fails(index: int) -> None:
    tampered = bytearray(REQUEST)
    tampered[index] ^= 0x01
    report = exchange(request=bytes(tampered))
    # A change inside the model value is exactly a rename back to the text's model: recognised,
    # and refused where the profile does not rename (NEAR); any other byte is a plain mismatch.
    expected = ("signature.request_model_renamed" if index in _model_value_bytes()
                else "signature.request_hash_mismatch")
    assert code(report) == expected


def test_a_changed_request_model_is_accepted_as_a_rename_only_by_a_renaming_profile() -> None:
    tampered = REQUEST.replace(NODE_MODEL.encode(), b"TEE/qwen3.5")
    assert code(exchange(request=tampered)) == "signature.request_model_renamed"
    report = exchange(request=tampered, accept_model_renamed=True)
    assert report.ok and report.request_binding is RequestBinding.MODEL_RENAMED
    # ... and only to the model the sidecar resolved: the signer serves NODE_MODEL.
    assert code(exchange(request=tampered, accept_model_renamed=True,
                         expected_model="TEE/qwen3.5")) == "signature.model_mismatch"


@pytest.mark.parametrize("index", range(0, len(RESPONSE), 7))
def test_each_response_byte_changed_fails(index: int) -> None:
    tampered = bytearray(RESPONSE)
    tampered[index] ^= 0x01
    assert code(exchange(response=bytes(tampered))) == "signature.response_hash_mismatch"


def test_response_cut_before_done_fails() -> None:
    cut = RESPONSE.removesuffix(b"data: [DONE]\n\n")
    assert cut != RESPONSE
    assert code(exchange(response=cut)) == "signature.response_hash_mismatch"


def _text_change(text: str, index: int) -> str:
    char = text[index]
    if char in "0123456789abcdef":
        replacement = "0123456789abcdef"[("0123456789abcdef".index(char) + 1) % 16]
    elif char == ":":
        replacement = ";"
    else:
        replacement = "x" if char != "x" else "y"
    return text[:index] + replacement + text[index + 1:]


@pytest.mark.parametrize("index", range(len(RECORD["text"])))
def test_each_text_character_changed_fails(index: int) -> None:
    text = RECORD["text"]
    model_end = len(NODE_MODEL)
    report = exchange(record={**RECORD, "text": _text_change(text, index)})
    if index < model_end:
        # Another model in the text: the signature then recovers some other key.
        expected = "signature.address_mismatch"
    elif index in (model_end, model_end + 65):
        expected = "signature.text_malformed"
    elif index < model_end + 65:
        expected = "signature.request_hash_mismatch"
    else:
        expected = "signature.response_hash_mismatch"
    assert code(report) == expected


def test_the_model_in_the_text_changed_fails() -> None:
    text = RECORD["text"].replace(NODE_MODEL, "Qwen/Qwen3.5-397B-A17B")
    report = exchange(record={**RECORD, "text": text})
    assert code(report) == "signature.address_mismatch"
    assert report.signer != NODE_KEY and not report.signature_valid


def test_the_signature_changed_fails() -> None:
    signature = RECORD["signature"][:-4] + ("00" if RECORD["signature"][-4:-2] != "00" else "01") \
        + RECORD["signature"][-2:]
    assert code(exchange(record={**RECORD, "signature": signature})) in {
        "signature.address_mismatch", "signature.malformed"}


def test_the_node_key_attested_for_another_model_fails() -> None:
    other = {NODE_KEY: AttestedSigner(NODE_KEY, "ecdsa", "model", "zai-org/GLM-5.1-FP8")}
    assert code(exchange(attested=other, expected_model="zai-org/GLM-5.1-FP8")) \
        == "signature.text_model_mismatch"


def test_the_request_for_another_model_fails() -> None:
    assert code(exchange(expected_model="zai-org/GLM-5.1-FP8")) == "signature.model_mismatch"


def test_an_unattested_node_fails_as_unattested_with_a_valid_signature() -> None:
    report = exchange(attested={})
    assert code(report) == "signature.address_not_attested"
    assert report.signature_valid and not report.signer_attested


@pytest.mark.parametrize("kind, role, expected", [
    ("provider_tee", "model", None),
    ("gateway", "model", "signature.kind_key_mismatch"),
])
def test_the_node_record_given_a_kind(kind: str, role: Role, expected: str | None) -> None:
    assert code(exchange(record={**RECORD, "signature_kind": kind})) == expected


# --- the NEAR Cloud ed25519 records: no bodies, so their digests stand in for them ----------

def cloud(name: str) -> CompletionSignature:
    fields = {k: v for k, v in RECORDS[name].items() if not k.startswith("_")}
    return parse_signature_record(json.dumps(fields).encode()).completion_signature()


def check_record(signed: CompletionSignature, role: Role, model_name: str | None, *,
                 expected_model: str | None = None,
                 unkinded: frozenset[Role] = frozenset({"model"})) -> CompletionSignatureReport:
    parsed = parse_signed_text(signed.text)
    key = signed.signing_address
    return verify_completion_signature(
        signed, request_sha256=parsed.request_sha256, response_sha256=parsed.response_sha256,
        attested={key: AttestedSigner(key, "ed25519", role, model_name)},
        expected_model=expected_model, unkinded_roles=unkinded)


PROVIDER_TEE_MODEL = "Qwen/Qwen3.6-35B-A3B-FP8"


def test_the_provider_tee_record_verifies_against_its_model_node_key() -> None:
    signed = cloud("provider_tee_ed25519")
    assert signed.signature_kind is SignatureKind.PROVIDER_TEE
    report = check_record(signed, "model", PROVIDER_TEE_MODEL, expected_model=PROVIDER_TEE_MODEL)
    assert report.ok, report.failure
    assert report.text_model == PROVIDER_TEE_MODEL and report.algo == "ed25519"


def test_the_provider_tee_record_is_refused_against_a_gateway_key() -> None:
    report = check_record(cloud("provider_tee_ed25519"), "gateway", None)
    assert code(report) == "signature.kind_key_mismatch"


def test_the_provider_tee_record_for_another_model_is_refused() -> None:
    report = check_record(cloud("provider_tee_ed25519"), "model", PROVIDER_TEE_MODEL,
                          expected_model=NODE_MODEL)
    assert code(report) == "signature.model_mismatch"


def test_the_gateway_record_verifies_against_an_attested_gateway_key() -> None:
    signed = cloud("gateway_ed25519_two_part")
    assert signed.signature_kind is SignatureKind.GATEWAY
    report = check_record(signed, "gateway", None, expected_model=PROVIDER_TEE_MODEL)
    assert report.ok, report.failure
    assert report.signer_role == "gateway" and report.text_model is None


def test_the_gateway_record_is_refused_against_a_model_key() -> None:
    report = check_record(cloud("gateway_ed25519_two_part"), "model", PROVIDER_TEE_MODEL)
    assert code(report) == "signature.kind_key_mismatch"
    assert report.signature_valid and report.signer_attested


def test_the_gateway_record_without_its_kind_needs_a_profile_admitting_gateway_keys() -> None:
    signed = cloud("gateway_ed25519_two_part")
    unkinded = CompletionSignature(signed.text, signed.signature, signed.signing_address,
                                   signed.signing_algo)
    assert code(check_record(unkinded, "gateway", None)) == "signature.unkinded_role_refused"
    assert check_record(unkinded, "gateway", None, unkinded=frozenset({"gateway"})).ok


@pytest.mark.parametrize("name", ["provider_tee_ed25519", "gateway_ed25519_two_part"])
def test_each_cloud_record_with_one_text_character_changed_fails(name: str) -> None:
    signed = cloud(name)
    role: Role = "model" if signed.signature_kind is SignatureKind.PROVIDER_TEE else "gateway"
    model = PROVIDER_TEE_MODEL if role == "model" else None
    for index in range(len(signed.text)):
        text = _text_change(signed.text, index)
        changed = CompletionSignature(text, signed.signature, signed.signing_address,
                                      signed.signing_algo, signed.signature_kind)
        try:
            parsed = parse_signed_text(text)
        except VerificationFailed:
            continue  # a broken separator: text_malformed, covered above
        key = signed.signing_address
        report = verify_completion_signature(
            changed, request_sha256=parsed.request_sha256, response_sha256=parsed.response_sha256,
            attested={key: AttestedSigner(key, "ed25519", role, model)}, expected_model=None,
            unkinded_roles=frozenset({"model"}))
        assert code(report) == "signature.invalid", index


# --- verify_exchange's own step: the record is parsed first, its outcome the first check -----

@pytest.mark.parametrize(("record_body", "code", "detail"), [
    (b"not json", "signature.record_malformed", "signature record is not JSON"),
    (b'{"error_code": "not_found", "message": "gone"}', "signature.unavailable",
     "the provider has no signature for this completion (error_code not_found)"),
])
def test_a_record_that_does_not_parse_is_a_report_of_one_failed_check(
        record_body: bytes, code: str, detail: str) -> None:
    report = verify_exchange(REQUEST, RESPONSE, record_body, attested=NODE,
                             expected_model=NODE_MODEL, unkinded_roles=frozenset({"model"}),
                             accept_model_renamed=False)
    assert [(c.name, c.status, c.code, c.detail) for c in report.checks] == [
        ("signature.record", Status.FAIL, code, detail)]
    # Nothing was recovered or attested; the algorithm read is the default one (ecdsa).
    assert (report.signer, report.algo, report.signature_valid, report.signer_attested) == (
        None, "ecdsa", False, False)


@pytest.mark.parametrize(("kind", "detail"), [
    (None, "ecdsa record, no signature_kind"),
    ("provider_tee", "ecdsa record, signature_kind provider_tee"),
])
def test_the_parsed_record_check_says_what_was_read(kind: str | None, detail: str) -> None:
    record = RECORD if kind is None else {**RECORD, "signature_kind": kind}
    report = exchange(record=record)
    assert report.ok, report.failure
    assert report.checks[0] == Check.passed("signature.record", detail)
