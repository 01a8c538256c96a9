"""Per-completion signature verification (spec section 3): each step fails on its own."""

from __future__ import annotations

import hashlib

import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.errors import VerificationFailed
from sidecar.simulator.provider import SigningNode
from sidecar.verify.signature import (
    AttestedSigner,
    CompletionSignature,
    CompletionSignatureReport,
    address_of_public_key,
    eip191_digest,
    keccak256,
    normalise_key,
    recover_eip191_signer,
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
