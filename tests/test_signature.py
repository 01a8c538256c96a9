"""Per-completion signature verification (spec section 3): each step fails on its own."""

from __future__ import annotations

import hashlib
import json

import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.config import ProviderKind
from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.providers.contracts import signer_rules
from sidecar.providers.wire import parse_signature_record
from sidecar.simulator.provider import SigningNode
from sidecar.verify.signature import (
    MAX_TEXT_LENGTH,
    AttestedSigner,
    CompletionSignature,
    CompletionSignatureReport,
    RequestBinding,
    Role,
    SignatureKind,
    address_of_public_key,
    eip191_digest,
    keccak256,
    normalise_key,
    parse_signed_text,
    recover_eip191_signer,
    top_level_model_span,
    verify_completion_signature,
)

REQUEST = hashlib.sha256(b'{"model": "m"}').hexdigest()
RESPONSE = hashlib.sha256(b'{"id": "chatcmpl-1"}').hexdigest()
TEXT = f"{REQUEST}:{RESPONSE}"


def signed_by(node: SigningNode, algo: str = "ecdsa", text: str = TEXT) -> CompletionSignature:
    return CompletionSignature(text, node.sign(text, algo), node.address(algo), algo)


def model_signers(keys: set[str]) -> dict[str, AttestedSigner]:
    """Attested model-node signers for these normalised keys (algo read off the key's form)."""
    return {key: AttestedSigner(key, "ecdsa" if key.startswith("0x") else "ed25519", "model")
            for key in keys}


def verify(signed: CompletionSignature, attested: set[str]) -> CompletionSignatureReport:
    return verify_completion_signature(signed, request_sha256=REQUEST, response_sha256=RESPONSE,
                                       attested=model_signers(attested), expected_model=None,
                                       unkinded_roles=frozenset({"model"}))


def test_keccak_is_not_sha3() -> None:
    # Known Keccak-256 of the empty string (Ethereum), which differs from SHA3-256's.
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"") != hashlib.sha3_256(b"").digest()


def test_known_ethereum_address() -> None:
    # Private key 1 has the well-known address 0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf.
    key = coincurve.PrivateKey((1).to_bytes(32, "big"))
    assert address_of_public_key(key.public_key) == "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"


def test_eip191_prefix_includes_decimal_length() -> None:
    assert eip191_digest(b"abc") == keccak256(b"\x19Ethereum Signed Message:\n3abc")


@pytest.mark.parametrize("algo", ["ecdsa", "ed25519"])
def test_genuine_signature_verifies(algo: str) -> None:
    node = SigningNode()
    report = verify(signed_by(node, algo), {normalise_key(node.address(algo), algo)})
    assert report.ok
    assert report.signer == normalise_key(node.address(algo), algo)


def test_v_of_zero_or_one_is_accepted() -> None:
    node = SigningNode()
    signed = signed_by(node)
    raw = bytes.fromhex(signed.signature[2:])
    low_v = "0x" + (raw[:64] + bytes([raw[64] - 27])).hex()
    assert recover_eip191_signer(TEXT.encode(), low_v) == node.address("ecdsa").lower()


def fail_code(signed: CompletionSignature, attested: set[str]) -> tuple[str | None, str]:
    report = verify(signed, attested)
    failure = report.failure
    assert failure is not None
    return failure.code, failure.detail


def test_request_hash_mismatch() -> None:
    node = SigningNode()
    other = hashlib.sha256(b"other request").hexdigest()
    code, detail = fail_code(signed_by(node, text=f"{other}:{RESPONSE}"), {node.address("ecdsa").lower()})
    assert code == "signature.request_hash_mismatch"
    assert other in detail


def test_response_hash_mismatch() -> None:
    node = SigningNode()
    other = hashlib.sha256(b"other response").hexdigest()
    code, _ = fail_code(signed_by(node, text=f"{REQUEST}:{other}"), {node.address("ecdsa").lower()})
    assert code == "signature.response_hash_mismatch"


