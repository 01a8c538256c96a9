"""The simulator's own signing code against vectors made with eth-account, and a real signature.

The simulator must not share the verifier's helpers (a shared bug would pass both sides), so its
Keccak/EIP-191/address code is pinned here against an independent implementation: fixed vectors
produced with eth-account 0.14 (``Account.from_key(bytes(range(1, 33))).sign_message(
encode_defunct(text=TEXT))``), eth-account itself at test time, and the real NEAR signature in
``tests/assets/near/direct_stream_exchange.json``.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import sys
from pathlib import Path

import coincurve
import pytest
# eth-account (through eth-abi's parser) raises the interpreter's recursion limit to 100000 on
# import; a later test that feeds the sidecar deeply nested JSON then overflows the C stack and
# crashes the whole run instead of meeting RecursionError. Put the limit back.
_RECURSION_LIMIT = sys.getrecursionlimit()
from eth_account import Account  # noqa: E402
from eth_account.messages import encode_defunct  # noqa: E402

sys.setrecursionlimit(_RECURSION_LIMIT)

from sidecar.simulator import signing
from sidecar.simulator.provider import SigningNode

ASSETS = Path(__file__).parent / "assets" / "near"
KEY = bytes(range(1, 33))
TEXT = "Qwen/Qwen3.5-122B-A10B:" + "ab" * 32 + ":" + "cd" * 32
# Made with eth-account 0.14.0 (see the module docstring).
VECTOR_ADDRESS = "0x6370eF2f4Db3611D657b90667De398a2Cc2a370C"
VECTOR_DIGEST = "148b9dcb13b005ffbf46e7d801ec5c387c114bb18a4b7a4de1607828cde2db56"
VECTOR_SIGNATURE = ("0x3cddb23a02ee7d8aba6e8cf8512348d57dd09088f5da5d952536c6f3e98aec00066cb2506ea27c"
                    "525b09718ec8f5e3c9a73e9cd10c0c231a5d8a9a069599731b1c")
VECTOR_PUBLIC_KEY = ("84bf7562262bbd6940085748f3be6afa52ae317155181ece31b66351ccffa4b08cc43d63b2859d469f"
                     "ee15f31c9edb5324266e6fd0407e87382d60fc4511acd8")


def test_keccak_is_not_sha3() -> None:
    # The well-known Keccak-256 of the empty string (Ethereum's empty-code hash).
    assert signing.keccak_256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
    assert signing.keccak_256(b"") != hashlib.sha3_256(b"").digest()


def test_fixed_vectors_from_eth_account() -> None:
    node = SigningNode(ecdsa=coincurve.PrivateKey(KEY))
    assert signing.personal_sign_digest(TEXT.encode()).hex() == VECTOR_DIGEST
    assert node.address("ecdsa") == VECTOR_ADDRESS
    assert node.public_key_hex("ecdsa") == VECTOR_PUBLIC_KEY
    # RFC 6979 on both sides: the very same bytes.
    assert node.sign(TEXT, "ecdsa") == VECTOR_SIGNATURE


@pytest.mark.parametrize("text", ["", "a", "ünïcode:" + "0" * 64, TEXT * 3])
def test_random_keys_recover_with_eth_account(text: str) -> None:
    node = SigningNode()
    signature = node.sign(text, "ecdsa")
    assert signature[-2:] in ("1b", "1c")  # v is 27/28 (spec 0.2)
    recovered = Account.recover_message(encode_defunct(text=text), signature=signature)
    assert recovered == node.address("ecdsa")
    assert Account.from_key(node.ecdsa.secret).address == node.address("ecdsa")


def test_checksum_address_matches_eth_account() -> None:
    for _ in range(5):
        account = Account.create()
        assert signing.checksum_address(account.address.lower()) == account.address


def test_own_digest_recovers_the_real_near_signer() -> None:
    exchange = json.loads((ASSETS / "direct_stream_exchange.json").read_text())
    record = exchange["signature_response"]
    raw = bytes.fromhex(record["signature"].removeprefix("0x"))
    digest = signing.personal_sign_digest(record["text"].encode())
    public = coincurve.PublicKey.from_signature_and_message(raw[:64] + bytes([raw[64] - 27]), digest,
                                                            hasher=None)
    assert signing.eth_address(public) == record["signing_address"]
    request = base64.b64decode(exchange["request_body_b64"])
    response = base64.b64decode(exchange["response_body_b64"])
    model, request_hash, response_hash = record["text"].rsplit(":", 2)
    assert (request_hash, response_hash) == (hashlib.sha256(request).hexdigest(),
                                             hashlib.sha256(response).hexdigest())


def test_signing_identifier() -> None:
    node = SigningNode(ecdsa=coincurve.PrivateKey(KEY))
    assert signing.report_data_key_half(node.address("ecdsa"), "ecdsa") == (
        bytes.fromhex(VECTOR_ADDRESS[2:]) + bytes(12))
    ed = node.address("ed25519")
    assert signing.report_data_key_half(ed, "ed25519") == bytes.fromhex(ed)
    with pytest.raises(ValueError, match="ed25519 signing identifier of 20 bytes"):
        signing.signing_identifier(VECTOR_ADDRESS, "ed25519")


def test_simulator_imports_nothing_from_the_verifier() -> None:
    # tdx_authority.py (owned elsewhere) still takes TcbStatus, a plain enum of status names.
    allowed = {("tdx_authority.py", "sidecar.verify.policy")}
    package = Path(__file__).parents[1] / "sidecar" / "simulator"
    found = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sidecar.verify"):
                found.add((path.name, node.module))
            if isinstance(node, ast.Import):
                found |= {(path.name, a.name) for a in node.names if a.name.startswith("sidecar.verify")}
    assert found <= allowed, found
