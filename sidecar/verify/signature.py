"""Per-completion signature verification (spec sections 0.2, 3).

The enclave signs one of two texts (spec 0.2), and nothing else is accepted:

- 2-part ``"<sha256 of request bytes>:<sha256 of response bytes>"`` (legacy nodes, NEAR's gateway
  kind, RedPill/Phala ACI);
- 3-part ``"<model>:<sha256 of request bytes>:<sha256 of response bytes>"`` (NEAR model nodes since
  2026-03), where ``<model>`` is the node's configured canonical model name.

ecdsa signs the text as an Ethereum ``personal_sign`` (EIP-191) message, ed25519 directly over its
UTF-8 bytes. ``verify_completion_signature`` holds the recipe; sans-I/O: bytes, hashes and what
attestation established about each key in, a ``CompletionSignatureReport`` out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import coincurve
from Crypto.Hash import keccak
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sidecar.errors import VerificationFailed
# The record's types are the wire contract's (providers sit below verify); named here as well
# because every caller of the verifier builds them.
from sidecar.providers.wire import MAX_MODEL_LENGTH as MAX_MODEL_LENGTH
from sidecar.providers.wire import MAX_TEXT_LENGTH as MAX_TEXT_LENGTH
from sidecar.providers.wire import CompletionSignature as CompletionSignature
from sidecar.providers.wire import Role as Role
from sidecar.providers.wire import SignatureKind as SignatureKind
from sidecar.verify.checks import Check, CheckedReport

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# JSON's own whitespace (RFC 8259 section 2), to walk the top level of a request body.
_JSON_WHITESPACE = " \t\n\r"

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


class RequestBinding(StrEnum):
    """How the signed request hash covers the request bytes the sidecar sent."""

    EXACT = "exact"  # the sha256 of the very bytes sent
    # The bytes sent with only the top-level "model" value replaced by the upstream model's name:
    # NanoGPT renames `TEE/x` to the upstream id on the way in (spec 0.1).
    MODEL_RENAMED = "model_renamed"


@dataclass(frozen=True, slots=True)
class CompletionSignatureReport(CheckedReport):
    """Outcome of verifying one completion's signature: the checks, and the facts they found.

    Attributes:
        checks: every check made, in order; verification stops at the first failure.
        signer: the normalised key the signature recovered/verified to (``None`` if it did not).
        algo: ``ecdsa`` or ``ed25519``.
        request_binding: how the request hash covers the bytes sent (``None`` when not reached
            or no binding was found); ``MODEL_RENAMED`` is set even when the rename was refused.
        request_bound: step (2) held (``True``), failed (``False``: a mismatch or a refused
            rename), or was not reached (``None``).
        signer_role: the attested role of the signer (``None`` when the key is not attested).
        text_model: the model a 3-part text names (``None`` for a 2-part text).
        signature_valid: steps (1)-(5) passed: a genuine signature over exactly these bytes
            by the key the record names.
        signer_attested: the signer is one of the attested keys given. ``signature_valid and
            not signer_attested`` is the one case a re-attestation may resolve (a rotated key,
            another node); the I/O layer reads these facts, never failure codes.
    """

    checks: tuple[Check, ...]
    signer: str | None
    algo: str
    request_binding: RequestBinding | None = None
    request_bound: bool | None = None
    signer_role: Role | None = None
    text_model: str | None = None
    signature_valid: bool = False
    signer_attested: bool = False



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


@dataclass(frozen=True, slots=True)
class SignedText:
    """A signed text taken apart: the model (3-part texts only) and the two digests."""

    model: str | None
    request_sha256: str
    response_sha256: str


def parse_signed_text(text: str) -> SignedText:
    """Take a 2- or 3-part signed text apart (spec 0.2).

    The model may contain ``/`` (``Qwen/Qwen3.5-122B-A10B``), so the text splits on its last two
    colons; the model must then be non-empty, printable (no control characters, no lone
    surrogates) and at most ``MAX_MODEL_LENGTH`` characters.

    Raises:
        VerificationFailed: ``signature.text_malformed`` for any other text.
    """
    if len(text) > MAX_TEXT_LENGTH:
        raise VerificationFailed(f"signed text is {len(text)} characters, over {MAX_TEXT_LENGTH}",
                                 code="signature.text_malformed")
    parts = text.rsplit(":", 2)
    if len(parts) == 2:
        model, (request, response) = None, parts
    elif len(parts) == 3:
        model, request, response = parts
        if not model or len(model) > MAX_MODEL_LENGTH or not model.isprintable():
            raise VerificationFailed(
                "the model of a 3-part signed text is empty, too long or not printable",
                code="signature.text_malformed")
    else:
        raise VerificationFailed("signed text is neither '<sha256>:<sha256>' nor "
                                 "'<model>:<sha256>:<sha256>'", code="signature.text_malformed")
    if not (_SHA256_HEX.fullmatch(request) and _SHA256_HEX.fullmatch(response)):
        raise VerificationFailed("signed text does not end in two lower-case sha256 hex digests",
                                 code="signature.text_malformed")
    return SignedText(model, request, response)


def top_level_model_span(body: bytes) -> tuple[int, int] | None:
    """The byte span ``[start, end)`` of the top-level ``"model"`` string token in a JSON object.

    The walk uses the standard decoder's own positions (``JSONDecoder.raw_decode``) over the
    top-level members only, so a ``"model"`` key inside a message or a tool schema, or the text
    ``"model"`` inside a string, is never taken for it. The span covers the token as sent,
    quotes and escapes included.

    Returns:
        ``None`` when the body is not a UTF-8 JSON object, has no top-level ``"model"`` or has
        it twice (which one a server reads is its parser's choice), or its value is not a string.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in _JSON_WHITESPACE:
            i += 1
        return i

    span: tuple[int, int] | None = None
    seen = False
    try:
        i = skip(0)
        if text[i:i + 1] != "{":
            return None
        i = skip(i + 1)
        if text[i:i + 1] == "}":
            return None
        while True:
            if text[i:i + 1] != '"':
                return None
            key, i = decoder.raw_decode(text, i)
            i = skip(i)
            if text[i:i + 1] != ":":
                return None
            start = i = skip(i + 1)
            value, i = decoder.raw_decode(text, i)
            if key == "model":
                if seen:
                    return None
                seen = True
                span = (start, i) if isinstance(value, str) else None
            i = skip(i)
            if text[i:i + 1] == ",":
                i = skip(i + 1)
                continue
            if text[i:i + 1] != "}" or skip(i + 1) != len(text):
                return None
            break
    except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
        return None
    if span is None:
        return None
    # Character positions to byte positions: the prefix re-encodes to exactly the bytes it was
    # decoded from (strict UTF-8 round-trips).
    start_byte = len(text[:span[0]].encode("utf-8"))
    return start_byte, start_byte + len(text[span[0]:span[1]].encode("utf-8"))


def _renamed_request_sha256(body: bytes, span: tuple[int, int], name: str) -> set[str]:
    """Hashes of ``body`` with the model token replaced by ``name`` as a JSON string, in both
    of the forms a serialiser writes it (non-ASCII escaped or not)."""
    tokens = {json.dumps(name), json.dumps(name, ensure_ascii=False)}
    return {hashlib.sha256(body[:span[0]] + token.encode("utf-8") + body[span[1]:]).hexdigest()
            for token in tokens}


def _model_renamed_to(body: bytes, signed_request: str, candidates: Collection[str]) -> str | None:
    """The candidate whose rename of the request's model hashes to ``signed_request``, if any."""
    span = top_level_model_span(body)
    if span is None:
        return None
    sent_model = json.loads(body[span[0]:span[1]])
    for name in candidates:
        if name != sent_model and any(_equal(digest, signed_request)
                                      for digest in _renamed_request_sha256(body, span, name)):
            return name
    return None


def _bind_request(parsed: SignedText, request_sha256: str, request_body: bytes | None,
                  expected_model: str | None, accept_model_renamed: bool
                  ) -> tuple[RequestBinding | None, Check]:
    """Step (2) of ``verify_completion_signature``: how the signed request hash binds the bytes
    sent (``exact``, or ``model_renamed`` when only the top-level model differs and renames are
    accepted), as the binding found and the ``signature.request_hash`` check."""
    if _equal(parsed.request_sha256, request_sha256):
        return RequestBinding.EXACT, Check.passed("signature.request_hash",
                                                  "covers the request bytes sent")
    candidates = [name for name in dict.fromkeys((parsed.model, expected_model)) if name]
    renamed_to = (_model_renamed_to(request_body, parsed.request_sha256, candidates)
                  if request_body is not None and candidates else None)
    if renamed_to is None:
        return None, Check.failed(
            "signature.request_hash", "signature.request_hash_mismatch",
            f"signed request hash {parsed.request_sha256} != sent bytes' hash {request_sha256}")
    if not accept_model_renamed:
        return RequestBinding.MODEL_RENAMED, Check.failed(
            "signature.request_hash", "signature.request_model_renamed",
            f"signed request hash covers the bytes sent with the model renamed to "
            f"{renamed_to!r}, and this provider profile does not rename models")
    return RequestBinding.MODEL_RENAMED, Check.passed(
        "signature.request_hash",
        f"covers the request bytes sent with only the model renamed to {renamed_to!r}")


def _equal(a: str, b: str) -> bool:
    """Constant-time string equality that never raises (``compare_digest`` refuses non-ASCII
    ``str``; a hostile record's fields and a buggy caller's hashes can be anything)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


# Which attested role each signature_kind demands (spec 0.2: "never the other way round").
_KIND_ROLE: dict[SignatureKind, Role] = {SignatureKind.GATEWAY: "gateway",
                                         SignatureKind.PROVIDER_TEE: "model"}


def verify_completion_signature(
    signed: CompletionSignature,
    *,
    request_sha256: str,
    response_sha256: str,
    attested: Mapping[str, AttestedSigner],
    expected_model: str | None,
    unkinded_roles: Collection[Role],
    request_body: bytes | None = None,
    accept_model_renamed: bool = False,
) -> CompletionSignatureReport:
    """Check that ``signed`` covers exactly these bytes and comes from the right attested key.

    The recipe (each block below is tagged with its step):

      (1) the text is 2-part ``<sha256>:<sha256>`` or 3-part ``<model>:<sha256>:<sha256>``;
      (2) its request hash binds the request: ``exact`` when it is the hash of the bytes sent;
          otherwise, if replacing only the top-level ``"model"`` value of the bytes sent by the
          3-part text's model or by ``expected_model`` gives the signed hash, ``model_renamed``,
          which passes only when the caller accepts renames (NanoGPT, spec 0.1);
      (3) its response hash is the hash of the bytes received;
      (4) the signature is well formed and recovers (ecdsa) or verifies (ed25519) to a key;
      (5) that key is the one the record names;
      (6) that key is one this session attested;
      (7) the record's ``signature_kind`` matches the key's attested role: ``gateway`` → a
          gateway key, ``provider_tee`` → a model node key; a record without a kind may be
          signed only by the roles in ``unkinded_roles`` (the provider profile decides);
      (8) the model: a 3-part text's model is the signer's attested ``model_name``; and the
          signer's attested ``model_name``, when it has one, is ``expected_model``.

    Args:
        signed: the provider's signature record for this completion.
        request_sha256: hex sha256 of the request bytes the sidecar sent upstream.
        response_sha256: hex sha256 of the response bytes the sidecar received.
        attested: every key that passed attestation this session, by normalised key
            (``AttestationReport.attested_signers``).
        expected_model: the attested model the sidecar resolved for the app's request; ``None``
            when the caller resolved none (then only the text's model and the signer's attested
            one are compared).
        unkinded_roles: the roles that may sign a record without ``signature_kind``.
        request_body: the request bytes sent; read only when the signed request hash is not
            ``request_sha256`` (the rename search of step 2), so the usual case hashes nothing.
        accept_model_renamed: let a ``model_renamed`` binding pass.

    Returns:
        The report; ``report.ok`` only when all eight steps passed.
    """
    algo = signed.signing_algo or "ecdsa"
    checks: list[Check] = []
    # Facts found so far; ``done`` reads them as they stand when a step ends the recipe.
    binding: RequestBinding | None = None
    bound: bool | None = None  # (2) held, failed, or (None) was not reached
    known: AttestedSigner | None = None
    text_model: str | None = None
    valid = False

    def done(signer: str | None = None) -> CompletionSignatureReport:
        return CompletionSignatureReport(
            tuple(checks), signer, algo, request_binding=binding, request_bound=bound,
            signer_role=known.role if known is not None else None, text_model=text_model,
            signature_valid=valid, signer_attested=known is not None)

    # (1) The text's shape.
    parsed, text_check = _check_text(signed.text)
    checks.append(text_check)
    if parsed is None:
        return done()
    text_model = parsed.model

    # (2) The request hash binds the bytes sent, exactly or through the provider's model rename.
    binding, request_check = _bind_request(parsed, request_sha256, request_body, expected_model,
                                           accept_model_renamed)
    checks.append(request_check)
    bound = request_check.ok
    if not bound:
        return done()

    # (3) The response hash covers the bytes received.
    response_check = _check_response_hash(parsed.response_sha256, response_sha256)
    checks.append(response_check)
    if not response_check.ok:
        return done()

    # (4) The signature itself.
    signer, cryptographic = _check_cryptographic(signed, algo)
    checks.append(cryptographic)
    if signer is None:
        return done()

    # (5) The named key is the one that signed.
    named = _check_named_signer(signed.signing_address, algo, signer)
    checks.append(named)
    if not named.ok:
        return done(signer)
    valid = True

    # (6) The key was attested this session.
    candidate = attested.get(signer)
    if candidate is None or candidate.algo != algo:
        checks.append(Check.failed(
            "signature.attested_key", "signature.address_not_attested",
            f"recovered {signer}, which is not an attested signing key of this model"))
        return done(signer)
    known = candidate
    checks.append(Check.passed("signature.attested_key", f"{signer} is an attested {known.role} key"))

    # (7) The kind of signature and the role of the key agree.
    kind_check = _check_kind(signed.signature_kind, known, signer, unkinded_roles)
    checks.append(kind_check)
    if not kind_check.ok:
        return done(signer)

    # (8) The model: the text's, the signer's attested one, and the one the app's request
    # resolved to are the same (spec 0.2).
    model_check = _check_model(parsed.model, known, signer, expected_model)
    if model_check is not None:
        checks.append(model_check)
    return done(signer)


def _check_text(text: str) -> tuple[SignedText | None, Check]:
    """Step (1): the signed text is 2-part or 3-part; returns it parsed (``None`` if not)."""
    try:
        parsed = parse_signed_text(text)
    except VerificationFailed as exc:
        return None, Check.failed("signature.text", exc.code, exc.message)
    return parsed, Check.passed("signature.text", "text is '<sha256>:<sha256>'"
                                if parsed.model is None
                                else f"text is '{parsed.model}:<sha256>:<sha256>'")


def _check_response_hash(signed_response_sha256: str, response_sha256: str) -> Check:
    """Step (3): the signed response hash is the hash of the bytes received."""
    if not _equal(signed_response_sha256, response_sha256):
        return Check.failed(
            "signature.response_hash", "signature.response_hash_mismatch",
            f"signed response hash {signed_response_sha256} != received bytes' hash "
            f"{response_sha256}")
    return Check.passed("signature.response_hash", "covers the response bytes received")


def _check_cryptographic(signed: CompletionSignature, algo: str) -> tuple[str | None, Check]:
    """Step (4): the signature recovers (ecdsa) or verifies (ed25519); returns the signer key
    (``None`` if it does not)."""
    text = signed.text.encode()  # printable, checked in (1): it encodes
    try:
        if algo == "ecdsa":
            signer = recover_eip191_signer(text, signed.signature)
        elif algo == "ed25519":
            signer = verify_ed25519(text, signed.signature, signed.signing_address)
        else:
            raise VerificationFailed(f"unknown signing_algo {algo!r}", code="signature.unknown_algo")
    except VerificationFailed as exc:
        return None, Check.failed("signature.cryptographic", exc.code, exc.message)
    return signer, Check.passed("signature.cryptographic", f"{algo} signature by {signer}")


def _check_named_signer(signing_address: str, algo: str, signer: str) -> Check:
    """Step (5): the key the record names is the one that signed."""
    claimed = normalise_key(signing_address, algo)
    if not _equal(claimed, signer):
        return Check.failed(
            "signature.signer", "signature.address_mismatch",
            f"recovered {signer} but the signature names {claimed}")
    return Check.passed("signature.signer", f"signed by the named key {signer}")


def _check_kind(kind: SignatureKind | None, known: AttestedSigner, signer: str,
                unkinded_roles: Collection[Role]) -> Check:
    """Step (7): the record's ``signature_kind`` and the key's attested role agree.

    A gateway key signs the client's bytes as the gateway re-serialised them, a model key the
    node's own (spec 0.2); a record without a kind only from the roles the profile admits.
    """
    if kind is not None:
        if known.role != _KIND_ROLE[kind]:
            return Check.failed(
                "signature.kind", "signature.kind_key_mismatch",
                f"a {kind} signature by {signer}, which is attested as a {known.role} key")
        return Check.passed("signature.kind", f"a {kind} signature by a {known.role} key")
    if known.role not in unkinded_roles:
        return Check.failed(
            "signature.kind", "signature.unkinded_role_refused",
            f"a record without signature_kind signed by a {known.role} key; this provider "
            f"profile admits only {' or '.join(sorted(unkinded_roles)) or 'no'} keys for those")
    return Check.passed("signature.kind", f"no signature_kind; a {known.role} key "
                                          "may sign such records here")


def _check_model(text_model: str | None, known: AttestedSigner, signer: str,
                 expected_model: str | None) -> Check | None:
    """Step (8): the text's model, the signer's attested one and the requested one agree.

    A 2-part text names none; the key's attestation still does, when its report carries a
    model_name. Returns ``None`` when there is no model to compare at all.
    """
    if text_model is not None:
        if known.model_name is None:
            return Check.failed(
                "signature.model", "signature.model_unattested",
                f"the text names {text_model!r} but the attestation of {signer} names no model")
        if text_model != known.model_name:
            return Check.failed(
                "signature.model", "signature.text_model_mismatch",
                f"the text names {text_model!r} but {signer} is attested for "
                f"{known.model_name!r}")
    if known.model_name is not None and expected_model is not None \
            and known.model_name != expected_model:
        return Check.failed(
            "signature.model", "signature.model_mismatch",
            f"{signer} is attested for {known.model_name!r}, not the requested {expected_model!r}")
    if known.model_name is not None:
        return Check.passed("signature.model", f"signed for {known.model_name!r}"
                            + ("" if expected_model is not None
                               else " (no expected model to compare)"))
    return None