@pytest.mark.parametrize("text", ["", "abc", f"{REQUEST}:{RESPONSE}:x", f"{REQUEST.upper()}:{RESPONSE}",
                                  "x" * 300])
def test_malformed_text(text: str) -> None:
    node = SigningNode()
    code, _ = fail_code(signed_by(node, text=text), {node.address("ecdsa").lower()})
    assert code == "signature.text_malformed"


def test_signature_from_another_key_is_not_attested() -> None:
    attested, attacker = SigningNode(), SigningNode()
    code, detail = fail_code(signed_by(attacker), {attested.address("ecdsa").lower()})
    assert code == "signature.address_not_attested"
    assert detail.startswith(f"recovered {attacker.address('ecdsa').lower()}")


def test_signature_naming_another_address() -> None:
    signer, victim = SigningNode(), SigningNode()
    forged = CompletionSignature(TEXT, signer.sign(TEXT, "ecdsa"), victim.address("ecdsa"), "ecdsa")
    code, detail = fail_code(forged, {victim.address("ecdsa").lower()})
    assert code == "signature.address_mismatch"
    assert f"recovered {signer.address('ecdsa').lower()}" in detail


@pytest.mark.parametrize("signature", ["0x", "0xzz", "0x" + "00" * 64, "0x" + "00" * 65,
                                       "0x" + "11" * 64 + "1d"])
def test_malformed_ecdsa_signature(signature: str) -> None:
    node = SigningNode()
    signed = CompletionSignature(TEXT, signature, node.address("ecdsa"), "ecdsa")
    code, _ = fail_code(signed, {node.address("ecdsa").lower()})
    assert code == "signature.malformed"


def test_ed25519_signature_by_other_key_fails() -> None:
    node = SigningNode()
    other = Ed25519PrivateKey.generate()
    signed = CompletionSignature(TEXT, other.sign(TEXT.encode()).hex(), node.address("ed25519"),
                                 "ed25519")
    code, _ = fail_code(signed, {node.address("ed25519")})
    assert code == "signature.invalid"


def test_unknown_algorithm() -> None:
    node = SigningNode()
    signed = CompletionSignature(TEXT, node.sign(TEXT, "ecdsa"), node.address("ecdsa"), "rsa")
    code, _ = fail_code(signed, {node.address("ecdsa").lower()})
    assert code == "signature.unknown_algo"


def test_raise_for_failure_carries_the_code() -> None:
    attacker = SigningNode()
    report = verify(signed_by(attacker), set())
    with pytest.raises(VerificationFailed, match="recovered 0x[0-9a-f]{40}, which is not an attested") as info:
        report.raise_for_failure()
    assert info.value.code == "signature.address_not_attested"


@pytest.mark.parametrize("key", ["0xAbC" + "0" * 37, "abc" + "0" * 37, " 0XABC" + "0" * 37])
def test_ecdsa_addresses_normalise_to_one_form(key: str) -> None:
    assert normalise_key(key, "ecdsa") == "0xabc" + "0" * 37


# --- spec 0.2: 3-part texts, signature kinds, model binding, the NanoGPT rename -------------

MODEL = "Qwen/Qwen3.5-122B-A10B"
TEXT3 = f"{MODEL}:{REQUEST}:{RESPONSE}"


def signer_of(node: SigningNode, algo: str = "ecdsa", role: Role = "model",
              model_name: str | None = MODEL) -> dict[str, AttestedSigner]:
    key = normalise_key(node.address(algo), algo)
    return {key: AttestedSigner(key, algo, role, model_name)}


def check3(signed: CompletionSignature, attested: dict[str, AttestedSigner], *,
           expected_model: str | None = MODEL, unkinded: frozenset[Role] = frozenset({"model"}),
           request_sha256: str = REQUEST, request_body: bytes | None = None,
           accept_model_renamed: bool = False) -> CompletionSignatureReport:
    return verify_completion_signature(
        signed, request_sha256=request_sha256, response_sha256=RESPONSE, attested=attested,
        expected_model=expected_model, unkinded_roles=unkinded, request_body=request_body,
        accept_model_renamed=accept_model_renamed)


