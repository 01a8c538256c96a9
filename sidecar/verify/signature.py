"""Per-completion signature verification (spec section 3).

The enclave signs ``text = "<sha256 of request bytes>:<sha256 of response bytes>"``:
with ecdsa as an Ethereum ``personal_sign`` (EIP-191) message, with ed25519 directly over the
UTF-8 text. Verifying means all of:

  (1) the text is two lower-case sha256 hex digests joined by a colon;
  (2) its request hash equals the hash of the bytes the sidecar sent;
  (3) its response hash equals the hash of the bytes the sidecar received;
  (4) the signature is well formed and recovers (ecdsa) or verifies (ed25519) to a key;
  (5) that key is the one the signature response names;
  (6) that key is one this session attested for the model.

Sans-I/O: bytes and the set of attested keys in, a ``CompletionSignatureReport`` out.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import coincurve
from Crypto.Hash import keccak
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sidecar.errors import VerificationFailed
from sidecar.verify.checks import Check, CheckedReport

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_ED25519_KEY = re.compile(r"(0x)?[0-9a-fA-F]{64}")
# A signature text longer than two digests and a colon is not one the contract produces; the
# bound keeps a hostile gateway from making us hash megabytes per completion.
MAX_TEXT_LENGTH = 256


class SignatureKind(StrEnum):
    """Which attested key a signature record says signed it (NEAR Cloud, spec 0.2)."""

    GATEWAY = "gateway"  # the attested gateway key, 2-part text over the client's bytes
    PROVIDER_TEE = "provider_tee"  # the attested model node key, 3-part text


@dataclass(frozen=True, slots=True)
class AttestedSigner:
    """What this session's attestation established about one signing key.

    Attributes:
        key: the normalised key (``normalise_key``).
        algo: ``ecdsa`` or ``ed25519``.
        role: ``model`` (a model node) or ``gateway`` (a gateway that re-serialises answers).
        model_name: the canonical model the node's report names (``model_name``), if any.
    """

    key: str
    algo: str
    role: Literal["gateway", "model"]
    model_name: str | None = None


@dataclass(frozen=True, slots=True)
class CompletionSignature:
    """A signature as fetched from the provider's signature endpoint."""

    text: str
    signature: str
    signing_address: str
    signing_algo: str = "ecdsa"


@dataclass(frozen=True, slots=True)
class CompletionSignatureReport(CheckedReport):
    """Outcome of verifying one completion's signature.

    Attributes:
        checks: every check made, in order; verification stops at the first failure.
        signer: the normalised key the signature recovered/verified to (``None`` if it did not).
        algo: ``ecdsa`` or ``ed25519``.
    """

    checks: tuple[Check, ...]
    signer: str | None
    algo: str

    def raise_for_failure(self) -> None:
        """Raise the first failure.

        Raises:
            VerificationFailed: with the failing check's code and detail.
        """
        if (failed := self.failure) is not None:
            raise VerificationFailed(failed.detail, code=failed.code)


def normalise_key(key: str, algo: str) -> str:
    """The comparable form of a signing identifier: lower-case, ``0x``-less for ed25519.

    EIP-55 checksums are display only (spec section 3), so addresses compare lower-cased.
    """
    key = key.strip().lower().removeprefix("0x")
    return key if algo == "ed25519" else "0x" + key


def keccak256(data: bytes) -> bytes:
    """Keccak-256 as Ethereum uses it (not SHA3-256, whose padding differs)."""
    return keccak.new(digest_bits=256, data=data).digest()


def eip191_digest(text: bytes) -> bytes:
    """The digest an Ethereum ``personal_sign`` signs for ``text``."""
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(text)).encode() + text)


def address_of_public_key(public_key: coincurve.PublicKey) -> str:
    """The lower-case Ethereum address of a secp256k1 key."""
    return "0x" + keccak256(public_key.format(compressed=False)[1:])[-20:].hex()


def recover_eip191_signer(text: bytes, signature_hex: str) -> str:
    """Recover the address that ``personal_sign``-ed ``text``.

    Raises:
        VerificationFailed: code ``signature.malformed`` for a signature that is not 65 bytes of
            hex with v in {0, 1, 27, 28}, or that recovers to no key.
    """
    try:
        raw = bytes.fromhex(signature_hex.removeprefix("0x"))
    except ValueError:
        raise VerificationFailed("signature is not hex", code="signature.malformed") from None
    if len(raw) != 65:
        raise VerificationFailed(
            f"ecdsa signature is {len(raw)} bytes, expected 65", code="signature.malformed"
        )
    v = raw[64]
    recovery_id = v - 27 if v >= 27 else v
    if recovery_id not in (0, 1):
        raise VerificationFailed(f"ecdsa signature has v={v}", code="signature.malformed")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            raw[:64] + bytes([recovery_id]), eip191_digest(text), hasher=None
        )
    except Exception as exc:  # coincurve raises bare Exception/ValueError on invalid r, s
        raise VerificationFailed(
            f"ecdsa signature recovers no key ({exc})", code="signature.malformed"
        ) from None
    return address_of_public_key(public_key)


