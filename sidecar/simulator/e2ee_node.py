"""The model node's side of NEAR's field-level E2EE (spec section 0.5), for the simulator.

What a NEAR model node (nearai/inference-proxy ``src/encryption.rs`` at commit a9082da, read
for behaviour, not copied) does with an encrypted chat completion:

- ``x-signing-algo`` and ``x-client-pub-key`` come together or not at all (else 400);
  ``x-encryption-version`` defaults to 1 (the legacy NaCl box, not simulated here) and 2
  selects HKDF + XChaCha20-Poly1305; ``x-encrypt-all-fields: true`` adds the extended fields.
- Request: ``messages[].content`` (a decrypted text that parses as a JSON array becomes the
  part list), ``reasoning_content``, ``reasoning``, ``audio.data`` always; with all fields also
  ``refusal``, ``name``, ``tool_calls[].function.name|arguments``, ``function_call.name|
  arguments``, ``tools[].function.name|description|parameters`` (parameters parsed back from
  JSON), ``tool_choice.function.name`` and a top-level ``function_call.name``. The real node
  is lenient on the extended fields (a value that does not decrypt stays as it is);
  ``lenient_extended=True`` imitates that, the default refuses so that tests catch a client
  that forgot to encrypt one.
- Answer (``message`` or, streamed, ``delta``): ``content`` (string, or each part's ``text``),
  ``reasoning_content``, ``reasoning``, ``audio.data``; with all fields also ``refusal``,
  ``tool_calls[].function.arguments|name``, ``function_call.arguments|name`` and
  ``logprobs.content|refusal[]`` (and ``top_logprobs[]``) ``token`` and ``bytes`` (the compact
  JSON text of the byte list). Empty strings are never encrypted: ``""`` stays ``""``.

Independent of the sidecar's ``sidecar.e2ee`` on purpose (the simulator must never share the
verifier's code): ``cryptography`` for X25519 and secp256k1 ECDH, pycryptodome for HKDF,
XChaCha20-Poly1305 and AES-GCM, and the Edwards-to-Montgomery map written out from RFC 7748
section 4.1 (u = (1 + y) / (1 - y) mod p) instead of libsodium's conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import coincurve
from Crypto.Cipher import AES, ChaCha20_Poly1305
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.Signature import eddsa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

NodeKey = Ed25519PrivateKey | coincurve.PrivateKey | ec.EllipticCurvePrivateKey | bytes
"""The node's signing key: cryptography's ed25519 or secp256k1 key, coincurve's secp256k1 key,
or the raw 32-byte secret (ed25519 seed / secp256k1 scalar)."""

_P = 2**255 - 19  # the field prime of Curve25519 / edwards25519 (RFC 7748)


class NodeEncryptionError(ValueError):
    """What the node answers with HTTP 400 (bad headers, a field that does not decrypt)."""


@dataclass(frozen=True, slots=True)
class NodeEncryption:
    """The E2EE context a node reads from the request headers."""

    scheme: str  # "ed25519" | "ecdsa"
    client_public_key: bytes
    version: int
    all_fields: bool


def parse_encryption_headers(headers: Mapping[str, str]) -> NodeEncryption | None:
    """The node's reading of the E2EE headers; ``None`` when the request is not encrypted.

    ``headers`` must be case-insensitive (aiohttp's ``CIMultiDict``) or lower-case keyed.

    Raises:
        NodeEncryptionError: one of the two headers without the other, an unknown algorithm,
            a key that is not hex of the right length, a version other than 1 or 2.
    """
    algo, key_hex = headers.get("x-signing-algo"), headers.get("x-client-pub-key")
    if algo is None and key_hex is None:
        return None
    if algo is None or key_hex is None:
        raise NodeEncryptionError("Both X-Signing-Algo and X-Client-Pub-Key headers must be "
                                  "present together")
    scheme = algo.lower()
    if scheme not in ("ed25519", "ecdsa"):
        raise NodeEncryptionError(f"Invalid X-Signing-Algo: {algo}")
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise NodeEncryptionError("X-Client-Pub-Key must be valid hex") from None
    if (scheme == "ed25519" and len(key) != 32) or (scheme == "ecdsa"
                                                    and len(key) not in (64, 65)):
        raise NodeEncryptionError(f"{scheme} client public key has the wrong length")
    try:
        version = int(headers.get("x-encryption-version", "1"))
    except ValueError:
        version = 1  # encryption.rs: an unparsable version falls back to 1
    if version not in (1, 2):
        raise NodeEncryptionError(f"Invalid X-Encryption-Version: {version}")
    all_fields = headers.get("x-encrypt-all-fields", "").lower() == "true"
    return NodeEncryption(scheme, key, version, all_fields)


# -- keys ------------------------------------------------------------------------------------


def _secret_bytes(node_key: NodeKey) -> bytes:
    if isinstance(node_key, bytes):
        return node_key
    if isinstance(node_key, Ed25519PrivateKey):
        return node_key.private_bytes(serialization.Encoding.Raw,
                                      serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
    if isinstance(node_key, coincurve.PrivateKey):
        return bytes(node_key.secret)
    return int(node_key.private_numbers().private_value).to_bytes(32, "big")


def node_x25519_secret(seed: bytes) -> bytes:
    """The X25519 scalar of an ed25519 seed: clamped first half of SHA-512(seed) (RFC 8032 5.1.5)."""
    digest = bytearray(hashlib.sha512(seed).digest()[:32])
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return bytes(digest)


def montgomery_u(ed25519_public: bytes) -> bytes:
    """The X25519 public key of an ed25519 public key (RFC 7748 4.1: u = (1+y)/(1-y)).

    Raises:
        NodeEncryptionError: not a valid edwards25519 point encoding.
    """
    try:
        # pycryptodome decodes (and so validates) the point; the map itself is one line.
        point = eddsa.import_public_key(ed25519_public).pointQ
    except ValueError:
        raise NodeEncryptionError("Invalid Ed25519 public key") from None
    y = int(point.y)
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def _hkdf(secret: bytes, info: bytes) -> bytes:
    key = HKDF(secret, 32, b"", SHA256, context=info)
    assert isinstance(key, bytes)
    return key


def _ec_private(secret: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1())


# -- one field -------------------------------------------------------------------------------


def seal(plaintext: str, client_public_key: bytes, scheme: str, *,
         ephemeral_secret: bytes | None = None, nonce: bytes | None = None) -> str:
    """Encrypt one field to the client key as the node does: a lower-case hex envelope.

    ``ephemeral_secret`` and ``nonce`` exist for the known-answer vectors only.

    Raises:
        NodeEncryptionError: a client key that is not a valid key of ``scheme``.
    """
    if plaintext == "":
        return ""
    data = plaintext.encode("utf-8")
    if scheme == "ed25519":
        recipient = X25519PublicKey.from_public_bytes(montgomery_u(client_public_key))
        ephemeral = X25519PrivateKey.from_private_bytes(ephemeral_secret or os.urandom(32))
        key = _hkdf(ephemeral.exchange(recipient), b"ed25519_encryption")
        nonce = nonce or os.urandom(24)
        cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)  # a 24-byte nonce: XChaCha20
        sealed, tag = cipher.encrypt_and_digest(data)
        public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
        return (public + nonce + sealed + tag).hex()
    raw = client_public_key if len(client_public_key) == 65 else b"\x04" + client_public_key
    try:
        recipient_ec = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), raw)
    except ValueError:
        raise NodeEncryptionError("Invalid ECDSA public key") from None
    ephemeral_ec = (_ec_private(ephemeral_secret) if ephemeral_secret
                    else ec.generate_private_key(ec.SECP256K1()))
    key = _hkdf(ephemeral_ec.exchange(ec.ECDH(), recipient_ec), b"ecdsa_encryption")
    nonce = nonce or os.urandom(12)
    sealed, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(data)
    public = ephemeral_ec.public_key().public_bytes(serialization.Encoding.X962,
                                                    serialization.PublicFormat.UncompressedPoint)
    return (public + nonce + sealed + tag).hex()


def open_envelope(envelope_hex: str, node_key: NodeKey, scheme: str) -> str:
    """Decrypt one field sealed to the node's key (``""`` stays ``""``).

    Raises:
        NodeEncryptionError: not hex, too short, does not authenticate, not UTF-8 (one
            message for all, as the node gives).
    """
    if envelope_hex == "":
        return ""
    try:
        data = bytes.fromhex(envelope_hex)
    except ValueError:
        raise NodeEncryptionError("Encrypted field is not valid hex") from None
    secret = _secret_bytes(node_key)
    try:
        if scheme == "ed25519":
            if len(data) < 32 + 24 + 16:
                raise ValueError("short")
            own = X25519PrivateKey.from_private_bytes(node_x25519_secret(secret))
            shared = own.exchange(X25519PublicKey.from_public_bytes(data[:32]))
            cipher = ChaCha20_Poly1305.new(key=_hkdf(shared, b"ed25519_encryption"),
                                           nonce=data[32:56])
            plain = cipher.decrypt_and_verify(data[56:-16], data[-16:])
        else:
            if len(data) < 65 + 12 + 16:
                raise ValueError("short")
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data[:65])
            key = _hkdf(_ec_private(secret).exchange(ec.ECDH(), peer), b"ecdsa_encryption")
            plain = AES.new(key, AES.MODE_GCM, nonce=data[65:77]).decrypt_and_verify(
                data[77:-16], data[-16:])
        return plain.decode("utf-8")
    except ValueError:  # includes UnicodeDecodeError and pycryptodome's MAC check
        raise NodeEncryptionError("Decryption failed") from None


# -- the request -----------------------------------------------------------------------------


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def decrypt_request_fields(body: Mapping[str, Any], node_key: NodeKey, scheme: str, *,
                           all_fields: bool = True,
                           lenient_extended: bool = False) -> dict[str, Any]:
    """A copy of an encrypted chat request with its fields decrypted by the node's key.

    Raises:
        NodeEncryptionError: a field that does not decrypt (for the extended fields only
            when ``lenient_extended`` is false).
    """
    out = deepcopy(dict(body))

    def strict(obj: dict[str, Any], name: str) -> None:
        if isinstance(obj.get(name), str):
            obj[name] = open_envelope(obj[name], node_key, scheme)

    def extended(obj: dict[str, Any], name: str, parse_json: bool = False) -> None:
        value = obj.get(name)
        if not isinstance(value, str) or value == "":
            return
        try:
            plain = open_envelope(value, node_key, scheme)
        except NodeEncryptionError:
            if lenient_extended:
                return
            raise
        if parse_json:
            try:
                obj[name] = json.loads(plain)
                return
            except ValueError:
                pass
        obj[name] = plain

    for message in _dicts(out.get("messages")):
        content = message.get("content")
        if isinstance(content, str) and content:
            plain = open_envelope(content, node_key, scheme)
            try:
                parsed = json.loads(plain)
            except ValueError:
                parsed = None
            message["content"] = parsed if isinstance(parsed, list) else plain
        strict(message, "reasoning_content")
        strict(message, "reasoning")
        if isinstance(message.get("audio"), dict):
            strict(message["audio"], "data")
        if not all_fields:
            continue
        extended(message, "refusal")
        extended(message, "name")
        for call in _dicts(message.get("tool_calls")):
            if isinstance(call.get("function"), dict):
                extended(call["function"], "arguments")
                extended(call["function"], "name")
        if isinstance(message.get("function_call"), dict):
            extended(message["function_call"], "arguments")
            extended(message["function_call"], "name")
    if all_fields:
        for tool in _dicts(out.get("tools")):
            if isinstance(tool.get("function"), dict):
                extended(tool["function"], "name")
                extended(tool["function"], "description")
                extended(tool["function"], "parameters", parse_json=True)
        if isinstance(out.get("tool_choice"), dict) and isinstance(
                out["tool_choice"].get("function"), dict):
            extended(out["tool_choice"]["function"], "name")
        if isinstance(out.get("function_call"), dict):
            extended(out["function_call"], "name")
    return out


# -- the answer ------------------------------------------------------------------------------


def _encrypt_choices(obj: Mapping[str, Any], client_public_key: str | bytes, scheme: str,
                     member: str, all_fields: bool) -> dict[str, Any]:
    key = (bytes.fromhex(client_public_key) if isinstance(client_public_key, str)
           else client_public_key)
    out = deepcopy(dict(obj))

    def field(target: Any, name: str) -> None:
        if isinstance(target, dict) and isinstance(target.get(name), str):
            target[name] = seal(target[name], key, scheme)

    def token_entry(entry: Any) -> None:
        field(entry, "token")
        if isinstance(entry, dict) and isinstance(entry.get("bytes"), list):
            entry["bytes"] = seal(json.dumps(entry["bytes"], separators=(",", ":")), key,
                                  scheme)

    for choice in _dicts(out.get("choices")):
        message = choice.get(member)
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                field(part, "text")
        else:
            field(message, "content")
        field(message, "reasoning_content")
        field(message, "reasoning")
        field(message.get("audio"), "data")
        if not all_fields:
            continue
        field(message, "refusal")
        for call in _dicts(message.get("tool_calls")):
            field(call.get("function"), "arguments")
            field(call.get("function"), "name")
        field(message.get("function_call"), "arguments")
        field(message.get("function_call"), "name")
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            for kind in ("content", "refusal"):
                for entry in _dicts(logprobs.get(kind)):
                    token_entry(entry)
                    for top in _dicts(entry.get("top_logprobs")):
                        token_entry(top)
    return out


def encrypt_answer_fields(obj: Mapping[str, Any], client_public_key: str | bytes, scheme: str,
                          *, all_fields: bool = True) -> dict[str, Any]:
    """A copy of a non-streamed chat completion with its answer fields sealed to the client.

    Raises:
        NodeEncryptionError: a client key that is not a valid key of ``scheme``.
    """
    return _encrypt_choices(obj, client_public_key, scheme, "message", all_fields)


def encrypt_chunk(obj: Mapping[str, Any], client_public_key: str | bytes, scheme: str, *,
                  all_fields: bool = True) -> dict[str, Any]:
    """``encrypt_answer_fields`` for one SSE chunk (``choices[].delta``).

    Raises:
        NodeEncryptionError: a client key that is not a valid key of ``scheme``.
    """
    return _encrypt_choices(obj, client_public_key, scheme, "delta", all_fields)