def kinded(node: SigningNode, text: str, kind: SignatureKind | None,
           algo: str = "ecdsa") -> CompletionSignature:
    return CompletionSignature(text, node.sign(text, algo), node.address(algo), algo, kind)


@pytest.mark.parametrize("algo", ["ecdsa", "ed25519"])
def test_three_part_text_verifies_and_reports_its_facts(algo: str) -> None:
    node = SigningNode()
    report = check3(kinded(node, TEXT3, SignatureKind.PROVIDER_TEE, algo), signer_of(node, algo))
    assert report.ok, report.failure
    assert (report.text_model, report.signer_role, report.request_binding) == (
        MODEL, "model", RequestBinding.EXACT)
    assert report.signature_valid and report.signer_attested
    assert report.checks[-1].name == "signature.model"


@pytest.mark.parametrize("text", [
    f"{REQUEST}:{RESPONSE}",                          # 2-part
    f"{MODEL}:{REQUEST}:{RESPONSE}",                  # 3-part, model with "/"
    f"{'m' * 256}:{REQUEST}:{RESPONSE}",              # the longest model
    f"ollama:tag:{REQUEST}:{RESPONSE}",               # split on the last two colons
])
def test_text_forms_accepted(text: str) -> None:
    parsed = parse_signed_text(text)
    assert (parsed.request_sha256, parsed.response_sha256) == (REQUEST, RESPONSE)
    assert parsed.model == (None if text.count(":") == 1 else text.rsplit(":", 2)[0])


@pytest.mark.parametrize("text", [
    f":{REQUEST}:{RESPONSE}",                         # empty model
    f"{'m' * 257}:{REQUEST}:{RESPONSE}",              # model over the bound
    f"Qwen\x00:{REQUEST}:{RESPONSE}",                 # control character
    f"Qwen\n:{REQUEST}:{RESPONSE}",
    f"Qwen\u202e:{REQUEST}:{RESPONSE}",               # bidi override, not printable
    f"Qwen\ud800:{REQUEST}:{RESPONSE}",               # lone surrogate
    f"{MODEL}:{REQUEST}:{RESPONSE}:",                 # trailing colon
    f"{MODEL}:{REQUEST}:{RESPONSE.upper()}",
    f"{MODEL}:{REQUEST}",                             # the model is not a digest
    f"{MODEL}:{REQUEST}:{RESPONSE[:-1]}",
    REQUEST + RESPONSE,
])
def test_text_forms_refused(text: str) -> None:
    node = SigningNode()
    signed = CompletionSignature(text, "0x" + "11" * 65, node.address("ecdsa"))
    report = check3(signed, signer_of(node))
    assert report.failure is not None and report.failure.code == "signature.text_malformed"
    assert report.request_binding is None and not report.signature_valid


def test_three_part_text_by_a_key_attested_without_model_name() -> None:
    node = SigningNode()
    report = check3(kinded(node, TEXT3, None), signer_of(node, model_name=None))
    assert report.failure is not None and report.failure.code == "signature.model_unattested"


def test_three_part_text_naming_another_model_than_the_attested_one() -> None:
    node = SigningNode()
    text = f"zai-org/GLM-5.1-FP8:{REQUEST}:{RESPONSE}"
    report = check3(kinded(node, text, None), signer_of(node))
    assert report.failure is not None and report.failure.code == "signature.text_model_mismatch"
    assert "'zai-org/GLM-5.1-FP8'" in report.failure.detail


@pytest.mark.parametrize("text", [TEXT3, TEXT])
def test_signer_attested_for_another_model_than_requested(text: str) -> None:
    node = SigningNode()
    report = check3(kinded(node, text, None), signer_of(node), expected_model="other/model")
    assert report.failure is not None and report.failure.code == "signature.model_mismatch"
    assert report.failure.detail.endswith("not the requested 'other/model'")


