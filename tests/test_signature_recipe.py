"""``verify_completion_signature`` step by step: the exact checks (name, status, code, detail) and
facts of the report for every way the eight-step recipe can end.

``test_signature.py`` asserts the failure code of each fault; these tests pin the whole report,
so that a check renamed, a detail that stops naming the hashes or keys it compared, or a fact
(``signer``, ``signature_valid``, ``signer_attested``…) set on the wrong path fails a test
(mutation testing found each of these untested: docs/mutation.md).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.simulator.provider import SigningNode
from sidecar.verify.checks import Status
from sidecar.verify.signature import (
    MAX_TEXT_LENGTH,
    AttestedSigner,
    CompletionSignature,
    CompletionSignatureReport,
    RequestBinding,
    Role,
    SignatureKind,
    normalise_key,
    parse_signed_text,
    recover_eip191_signer,
    verify_completion_signature,
    verify_ed25519,
)

SENT = b'{"model":"TEE/qwen","messages":[]}'
UPSTREAM = "Qwen/Qwen3-32B"
REQUEST = hashlib.sha256(SENT).hexdigest()
RESPONSE = hashlib.sha256(b'{"id": "chatcmpl-1"}').hexdigest()
TEXT = f"{REQUEST}:{RESPONSE}"
TEXT3 = f"{UPSTREAM}:{TEXT}"
NODE = SigningNode()
OTHER = SigningNode()
PASS, FAIL = Status.PASS, Status.FAIL

Row = tuple[str, Status, str | None, str]


def key(node: SigningNode = NODE, algo: str = "ecdsa") -> str:
    return normalise_key(node.address(algo), algo)


def record(text: str = TEXT, *, node: SigningNode = NODE, algo: str = "ecdsa",
           kind: SignatureKind | None = None, **fields: Any) -> CompletionSignature:
    base: dict[str, Any] = {"text": text, "signature": node.sign(text, algo),
                            "signing_address": node.address(algo), "signing_algo": algo,
                            "signature_kind": kind}
    base.update(fields)
    return CompletionSignature(**base)


def attested(node: SigningNode = NODE, algo: str = "ecdsa", role: Role = "model",
             model_name: str | None = UPSTREAM) -> dict[str, AttestedSigner]:
    return {key(node, algo): AttestedSigner(key(node, algo), algo, role, model_name)}


def run(signed: CompletionSignature, signers: dict[str, AttestedSigner] | None = None, *,
        expected_model: str | None = UPSTREAM, unkinded: frozenset[Role] = frozenset({"model"}),
        request_sha256: str = REQUEST, **kwargs: Any) -> CompletionSignatureReport:
    return verify_completion_signature(
        signed, request_sha256=request_sha256, response_sha256=RESPONSE,
        attested=attested() if signers is None else signers, expected_model=expected_model,
        unkinded_roles=unkinded, **kwargs)


def rows(report: CompletionSignatureReport) -> list[Row]:
    return [(c.name, c.status, c.code, c.detail) for c in report.checks]


def facts(report: CompletionSignatureReport) -> tuple[Any, ...]:
    return (report.signer, report.algo, report.request_binding, report.signer_role,
            report.text_model, report.signature_valid, report.signer_attested)


TEXT_OK = ("signature.text", PASS, None, "text is '<sha256>:<sha256>'")
TEXT3_OK = ("signature.text", PASS, None, f"text is '{UPSTREAM}:<sha256>:<sha256>'")
REQUEST_OK = ("signature.request_hash", PASS, None, "covers the request bytes sent")
RESPONSE_OK = ("signature.response_hash", PASS, None, "covers the response bytes received")


def crypto_ok(algo: str = "ecdsa", node: SigningNode = NODE) -> Row:
    return ("signature.cryptographic", PASS, None, f"{algo} signature by {key(node, algo)}")


def signer_ok(algo: str = "ecdsa") -> Row:
    return ("signature.signer", PASS, None, f"signed by the named key {key(NODE, algo)}")


def attested_ok(role: str = "model", algo: str = "ecdsa") -> Row:
    return ("signature.attested_key", PASS, None, f"{key(NODE, algo)} is an attested {role} key")


UNKINDED_OK = ("signature.kind", PASS, None,
               "no signature_kind; a model key may sign such records here")
MODEL_OK = ("signature.model", PASS, None, f"signed for {UPSTREAM!r}")


@pytest.mark.parametrize("algo", ["ecdsa", "ed25519"])
def test_a_three_part_text_passes_all_eight_steps(algo: str) -> None:
    report = run(record(TEXT3, algo=algo), attested(algo=algo))
    assert rows(report) == [TEXT3_OK, REQUEST_OK, RESPONSE_OK, crypto_ok(algo), signer_ok(algo),
                            attested_ok(algo=algo), UNKINDED_OK, MODEL_OK]
    assert facts(report) == (key(NODE, algo), algo, RequestBinding.EXACT, "model", UPSTREAM,
                             True, True)
    assert report.ok
    report.raise_for_failure()


def test_a_two_part_text_with_no_expected_model_says_so() -> None:
    report = run(record(), expected_model=None)
    assert rows(report)[0] == TEXT_OK
    assert rows(report)[-1] == ("signature.model", PASS, None,
                                f"signed for {UPSTREAM!r} (no expected model to compare)")
    assert facts(report)[4] is None  # text_model of a 2-part text


def test_a_signer_attested_without_a_model_adds_no_model_check() -> None:
    report = run(record(), attested(model_name=None))
    assert rows(report)[-1] == UNKINDED_OK and report.ok


def test_an_empty_signing_algo_means_ecdsa() -> None:
    report = run(record(signing_algo=""))
    assert report.ok and report.algo == "ecdsa"


def test_malformed_text_ends_at_step_1() -> None:
    report = run(record("not a text"))
    assert rows(report) == [("signature.text", FAIL, "signature.text_malformed",
                             "signed text is neither '<sha256>:<sha256>' nor "
                             "'<model>:<sha256>:<sha256>'")]
    assert facts(report) == (None, "ecdsa", None, None, None, False, False)
    with pytest.raises(VerificationFailed) as raised:
        report.raise_for_failure()
    assert raised.value.code == "signature.text_malformed"


def test_request_hash_mismatch_ends_at_step_2() -> None:
    report = run(record(), request_sha256="0" * 64)
    assert rows(report) == [TEXT_OK, (
        "signature.request_hash", FAIL, "signature.request_hash_mismatch",
        f"signed request hash {REQUEST} != sent bytes' hash {'0' * 64}")]
    assert facts(report) == (None, "ecdsa", None, None, None, False, False)


def _renamed_text() -> tuple[str, str]:
    body = SENT.replace(b'"TEE/qwen"', f'"{UPSTREAM}"'.encode())
    return f"{UPSTREAM}:{hashlib.sha256(body).hexdigest()}:{RESPONSE}", REQUEST


def test_a_rename_is_refused_by_default() -> None:
    text, sent_hash = _renamed_text()
    report = run(record(text), request_sha256=sent_hash, request_body=SENT)
    assert rows(report)[-1] == (
        "signature.request_hash", FAIL, "signature.request_model_renamed",
        f"signed request hash covers the bytes sent with the model renamed to {UPSTREAM!r}, "
        "and this provider profile does not rename models")
    assert facts(report) == (None, "ecdsa", RequestBinding.MODEL_RENAMED, None, UPSTREAM,
                             False, False)


def test_a_rename_passes_where_the_profile_renames() -> None:
    text, sent_hash = _renamed_text()
    report = run(record(text), request_sha256=sent_hash, request_body=SENT,
                 accept_model_renamed=True)
    assert rows(report)[1] == ("signature.request_hash", PASS, None,
                               "covers the request bytes sent with only the model renamed to "
                               f"{UPSTREAM!r}")
    assert report.ok and report.request_binding is RequestBinding.MODEL_RENAMED


def test_a_rename_to_a_non_ascii_name_binds_in_its_escaped_form_too() -> None:
    name = "Modèle/ünï"
    for escaped in (True, False):
        body = SENT.replace(b'"TEE/qwen"', json.dumps(name, ensure_ascii=escaped).encode())
        text = f"{name}:{hashlib.sha256(body).hexdigest()}:{RESPONSE}"
        report = run(record(text), attested(model_name=name), expected_model=name,
                     request_body=SENT, accept_model_renamed=True)
        assert report.ok, (escaped, rows(report))


def test_response_hash_mismatch_ends_at_step_3() -> None:
    text = f"{REQUEST}:{'1' * 64}"
    report = run(record(text))
    assert rows(report) == [TEXT_OK, REQUEST_OK, (
        "signature.response_hash", FAIL, "signature.response_hash_mismatch",
        f"signed response hash {'1' * 64} != received bytes' hash {RESPONSE}")]
    assert facts(report) == (None, "ecdsa", RequestBinding.EXACT, None, None, False, False)


@pytest.mark.parametrize("signature, code, detail", [
    ("zz", "signature.malformed", "signature is not hex"),
    ("0x" + "00" * 64, "signature.malformed", "ecdsa signature is 64 bytes, expected 65"),
    ("0x" + "11" * 64 + "05", "signature.malformed", "ecdsa signature has v=5"),
])
def test_a_malformed_ecdsa_signature_ends_at_step_4(signature: str, code: str,
                                                    detail: str) -> None:
    report = run(record(signature=signature))
    assert rows(report)[-1] == ("signature.cryptographic", FAIL, code, detail)
    assert facts(report) == (None, "ecdsa", RequestBinding.EXACT, None, None, False, False)


def test_an_ecdsa_signature_recovering_no_key_is_malformed() -> None:
    report = run(record(signature="0x" + "00" * 64 + "1b"))
    (name, status, code, detail) = rows(report)[-1]
    assert (name, status, code) == ("signature.cryptographic", FAIL, "signature.malformed")
    assert detail.startswith("ecdsa signature recovers no key (")


def test_an_unknown_algorithm_ends_at_step_4() -> None:
    report = run(record(signing_algo="rsa"))
    assert rows(report)[-1] == ("signature.cryptographic", FAIL, "signature.unknown_algo",
                                "unknown signing_algo 'rsa'")
    assert report.algo == "rsa"


def test_a_signature_naming_another_key_ends_at_step_5() -> None:
    report = run(record(signing_address=OTHER.address("ecdsa")))
    assert rows(report)[-1] == ("signature.signer", FAIL, "signature.address_mismatch",
                                f"recovered {key()} but the signature names {key(OTHER)}")
    assert facts(report) == (key(), "ecdsa", RequestBinding.EXACT, None, None, False, False)


@pytest.mark.parametrize("signers", [{}, "ed25519"], ids=["no key", "other algorithm"])
def test_a_key_not_attested_ends_at_step_6(signers: Any) -> None:
    if signers == "ed25519":
        signers = {key(): AttestedSigner(key(), "ed25519", "model", UPSTREAM)}
    report = run(record(), signers)
    assert rows(report)[-1] == (
        "signature.attested_key", FAIL, "signature.address_not_attested",
        f"recovered {key()}, which is not an attested signing key of this model")
    # A valid signature by an unknown key: the one case a re-attestation may resolve.
    assert facts(report) == (key(), "ecdsa", RequestBinding.EXACT, None, None, True, False)


@pytest.mark.parametrize("kind, role", [(SignatureKind.GATEWAY, "model"),
                                        (SignatureKind.PROVIDER_TEE, "gateway")])
def test_a_kind_the_role_does_not_match_ends_at_step_7(kind: SignatureKind, role: Role) -> None:
    report = run(record(kind=kind), attested(role=role))
    assert rows(report)[-1] == (
        "signature.kind", FAIL, "signature.kind_key_mismatch",
        f"a {kind} signature by {key()}, which is attested as a {role} key")
    assert facts(report) == (key(), "ecdsa", RequestBinding.EXACT, role, None, True, True)


@pytest.mark.parametrize("kind, role", [(SignatureKind.GATEWAY, "gateway"),
                                        (SignatureKind.PROVIDER_TEE, "model")])
def test_a_kind_the_role_matches_passes_step_7(kind: SignatureKind, role: Role) -> None:
    report = run(record(kind=kind), attested(role=role), unkinded=frozenset())
    assert ("signature.kind", PASS, None, f"a {kind} signature by a {role} key") in rows(report)
    assert report.ok


@pytest.mark.parametrize("unkinded, admitted", [(frozenset(), "no"),
                                                (frozenset({"gateway"}), "gateway")])
def test_an_unkinded_record_by_a_role_the_profile_refuses(unkinded: frozenset[Role],
                                                         admitted: str) -> None:
    report = run(record(), unkinded=unkinded)
    assert rows(report)[-1] == (
        "signature.kind", FAIL, "signature.unkinded_role_refused",
        "a record without signature_kind signed by a model key; this provider profile admits "
        f"only {admitted} keys for those")
    assert facts(report)[0] == key() and report.signer_attested


def test_an_unkinded_refusal_names_every_admitted_role_in_order() -> None:
    report = run(record(), attested(role="model"),
                 unkinded=frozenset({"gateway", "other"}))  # type: ignore[arg-type]
    assert rows(report)[-1][3].endswith("admits only gateway or other keys for those")


def test_a_text_model_the_signer_is_not_attested_for_ends_at_step_8() -> None:
    report = run(record(TEXT3), attested(model_name=None))
    assert rows(report)[-1] == (
        "signature.model", FAIL, "signature.model_unattested",
        f"the text names {UPSTREAM!r} but the attestation of {key()} names no model")
    assert facts(report)[0] == key()
    report = run(record(TEXT3), attested(model_name="other/model"))
    assert rows(report)[-1] == (
        "signature.model", FAIL, "signature.text_model_mismatch",
        f"the text names {UPSTREAM!r} but {key()} is attested for 'other/model'")
    assert facts(report)[0] == key()


def test_a_signer_attested_for_another_model_than_requested_ends_at_step_8() -> None:
    report = run(record(), expected_model="TEE/other")
    assert rows(report)[-1] == (
        "signature.model", FAIL, "signature.model_mismatch",
        f"{key()} is attested for {UPSTREAM!r}, not the requested 'TEE/other'")
    assert facts(report) == (key(), "ecdsa", RequestBinding.EXACT, "model", None, True, True)


# -- the primitives' own messages --------------------------------------------------------------


def test_parse_signed_text_messages() -> None:
    too_long = "a" * (MAX_TEXT_LENGTH + 1)
    cases = {
        too_long: f"signed text is {MAX_TEXT_LENGTH + 1} characters, over {MAX_TEXT_LENGTH}",
        f":{REQUEST}:{RESPONSE}": "the model of a 3-part signed text is empty, too long or not "
                                  "printable",
        f"{REQUEST}:{RESPONSE.upper()}": "signed text does not end in two lower-case sha256 hex "
                                         "digests",
    }
    for text, message in cases.items():
        with pytest.raises(VerificationFailed) as raised:
            parse_signed_text(text)
        assert (raised.value.code, raised.value.message) == ("signature.text_malformed", message)
    longest = parse_signed_text(f"{'m' * 256}:{TEXT}")  # exactly MAX_TEXT_LENGTH characters
    assert longest.model == "m" * 256 and len(f"{'m' * 256}:{TEXT}") == MAX_TEXT_LENGTH


@pytest.mark.parametrize("signature, public_key, message", [
    ("zz", "00" * 32, "ed25519 signature or key is not hex"),
    ("00" * 64, "zz", "ed25519 signature or key is not hex"),
    ("00" * 63, "00" * 32, "ed25519 signature/key lengths 63/32, expected 64/32"),
    ("00" * 64, "00" * 31, "ed25519 signature/key lengths 64/31, expected 64/32"),
])
def test_malformed_ed25519_input(signature: str, public_key: str, message: str) -> None:
    with pytest.raises(VerificationFailed) as raised:
        verify_ed25519(b"text", signature, public_key)
    assert (raised.value.code, raised.value.message) == ("signature.malformed", message)


def test_ed25519_accepts_0x_prefixes_and_names_the_key_it_failed_under() -> None:
    text = TEXT.encode()
    signature = NODE.sign(TEXT, "ed25519")
    public_key = NODE.address("ed25519")
    assert verify_ed25519(text, "0x" + signature.removeprefix("0x"), public_key) == key(
        NODE, "ed25519")
    assert verify_ed25519(text, signature, "0x" + public_key.removeprefix("0x")) == key(
        NODE, "ed25519")
    with pytest.raises(VerificationFailed) as raised:
        verify_ed25519(b"other text", signature, public_key)
    assert (raised.value.code, raised.value.message) == (
        "signature.invalid", f"ed25519 signature does not verify under {key(NODE, 'ed25519')}")


def test_recover_accepts_a_signature_without_0x() -> None:
    signature = NODE.sign(TEXT, "ecdsa")
    assert recover_eip191_signer(TEXT.encode(), signature.removeprefix("0x")) == key()


# -- hostile strings and exact spans -------------------------------------------------------------


def test_a_lone_surrogate_in_the_named_address_is_a_mismatch_not_a_crash() -> None:
    report = run(record(signing_address="0x\ud800" + "11" * 19))
    assert rows(report)[-1][:3] == ("signature.signer", FAIL, "signature.address_mismatch")


def test_a_lone_surrogate_in_the_callers_request_hash_is_a_mismatch_not_a_crash() -> None:
    report = run(record(), request_sha256="\udc00" * 64)
    assert rows(report)[-1][:3] == ("signature.request_hash", FAIL,
                                    "signature.request_hash_mismatch")


def test_a_model_token_reserialised_under_the_same_name_is_not_a_rename() -> None:
    # The app sent "\u00e9"-escaped; the signed bytes carry the same name unescaped. Nothing was
    # renamed, so the rename search must not call that a rename: the bytes simply differ.
    name = "mod\u00e8le"
    sent = json.dumps({"model": name}).encode()  # ensure_ascii: "mod\\u00e8le"
    signed_body = json.dumps({"model": name}, ensure_ascii=False).encode()
    assert sent != signed_body
    text = f"{name}:{hashlib.sha256(signed_body).hexdigest()}:{RESPONSE}"
    report = run(record(text), attested(model_name=name), expected_model=name,
                 request_sha256=hashlib.sha256(sent).hexdigest(), request_body=sent,
                 accept_model_renamed=True)
    assert rows(report)[-1][:3] == ("signature.request_hash", FAIL,
                                    "signature.request_hash_mismatch")


@pytest.mark.parametrize("body", [b'{"model": "m"}\n', b'{"model": "m"} \r\n\t'])
def test_trailing_json_whitespace_keeps_the_model_span(body: bytes) -> None:
    from sidecar.verify.signature import top_level_model_span

    assert top_level_model_span(body) == (10, 13)
