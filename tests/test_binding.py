"""The REPORTDATA binding of the signing key, the TLS key and the nonce, and the public-key
binding of ``signing_public_key`` (``sidecar/verify/binding.py``), checked directly.

Every refusal asserts its check name and failure code; the layouts come from spec section 2 and
the real NEAR report (``tests/assets/near``): address ‖ 12 zero bytes ‖ nonce.
"""

from __future__ import annotations

import hashlib

import coincurve
import pytest

from sidecar.verify.binding import (
    NONCE_LENGTH,
    REPORT_DATA_LENGTH,
    check_public_key_binding,
    check_report_data_binding,
    signing_identifier_bytes,
)
from sidecar.verify.checks import Check, Status
from sidecar.verify.signature import keccak256

ADDRESS = "0x" + "ab" * 20
ED25519_KEY = "cd" * 32
NONCE = bytes(range(32))
FINGERPRINT = hashlib.sha256(b"the TLS key the sidecar saw").digest()


def ecdsa_report_data(address: str = ADDRESS, nonce: bytes = NONCE) -> bytes:
    return bytes.fromhex(address[2:]) + b"\0" * 12 + nonce


def codes(checks: tuple[Check, ...]) -> dict[str, tuple[Status, str | None]]:
    return {check.name: (check.status, check.code) for check in checks}


def test_constants_are_the_quote_layout() -> None:
    assert (REPORT_DATA_LENGTH, NONCE_LENGTH) == (64, 32)


@pytest.mark.parametrize("address", [ADDRESS, ADDRESS.upper().replace("0X", "0x"), ADDRESS[2:],
                                     "0X" + "ab" * 20, "  " + ADDRESS + "\n"])
def test_ecdsa_identifier_is_the_20_address_bytes(address: str) -> None:
    assert signing_identifier_bytes(address, "ecdsa") == b"\xab" * 20


def test_ed25519_identifier_is_the_32_key_bytes() -> None:
    assert signing_identifier_bytes(ED25519_KEY, "ed25519") == b"\xcd" * 32


@pytest.mark.parametrize("address, algo, match", [
    ("0x" + "ab" * 19, "ecdsa", "ecdsa signing identifier is 19 bytes, expected 20"),
    ("0x" + "ab" * 32, "ecdsa", "ecdsa signing identifier is 32 bytes, expected 20"),
    ("ab" * 20, "ed25519", "ed25519 signing identifier is 20 bytes, expected 32"),
    ("0x" + "zz" * 20, "ecdsa", "non-hexadecimal"),
])
def test_identifier_of_the_wrong_length_or_not_hex_is_refused(address: str, algo: str,
                                                              match: str) -> None:
    with pytest.raises(ValueError, match=match):
        signing_identifier_bytes(address, algo)


def test_genuine_ecdsa_binding_passes() -> None:
    checks = check_report_data_binding(ecdsa_report_data(), signing_address=ADDRESS,
                                       algo="ecdsa", nonce=NONCE)
    assert codes(checks) == {"binding.signing_key": (Status.PASS, None),
                             "binding.nonce": (Status.PASS, None)}
    assert checks[0].detail == f"report_data[0:32] = {ADDRESS} zero-padded"


def test_genuine_ed25519_binding_passes() -> None:
    report_data = b"\xcd" * 32 + NONCE
    checks = check_report_data_binding(report_data, signing_address=ED25519_KEY,
                                       algo="ed25519", nonce=NONCE)
    assert all(check.ok for check in checks) and len(checks) == 2


def test_genuine_tls_bound_binding_passes() -> None:
    key_half = hashlib.sha256(b"\xab" * 20 + FINGERPRINT).digest()
    checks = check_report_data_binding(key_half + NONCE, signing_address=ADDRESS, algo="ecdsa",
                                       nonce=NONCE, tls_fingerprint=FINGERPRINT)
    assert codes(checks) == {"binding.signing_key": (Status.PASS, None),
                             "binding.nonce": (Status.PASS, None)}
    assert "TLS fingerprint" in checks[0].detail