def test_no_expected_model_compares_the_text_with_the_attestation_only() -> None:
    node = SigningNode()
    report = check3(kinded(node, TEXT3, None), signer_of(node), expected_model=None)
    assert report.ok and "no expected model" in report.checks[-1].detail


GATEWAY, PROVIDER_TEE = SignatureKind.GATEWAY, SignatureKind.PROVIDER_TEE
MODEL_ONLY: frozenset[Role] = frozenset({"model"})
GATEWAY_ONLY: frozenset[Role] = frozenset({"gateway"})


@pytest.mark.parametrize("kind, role, unkinded, code", [
    (GATEWAY, "gateway", MODEL_ONLY, None),
    (GATEWAY, "model", MODEL_ONLY, "signature.kind_key_mismatch"),
    (GATEWAY, "model", frozenset({"model", "gateway"}), "signature.kind_key_mismatch"),
    (PROVIDER_TEE, "model", GATEWAY_ONLY, None),
    (PROVIDER_TEE, "gateway", GATEWAY_ONLY, "signature.kind_key_mismatch"),
    (PROVIDER_TEE, "gateway", frozenset({"model", "gateway"}), "signature.kind_key_mismatch"),
    (None, "model", MODEL_ONLY, None),
    (None, "gateway", MODEL_ONLY, "signature.unkinded_role_refused"),
    (None, "gateway", GATEWAY_ONLY, None),
    (None, "model", GATEWAY_ONLY, "signature.unkinded_role_refused"),
    (None, "model", frozenset(), "signature.unkinded_role_refused"),
])
def test_signature_kind_against_the_attested_role(kind: SignatureKind | None, role: Role,
                                                  unkinded: frozenset[Role],
                                                  code: str | None) -> None:
    node = SigningNode()
    # A gateway signs the 2-part text and its report names no model (spec 0.2).
    text, model_name = (TEXT, None) if role == "gateway" else (TEXT3, MODEL)
    report = check3(kinded(node, text, kind), signer_of(node, role=role, model_name=model_name),
                    unkinded=unkinded)
    assert (report.failure.code if report.failure else None) == code
    assert report.signer_role == role and report.signer_attested


def test_signer_attested_under_the_other_algorithm_is_not_attested() -> None:
    node = SigningNode()
    key = normalise_key(node.address("ecdsa"), "ecdsa")
    report = check3(kinded(node, TEXT3, None), {key: AttestedSigner(key, "ed25519", "model", MODEL)})
    assert report.failure is not None and report.failure.code == "signature.address_not_attested"
    assert report.signature_valid and not report.signer_attested and report.signer_role is None


def test_forged_signature_is_neither_valid_nor_attested() -> None:
    signer, victim = SigningNode(), SigningNode()
    forged = CompletionSignature(TEXT3, signer.sign(TEXT3, "ecdsa"), victim.address("ecdsa"))
    report = check3(forged, signer_of(victim))
    assert report.failure is not None and report.failure.code == "signature.address_mismatch"
    assert not report.signature_valid and not report.signer_attested


# The NanoGPT rename (spec 0.1): the enclave hashed our bytes with only "model" replaced.
SENT = (b'{"messages":[{"role":"user","content":"say \\"model\\": \\"TEE/x\\""}],'
        b'"model":"TEE/qwen","stream":false}')
UPSTREAM = "Qwen/Qwen3.5-122B-A10B"


def renamed(body: bytes, token: bytes) -> bytes:
    span = top_level_model_span(body)
    assert span is not None
    return body[:span[0]] + token + body[span[1]:]


def rename_report(body: bytes, signed_body: bytes, *, text_model: str | None = UPSTREAM,
                  expected_model: str | None = UPSTREAM,
                  accept: bool = True) -> CompletionSignatureReport:
    node = SigningNode()
    signed_request = hashlib.sha256(signed_body).hexdigest()
    text = (f"{text_model}:" if text_model else "") + f"{signed_request}:{RESPONSE}"
    return check3(kinded(node, text, None), signer_of(node, model_name=UPSTREAM),
                  expected_model=expected_model, request_sha256=hashlib.sha256(body).hexdigest(),
                  request_body=body, accept_model_renamed=accept)