def verify_ed25519(text: bytes, signature_hex: str, public_key_hex: str) -> str:
    """Verify an ed25519 signature over ``text`` by ``public_key_hex``; return the key.

    Raises:
        VerificationFailed: ``signature.malformed`` for bad hex or lengths,
            ``signature.invalid`` when the signature does not verify.
    """
    try:
        raw_sig = bytes.fromhex(signature_hex.removeprefix("0x"))
        raw_key = bytes.fromhex(normalise_key(public_key_hex, "ed25519"))
    except ValueError:
        raise VerificationFailed("ed25519 signature or key is not hex", code="signature.malformed") from None
    if len(raw_sig) != 64 or len(raw_key) != 32:
        raise VerificationFailed(
            f"ed25519 signature/key lengths {len(raw_sig)}/{len(raw_key)}, expected 64/32",
            code="signature.malformed",
        )
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_sig, text)
    except (InvalidSignature, ValueError):
        raise VerificationFailed(
            f"ed25519 signature does not verify under {raw_key.hex()}", code="signature.invalid"
        ) from None
    return raw_key.hex()


def verify_completion_signature(
    signed: CompletionSignature,
    *,
    request_sha256: str,
    response_sha256: str,
    attested_keys: Collection[str],
) -> CompletionSignatureReport:
    """Check that ``signed`` covers exactly these bytes and comes from an attested key.

    Args:
        signed: the provider's signature record for this completion.
        request_sha256: hex sha256 of the request bytes the sidecar sent upstream.
        response_sha256: hex sha256 of the response bytes the sidecar received.
        attested_keys: normalised keys (see ``normalise_key``) attested for this model.

    Returns:
        The report; ``report.ok`` only when all six steps in the module docstring passed.
    """
    algo = signed.signing_algo or "ecdsa"
    checks: list[Check] = []

    def done(signer: str | None = None) -> CompletionSignatureReport:
        return CompletionSignatureReport(tuple(checks), signer, algo)

    # (1) The text's shape.
    text = signed.text
    if len(text) > MAX_TEXT_LENGTH or text.count(":") != 1:
        checks.append(Check.failed("signature.text", "signature.text_malformed",
                                   f"signed text is not '<sha256>:<sha256>' ({len(text)} chars)"))
        return done()
    signed_request, signed_response = text.split(":")
    if not (_SHA256_HEX.fullmatch(signed_request) and _SHA256_HEX.fullmatch(signed_response)):
        checks.append(Check.failed("signature.text", "signature.text_malformed",
                                   "signed text is not two lower-case sha256 hex digests"))
        return done()
    checks.append(Check.passed("signature.text", "text is '<sha256>:<sha256>'"))

    # (2) and (3) The hashes cover the exact bytes sent and received.
    if not hmac.compare_digest(signed_request, request_sha256):
        checks.append(Check.failed(
            "signature.request_hash", "signature.request_hash_mismatch",
            f"signed request hash {signed_request} != sent bytes' hash {request_sha256}"))
        return done()
    checks.append(Check.passed("signature.request_hash", "covers the request bytes sent"))
    if not hmac.compare_digest(signed_response, response_sha256):
        checks.append(Check.failed(
            "signature.response_hash", "signature.response_hash_mismatch",
            f"signed response hash {signed_response} != received bytes' hash {response_sha256}"))
        return done()
    checks.append(Check.passed("signature.response_hash", "covers the response bytes received"))

    # (4) The signature itself.
    try:
        if algo == "ecdsa":
            signer = recover_eip191_signer(text.encode(), signed.signature)
        elif algo == "ed25519":
            signer = verify_ed25519(text.encode(), signed.signature, signed.signing_address)
        else:
            raise VerificationFailed(f"unknown signing_algo {algo!r}", code="signature.unknown_algo")
    except VerificationFailed as exc:
        checks.append(Check.failed("signature.cryptographic", exc.code, exc.message))
        return done()
    checks.append(Check.passed("signature.cryptographic", f"{algo} signature by {signer}"))

    # (5) The named key is the one that signed.
    claimed = normalise_key(signed.signing_address, algo)
    if not hmac.compare_digest(claimed, signer):
        checks.append(Check.failed(
            "signature.signer", "signature.address_mismatch",
            f"recovered {signer} but the signature names {claimed}"))
        return done(signer)
    checks.append(Check.passed("signature.signer", f"signed by the named key {signer}"))

    # (6) The key was attested this session.
    if signer not in attested_keys:
        checks.append(Check.failed(
            "signature.attested_key", "signature.address_not_attested",
            f"recovered {signer}, which is not an attested signing key of this model"))
        return done(signer)
    checks.append(Check.passed("signature.attested_key", f"{signer} is attested"))
    return done(signer)