@pytest.mark.parametrize("length", [0, 32, 63, 65, 128])
def test_report_data_of_another_length_is_malformed(length: int) -> None:
    checks = check_report_data_binding(b"\0" * length, signing_address=ADDRESS, algo="ecdsa",
                                       nonce=NONCE)
    assert codes(checks) == {"binding.report_data": (Status.FAIL, "binding.report_data_malformed")}
    assert checks[0].detail == f"report_data is {length} bytes, expected 64"


def test_unusable_signing_address_fails_the_key_check() -> None:
    checks = check_report_data_binding(ecdsa_report_data(), signing_address="0x1234",
                                       algo="ecdsa", nonce=NONCE)
    assert codes(checks) == {"binding.signing_key": (Status.FAIL, "binding.signing_key_malformed")}
    assert checks[0].detail == "ecdsa signing identifier is 2 bytes, expected 20"


def test_report_data_binding_another_address_fails_only_the_key() -> None:
    checks = check_report_data_binding(ecdsa_report_data("0x" + "cd" * 20),
                                       signing_address=ADDRESS, algo="ecdsa", nonce=NONCE)
    assert codes(checks) == {"binding.signing_key": (Status.FAIL, "binding.signing_key_mismatch"),
                             "binding.nonce": (Status.PASS, None)}
    assert checks[0].detail == (f"report_data[0:32] = {'cd' * 20}{'00' * 12} does not bind "
                                f"{ADDRESS} zero-padded")
    assert checks[1].detail == "report_data[32:64] is this session's nonce"


@pytest.mark.parametrize("position", [20, 31])
def test_nonzero_padding_after_the_address_fails(position: int) -> None:
    report_data = bytearray(ecdsa_report_data())
    report_data[position] = 1
    checks = check_report_data_binding(bytes(report_data), signing_address=ADDRESS,
                                       algo="ecdsa", nonce=NONCE)
    assert codes(checks)["binding.signing_key"] == (Status.FAIL, "binding.signing_key_mismatch")


def test_stale_nonce_fails_only_the_nonce() -> None:
    checks = check_report_data_binding(ecdsa_report_data(nonce=b"\x11" * 32),
                                       signing_address=ADDRESS, algo="ecdsa", nonce=NONCE)
    assert codes(checks) == {"binding.signing_key": (Status.PASS, None),
                             "binding.nonce": (Status.FAIL, "binding.nonce_mismatch")}
    assert checks[1].detail == (f"report_data[32:64] = {'11' * 32} is not the nonce sent "
                                f"({NONCE.hex()})")


@pytest.mark.parametrize("position", [32, 63])
def test_one_nonce_byte_changed_fails(position: int) -> None:
    report_data = bytearray(ecdsa_report_data())
    report_data[position] ^= 1
    checks = check_report_data_binding(bytes(report_data), signing_address=ADDRESS,
                                       algo="ecdsa", nonce=NONCE)
    assert codes(checks)["binding.nonce"] == (Status.FAIL, "binding.nonce_mismatch")


def test_tls_bound_report_checked_without_the_tls_key_fails() -> None:
    # A report bound to a TLS key, read as if it were not: the key half is a hash, not padding.
    key_half = hashlib.sha256(b"\xab" * 20 + FINGERPRINT).digest()
    checks = check_report_data_binding(key_half + NONCE, signing_address=ADDRESS, algo="ecdsa",
                                       nonce=NONCE)
    assert codes(checks)["binding.signing_key"] == (Status.FAIL, "binding.signing_key_mismatch")


def test_report_bound_to_another_tls_key_fails() -> None:
    key_half = hashlib.sha256(b"\xab" * 20 + b"\0" * 32).digest()
    checks = check_report_data_binding(key_half + NONCE, signing_address=ADDRESS, algo="ecdsa",
                                       nonce=NONCE, tls_fingerprint=FINGERPRINT)
    assert codes(checks)["binding.signing_key"] == (Status.FAIL, "binding.signing_key_mismatch")