def test_rename_of_only_the_model_binds_when_the_profile_renames() -> None:
    report = rename_report(SENT, SENT.replace(b'"model":"TEE/qwen"', f'"model":"{UPSTREAM}"'.encode()))
    assert report.ok, report.failure
    assert report.request_binding is RequestBinding.MODEL_RENAMED
    assert "renamed to 'Qwen/Qwen3.5-122B-A10B'" in report.checks[1].detail


def test_rename_is_refused_where_the_profile_does_not_rename() -> None:
    report = rename_report(SENT, renamed(SENT, f'"{UPSTREAM}"'.encode()), accept=False)
    assert report.failure is not None and report.failure.code == "signature.request_model_renamed"
    assert report.request_binding is RequestBinding.MODEL_RENAMED


@pytest.mark.parametrize("text_model, expected_model", [(UPSTREAM, None), (None, UPSTREAM)])
def test_rename_candidates_are_the_text_model_and_the_expected_model(
        text_model: str | None, expected_model: str | None) -> None:
    report = rename_report(SENT, renamed(SENT, f'"{UPSTREAM}"'.encode()), text_model=text_model,
                           expected_model=expected_model)
    assert report.ok and report.request_binding is RequestBinding.MODEL_RENAMED


def test_rename_to_a_name_no_candidate_gives_is_a_mismatch() -> None:
    report = rename_report(SENT, renamed(SENT, b'"some/other-model"'))
    assert report.failure is not None and report.failure.code == "signature.request_hash_mismatch"
    assert report.request_binding is None


def test_rename_plus_any_other_change_is_not_a_rename() -> None:
    tampered = renamed(SENT, f'"{UPSTREAM}"'.encode()).replace(b'"stream":false', b'"stream":true')
    report = rename_report(SENT, tampered)
    assert report.failure is not None and report.failure.code == "signature.request_hash_mismatch"


@pytest.mark.parametrize("body", [
    b'{"messages":[{"model":"TEE/qwen"}],"input":{"model":"TEE/qwen"}}',     # nested only
    b'{"model":"TEE/qwen","messages":[],"model":"TEE/qwen"}',                # twice
    b'{"model":["TEE/qwen"]}',                                               # not a string
    b'[{"model":"TEE/qwen"}]',                                               # not an object
    b'{"model":"TEE/qwen"} {}',                                              # trailing data
    b'{"model":"TEE/qwen"',                                                  # truncated
    b'\xef\xbb\xbf{"model":"TEE/qwen"}',                                     # BOM
    b'{"model":"TEE/qwen\xff"}',                                             # not UTF-8
])
def test_no_single_top_level_model_string_means_no_rename(body: bytes) -> None:
    assert top_level_model_span(body) is None
    # Whatever the signed bytes, a body without one top-level model string never renames.
    signed = body.replace(b"TEE/qwen", UPSTREAM.encode())
    report = rename_report(body, signed)
    assert report.failure is not None and report.failure.code == "signature.request_hash_mismatch"


@pytest.mark.parametrize("body, token", [
    (b'{ "model" : "TEE/qwen" , "n": 1 }', b'"TEE/qwen"'),                  # whitespace
    (b'{\n  "stream": true,\n  "model": "TEE\\/qwen"\n}', b'"TEE\\/qwen"'),    # escaped "/"
    (b'{"model":"\\u0054EE/qwen"}', b'"\\u0054EE/qwen"'),                    # \u escape
    ('{"prompt":"été ünïcode","model":"TEE/qwen"}'.encode(), b'"TEE/qwen"'), # bytes != chars
    (b'{"x":{"model":"a"},"model":"TEE/qwen"}', b'"TEE/qwen"'),              # nested first
])
def test_model_span_is_the_top_level_token_as_sent(body: bytes, token: bytes) -> None:
    span = top_level_model_span(body)
    assert span is not None and body[span[0]:span[1]] == token
    report = rename_report(body, renamed(body, f'"{UPSTREAM}"'.encode()))
    assert report.ok and report.request_binding is RequestBinding.MODEL_RENAMED


