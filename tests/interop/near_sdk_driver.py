"""Drives NEAR's own E2EE implementation (``nearai-inference-sdk``) for the interop tests.

Runs under ``.venv-near`` (Python 3.12+, made by ``make near-env``), never under the project's
venv: it imports nothing of tee-sidecar. One JSON object per line in, one per line out:
``{"op": ..., ...}`` -> ``{"ok": result}`` or ``{"error": "<sdk failure code or exception>"}``.

Ops (secrets are the 32-byte hex of an ed25519 seed or a secp256k1 scalar):
  encrypt_request  {body, public_key, scheme}             SDK encrypt_e2ee_chat_request
  encrypt_text     {plaintext, public_key, scheme}        SDK encrypt_e2ee_text
  decrypt_text     {ciphertext, secret, scheme}           SDK decrypt_e2ee_text
  decrypt_response {body, secret, scheme, streaming}      SDK decrypt_e2ee_chat_response
  public_key       {secret, scheme}                       the public key the SDK would send

The SDK has no node-side (request-decrypting) function; its ``decrypt_e2ee_text`` opens an
envelope with whatever X25519 / secp256k1 secret it is given, so handing it the model node's
secret (ed25519: the X25519 secret of the node's seed) opens what is sealed to the node.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.signing import SigningKey
from nearai_inference_sdk.core.e2ee import (
    EcdsaE2eeClientKeyPair,
    Ed25519E2eeClientKeyPair,
    decrypt_e2ee_text,
    encrypt_e2ee_text,
)
from nearai_inference_sdk.core.e2ee_chat import (
    decrypt_e2ee_chat_response,
    encrypt_e2ee_chat_request,
)
from nearai_inference_sdk.types.e2ee import E2eeModelKey


def keypair(secret_hex: str, scheme: str) -> Ed25519E2eeClientKeyPair | EcdsaE2eeClientKeyPair:
    secret = bytes.fromhex(secret_hex)
    if scheme == "ed25519":
        key = SigningKey(secret)
        return Ed25519E2eeClientKeyPair(public_key=bytes(key.verify_key).hex(),
                                        x25519_secret_key=bytes(key.to_curve25519_private_key()))
    private = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1())
    public = private.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
    return EcdsaE2eeClientKeyPair(public_key=public[1:].hex(), private_key=private)


def handle(request: dict[str, Any]) -> Any:
    op, scheme = request["op"], request["scheme"]
    if op == "encrypt_request":
        return encrypt_e2ee_chat_request(
            request["body"], E2eeModelKey(signing_algo=scheme, public_key=request["public_key"]))
    if op == "encrypt_text":
        return encrypt_e2ee_text(
            request["plaintext"],
            E2eeModelKey(signing_algo=scheme, public_key=request["public_key"]))
    if op == "decrypt_text":
        return decrypt_e2ee_text(request["ciphertext"], keypair(request["secret"], scheme),
                                 "field")
    if op == "decrypt_response":
        return decrypt_e2ee_chat_response(request["body"], keypair(request["secret"], scheme),
                                          streaming=request["streaming"])
    if op == "public_key":
        return keypair(request["secret"], scheme).public_key
    raise ValueError(f"unknown op {op}")


def main() -> None:
    for line in sys.stdin:
        try:
            reply: dict[str, Any] = {"ok": handle(json.loads(line))}
        except Exception as exc:  # the test decides; report the SDK's failure code
            failure = getattr(exc, "failure", None)
            reply = {"error": getattr(failure, "code", None) or type(exc).__name__}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
