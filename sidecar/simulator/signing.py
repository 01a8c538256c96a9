"""The simulator's own signing primitives: Keccak-256, EIP-191, Ethereum addresses, key halves.

Written here again, not imported from ``sidecar.verify``: the simulator signs and the verifier
checks, so a bug shared by both would pass every test and fail every user (STYLE.md, Tests).
``tests/test_simulator_signing.py`` pins these against fixed vectors made with ``eth-account``.

Formulas: spec section 3 (EIP-191 ``personal_sign``; address = last 20 bytes of keccak256 of the
64-byte uncompressed public key; Keccak-256 is not SHA3-256), section 2 (REPORTDATA key half:
the signing identifier left-aligned and zero-padded to 32 bytes) and EIP-55 (checksum case).
"""

from __future__ import annotations

import coincurve
from Crypto.Hash import keccak

__all__ = [
    "checksum_address",
    "eth_address",
    "keccak_256",
    "personal_sign_digest",
    "report_data_key_half",
    "signing_identifier",
    "uncompressed_public_key",
]


def keccak_256(data: bytes) -> bytes:
    """Keccak-256 (the pre-standard padding Ethereum uses), via pycryptodome.

    Raises:
        Nothing.
    """
    return keccak.new(data=data, digest_bits=256).digest()


def personal_sign_digest(message: bytes) -> bytes:
    """EIP-191 version 0x45: keccak256(b"\\x19Ethereum Signed Message:\\n" + len + message).

    Raises:
        Nothing.
    """
    return keccak_256(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def uncompressed_public_key(key: coincurve.PublicKey) -> bytes:
    """The 64-byte X‖Y form (no ``04`` prefix): NEAR's ``signing_public_key`` (spec 0.4).

    Raises:
        Nothing.
    """
    return key.format(compressed=False)[1:]


def eth_address(key: coincurve.PublicKey) -> str:
    """Lower-case ``0x`` address: the last 20 bytes of keccak256 of the 64-byte key.

    Raises:
        Nothing.
    """
    return "0x" + keccak_256(uncompressed_public_key(key))[-20:].hex()


def checksum_address(address: str) -> str:
    """EIP-55 mixed-case form of a ``0x`` address (display only; servers publish it so).

    Raises:
        ValueError: ``address`` is not 20 bytes of hex.
    """
    hexpart = address.removeprefix("0x").lower()
    if len(bytes.fromhex(hexpart)) != 20:
        raise ValueError("an address is 20 bytes")
    digest = keccak_256(hexpart.encode()).hex()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(hexpart, digest))


def signing_identifier(address: str, algo: str) -> bytes:
    """The bytes REPORTDATA binds for a key: 20 address bytes (ecdsa) or the 32-byte key (ed25519).

    Raises:
        ValueError: not hex, or the wrong length for ``algo``.
    """
    raw = bytes.fromhex(address.removeprefix("0x"))
    if len(raw) != (32 if algo == "ed25519" else 20):
        raise ValueError(f"{algo} signing identifier of {len(raw)} bytes")
    return raw


def report_data_key_half(address: str, algo: str) -> bytes:
    """REPORTDATA[0:32] without TLS binding: the identifier zero-padded to 32 bytes (spec 2).

    Raises:
        ValueError: see :func:`signing_identifier`.
    """
    return signing_identifier(address, algo).ljust(32, b"\x00")