def test_rename_to_a_non_ascii_name_in_either_json_form() -> None:
    name = "modèle/ü"
    for token in (json.dumps(name), json.dumps(name, ensure_ascii=False)):
        report = rename_report(SENT, renamed(SENT, token.encode()), text_model=None,
                               expected_model=name)
        # The signer is attested for UPSTREAM, so the rename binds and the model step refuses.
        assert report.request_binding is RequestBinding.MODEL_RENAMED
        assert report.failure is not None and report.failure.code == "signature.model_mismatch"


def test_exact_binding_computes_no_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(body: bytes) -> None:
        raise AssertionError("the exact case must not search for a rename")

    monkeypatch.setattr("sidecar.verify.signature.top_level_model_span", forbidden)
    node = SigningNode()
    report = check3(kinded(node, TEXT3, None), signer_of(node), request_body=b'{"model":"m"}')
    assert report.ok and report.request_binding is RequestBinding.EXACT


def test_without_the_sent_bytes_there_is_no_rename() -> None:
    report = rename_report(SENT, renamed(SENT, f'"{UPSTREAM}"'.encode()))
    assert report.ok
    node = SigningNode()
    signed_request = hashlib.sha256(renamed(SENT, f'"{UPSTREAM}"'.encode())).hexdigest()
    text = f"{UPSTREAM}:{signed_request}:{RESPONSE}"
    report = check3(kinded(node, text, None), signer_of(node, model_name=UPSTREAM),
                    expected_model=UPSTREAM, request_sha256=hashlib.sha256(SENT).hexdigest(),
                    request_body=None, accept_model_renamed=True)
    assert report.failure is not None and report.failure.code == "signature.request_hash_mismatch"


# --- the record on the wire (spec 0.2, 0.3) ------------------------------------------------

