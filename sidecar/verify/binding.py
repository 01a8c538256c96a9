"""The binding of the signing key and the request nonce into the quote's REPORTDATA (spec section 2).

REPORTDATA is 64 bytes: bytes 0-31 hold the signing identifier (ecdsa: the 20 address bytes;
ed25519: the 32-byte public key) left-aligned and zero-padded, or, when the report carries a TLS
certificate fingerprint (NEAR's ``include_tls_fingerprint=true``), sha256(identifier ‖ fingerprint);
bytes 32-63 hold the 32-byte nonce the sidecar sent. Only REPORTDATA read from a *verified*
quote may be passed here; the JSON ``report_data`` copy is never trusted.
"""

from __future__ import annotations

import hashlib
import hmac

from sidecar.verify.checks import Check
from sidecar.verify.signature import keccak256

REPORT_DATA_LENGTH = 64
NONCE_LENGTH = 32


def signing_identifier_bytes(signing_address: str, algo: str) -> bytes:
    """The raw bytes that REPORTDATA binds for a signing key.

    Raises:
        ValueError: the address/key is not hex of the right length for ``algo``.
    """
    raw = bytes.fromhex(signing_address.strip().removeprefix("0x").removeprefix("0X"))
    expected = 20 if algo == "ecdsa" else 32
    if len(raw) != expected:
        raise ValueError(f"{algo} signing identifier is {len(raw)} bytes, expected {expected}")
    return raw


def check_report_data_binding(
    report_data: bytes,
    *,
    signing_address: str,
    algo: str,
    nonce: bytes,
    tls_fingerprint: bytes | None = None,
) -> tuple[Check, ...]:
    """Check that ``report_data`` binds the signing key (and TLS key) and the fresh nonce.

    Returns two checks, ``binding.signing_key`` and ``binding.nonce``, each failing on its own.
    """
    if len(report_data) != REPORT_DATA_LENGTH:
        failed = Check.failed("binding.report_data", "binding.report_data_malformed",
                              f"report_data is {len(report_data)} bytes, expected 64")
        return (failed,)
    try:
        identifier = signing_identifier_bytes(signing_address, algo)
    except ValueError as exc:
        return (Check.failed("binding.signing_key", "binding.signing_key_malformed", str(exc)),)

    if tls_fingerprint is not None:
        expected_key_half = hashlib.sha256(identifier + tls_fingerprint).digest()
        what = f"sha256({signing_address} ‖ TLS fingerprint {tls_fingerprint.hex()})"
    else:
        expected_key_half = identifier.ljust(32, b"\x00")
        what = f"{signing_address} zero-padded"
    if hmac.compare_digest(report_data[:32], expected_key_half):
        key_check = Check.passed("binding.signing_key", f"report_data[0:32] = {what}")
    else:
        key_check = Check.failed(
            "binding.signing_key", "binding.signing_key_mismatch",
            f"report_data[0:32] = {report_data[:32].hex()} does not bind {what}")

    if hmac.compare_digest(report_data[32:], nonce):
        nonce_check = Check.passed("binding.nonce", "report_data[32:64] is this session's nonce")
    else:
        nonce_check = Check.failed(
            "binding.nonce", "binding.nonce_mismatch",
            f"report_data[32:64] = {report_data[32:].hex()} is not the nonce sent ({nonce.hex()})")
    return key_check, nonce_check


# ecdsa: the 64-byte uncompressed secp256k1 point without its 04 prefix (spec 0.4; the real NEAR
# Cloud report carries 128 hex characters). A 65-byte form is not in the contract and is refused.
_ECDSA_PUBLIC_KEY_LENGTH = 64


def check_public_key_binding(public_key_hex: str, *, signing_address: str, algo: str) -> Check:
    """Check that a report's ``signing_public_key`` is the key of its ``signing_address``.

    ecdsa: 64 bytes (uncompressed point without ``04``, as NEAR serves it; ACI's ``04``-prefixed
    65 bytes are the same point) whose keccak256 ends in the 20 address bytes; ed25519: equal to the address, which is the key itself (spec 0.4). E2EE encrypts to
    this key, so a key the attested address does not own would hand prompts to someone else.

    Returns:
        ``binding.public_key``; code ``binding.public_key_mismatch`` when the key is malformed or
        belongs to another address.

    Raises:
        Nothing.
    """
    name, code = "binding.public_key", "binding.public_key_mismatch"
    try:
        key = bytes.fromhex(public_key_hex.strip().removeprefix("0x"))
        identifier = signing_identifier_bytes(signing_address, algo)
    except ValueError as exc:
        return Check.failed(name, code, f"signing_public_key or address is not hex: {exc}")
    if algo == "ed25519":
        if hmac.compare_digest(key, identifier):
            return Check.passed(name, "ed25519 signing_public_key is the signing address")
        return Check.failed(name, code, f"ed25519 signing_public_key {key.hex()[:64]} is not "
                                        f"the signing address {identifier.hex()}")
    if len(key) == _ECDSA_PUBLIC_KEY_LENGTH + 1 and key[0] == 0x04:
        # The same point in SEC1 uncompressed form: Phala's ACI gateway serves it with its 04
        # prefix (Dstack-TEE/private-ai-gateway src/http/app/handlers.rs), NEAR without.
        key = key[1:]
    if len(key) != _ECDSA_PUBLIC_KEY_LENGTH:
        return Check.failed(name, code, f"ecdsa signing_public_key is {len(key)} bytes, expected "
                                        f"{_ECDSA_PUBLIC_KEY_LENGTH} (uncompressed, without 04)")
    derived = keccak256(key)[-20:]
    if hmac.compare_digest(derived, identifier):
        return Check.passed(name, f"keccak256(signing_public_key) ends in 0x{identifier.hex()}")
    return Check.failed(name, code, f"signing_public_key belongs to 0x{derived.hex()}, "
                                    f"not 0x{identifier.hex()}")