def test_plain_padding_does_not_pass_for_a_tls_bound_check() -> None:
    checks = check_report_data_binding(ecdsa_report_data(), signing_address=ADDRESS,
                                       algo="ecdsa", nonce=NONCE, tls_fingerprint=FINGERPRINT)
    assert codes(checks)["binding.signing_key"] == (Status.FAIL, "binding.signing_key_mismatch")


# -- signing_public_key -------------------------------------------------------------------------

PRIVATE = coincurve.PrivateKey(b"\x07" * 32)
POINT = PRIVATE.public_key.format(compressed=False)  # 04 ‖ x ‖ y
KEY_ADDRESS = "0x" + keccak256(POINT[1:])[-20:].hex()


@pytest.mark.parametrize("key", [POINT[1:].hex(), POINT.hex(), "0x" + POINT[1:].hex(),
                                 " " + POINT[1:].hex()])
def test_ecdsa_public_key_of_the_address_passes(key: str) -> None:
    check = check_public_key_binding(key, signing_address=KEY_ADDRESS, algo="ecdsa")
    assert (check.status, check.code) == (Status.PASS, None)
    assert check.name == "binding.public_key"
    assert check.detail == f"keccak256(signing_public_key) ends in {KEY_ADDRESS}"


@pytest.mark.parametrize("key, match", [
    (PRIVATE.public_key.format(compressed=True).hex(), "33 bytes, expected 64"),
    ("05" + POINT[1:].hex(), "65 bytes, expected 64"),
    (POINT[1:].hex() + "00", "65 bytes, expected 64"),
    ("zz", "not hex"),
])
def test_malformed_ecdsa_public_key_fails(key: str, match: str) -> None:
    check = check_public_key_binding(key, signing_address=KEY_ADDRESS, algo="ecdsa")
    assert (check.name, check.status, check.code) == (
        "binding.public_key", Status.FAIL, "binding.public_key_mismatch")
    assert match in check.detail


def test_ecdsa_public_key_of_another_address_fails() -> None:
    other = coincurve.PrivateKey(b"\x08" * 32).public_key.format(compressed=False)[1:]
    check = check_public_key_binding(other.hex(), signing_address=KEY_ADDRESS, algo="ecdsa")
    assert (check.name, check.status, check.code) == (
        "binding.public_key", Status.FAIL, "binding.public_key_mismatch")
    assert check.detail == (f"signing_public_key belongs to 0x{keccak256(other)[-20:].hex()}, "
                            f"not {KEY_ADDRESS}")


def test_ed25519_public_key_is_the_address() -> None:
    check = check_public_key_binding(ED25519_KEY, signing_address=ED25519_KEY, algo="ed25519")
    assert (check.name, check.status, check.code) == ("binding.public_key", Status.PASS, None)
    assert check.detail == "ed25519 signing_public_key is the signing address"
    other = check_public_key_binding("ef" * 33, signing_address=ED25519_KEY, algo="ed25519")
    assert (other.name, other.status, other.code) == (
        "binding.public_key", Status.FAIL, "binding.public_key_mismatch")
    # The shown key is bounded to 64 hex digits (it may be attacker-sized).
    assert other.detail == (f"ed25519 signing_public_key {'ef' * 32} is not the signing "
                            f"address {ED25519_KEY}")


def test_ed25519_key_in_ecdsa_form_is_not_accepted() -> None:
    # A 65-byte 04-prefixed string passed as an ed25519 key: never the 32-byte identifier.
    check = check_public_key_binding(POINT.hex(), signing_address=ED25519_KEY, algo="ed25519")
    assert (check.status, check.code) == (Status.FAIL, "binding.public_key_mismatch")