def record(**fields: object) -> bytes:
    node = SigningNode()
    base: dict[str, object] = {"text": TEXT3, "signature": node.sign(TEXT3, "ecdsa"),
                               "signing_address": node.address("ecdsa"), "signing_algo": "ecdsa"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@pytest.mark.parametrize("kind", ["gateway", "provider_tee", None, ...])
def test_record_signature_kind_parses(kind: object) -> None:
    parsed = parse_signature_record(record(signature_kind=kind))
    assert parsed.completion_signature().signature_kind == (None if kind in (None, ...) else kind)


def test_record_extra_fields_are_ignored() -> None:
    # RedPill/Phala ACI's legacy record (spec 0.1) carries api_version and receipt.
    parsed = parse_signature_record(record(api_version="aci/1", receipt={"id": "r-1"}))
    assert parsed.text == TEXT3


def test_record_with_the_longest_three_part_text_parses() -> None:
    text = f"{'m' * 256}:{REQUEST}:{RESPONSE}"
    assert len(text) == MAX_TEXT_LENGTH
    assert parse_signature_record(record(text=text)).text == text
    with pytest.raises(VerificationFailed) as info:
        parse_signature_record(record(text="m" + text))
    assert info.value.code == "signature.record_malformed"


@pytest.mark.parametrize("fields", [
    {"signature_kind": "tee"},
    {"signature_kind": "GATEWAY"},
    {"signing_address": "6525e128afcffebf7eed05d485d7be983cdae934"},         # ecdsa without 0x
    {"signing_address": "0x" + "ab" * 32},                                    # a key, not an address
    {"signing_algo": "ed25519", "signing_address": "0x" + "ab" * 32},         # ed25519 with 0x
    {"signing_algo": "ed25519", "signing_address": "ab" * 20},
    {"signing_algo": "ed25519", "signing_address": "zz" * 32},
    {"text": ...},
])
def test_record_off_contract_is_malformed(fields: dict[str, object]) -> None:
    with pytest.raises(VerificationFailed) as info:
        parse_signature_record(record(**fields))
    assert info.value.code == "signature.record_malformed"


@pytest.mark.parametrize("error_code, shown", [
    ("STREAM_DISCONNECTED", "STREAM_DISCONNECTED"),
    ("SIGNATURE_UNSUPPORTED", "SIGNATURE_UNSUPPORTED"),
    ("X\x1b[31m\nforged log line", "X[31mforged log line"),
    ("A" * 500, "A" * 64),
    (None, "(unreadable)"),
])
def test_provider_not_available_answer_is_final(error_code: object, shown: str) -> None:
    body = json.dumps({"error_code": error_code, "message": "signature not available"}).encode()
    with pytest.raises(VerificationFailed, match=r"\(error_code (.*)\)$") as info:
        parse_signature_record(body)
    assert info.value.code == "signature.unavailable"
    assert info.value.message.endswith(f"(error_code {shown})")
    assert not isinstance(info.value, VerificationIncomplete)


def test_error_code_beside_signature_fields_is_not_an_unavailable_answer() -> None:
    with pytest.raises(VerificationFailed) as info:
        parse_signature_record(json.dumps({"error_code": "X", "text": TEXT}).encode())
    assert info.value.code == "signature.record_malformed"


@pytest.mark.parametrize("kind, unkinded, renamed_ok", [
    (ProviderKind.NANOGPT, {"model"}, True),
    (ProviderKind.NEAR_CLOUD, {"model"}, False),
    (ProviderKind.NEAR_DIRECT, {"model"}, False),
    (ProviderKind.PRIVATE_ML_SDK, {"model"}, False),
    (ProviderKind.REDPILL, {"model"}, False),  # ACI's flat report attests its key as a node
])
def test_signer_rules_per_provider(kind: ProviderKind, unkinded: set[str], renamed_ok: bool) -> None:
    rules = signer_rules(kind)
    assert (rules.unkinded_roles, rules.accept_model_renamed) == (unkinded, renamed_ok)


def test_every_provider_has_signer_rules() -> None:
    assert all(signer_rules(kind).unkinded_roles for kind in ProviderKind)


def test_a_non_ascii_named_key_is_a_mismatch_not_a_crash() -> None:
    # hmac.compare_digest raises TypeError on non-ASCII str; records built in code skip the wire.
    node = SigningNode()
    signed = CompletionSignature(TEXT, node.sign(TEXT, "ecdsa"), "0x\u00e9" + "0" * 39)
    report = verify(signed, {node.address("ecdsa").lower()})
    assert report.failure is not None and report.failure.code == "signature.address_mismatch"


def test_the_report_says_whether_the_request_was_bound() -> None:
    """A typed fact (not a failure code to compare) tells the I/O layer the binding step's end."""
    node = SigningNode()
    attested = {node.address("ecdsa").lower()}
    assert verify(signed_by(node), attested).request_bound is True
    other = hashlib.sha256(b"other request").hexdigest()
    assert verify(signed_by(node, text=f"{other}:{RESPONSE}"), attested).request_bound is False
    assert verify(signed_by(node, text="not a text"), attested).request_bound is None
    renamed_body = b'{"model": "TEE/m"}'
    upstream_sha256 = hashlib.sha256(b'{"model": "m"}').hexdigest()
    text = f"m:{upstream_sha256}:{RESPONSE}"
    refused = verify_completion_signature(
        signed_by(node, text=text), request_sha256=hashlib.sha256(renamed_body).hexdigest(),
        response_sha256=RESPONSE, attested=model_signers(attested), expected_model=None,
        unkinded_roles=frozenset({"model"}), request_body=renamed_body)
    assert refused.failure is not None
    assert (refused.request_bound, refused.failure.code) == (False, "signature.request_model_renamed")
