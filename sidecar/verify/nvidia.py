"""NVIDIA GPU evidence: the request-nonce binding of ``nvidia_payload`` and NRAS's signed answer.

A provider's attestation report carries ``nvidia_payload`` (a JSON string: ``nonce``,
``evidence_list``, ``arch``). The sidecar POSTs it as-is to NVIDIA's Remote Attestation Service
(NRAS, ``/v3/attest/gpu``), which answers a *detached EAT*::

    [["JWT", "<overall JWT>"], {"GPU-0": "<GPU JWT>", "GPU-1": "<GPU JWT>", ...}]

This module decides, without I/O, whether that answer proves what we need. The reference
verifiers of private-ml-sdk only base64-decode these tokens; NVIDIA's own attestation SDK
(``validate_and_decode_EAT`` in NVIDIA/attestation-sdk ``nv-attestation-sdk-cpp/src/verify.cpp``)
checks every token's signature against NRAS's JWKS, the issuer, and that each entry of the overall
token's ``submods`` equals the SHA-256 of the matching detached GPU token. We do all of that and,
unlike that SDK, also check the clock, ``eat_nonce`` against *our* request nonce, and the per-GPU
claims a policy names.

Wire facts (checked against sources, 2026):

* ``submods`` format: ``{"GPU-0": ["DIGEST", ["SHA-256", "<lower-case hex sha256 of the GPU JWT
  string>"]], ...}``. A real NRAS answer (``hopperClaimsv3_detached_eat.json`` in
  NVIDIA/attestation-sdk unit-test data, issuer ``https://nras.attestation.nvidia.com``) labels the
  algorithm ``"SHA-256"``; the SDK's own token writer (``src/claims.cpp``) writes ``"SHA256"`` and
  its reader ignores the label. We accept exactly those two labels and recompute the digest over
  the token's ASCII bytes (verified on that real answer).
* Claim names: NVIDIA's "GPU Claims" guide, version 3.0
  (docs.nvidia.com/attestation/advanced-documentation/latest/claims-guide/gpu_claims.html):
  overall ``x-nvidia-overall-att-result``, ``eat_nonce``, ``submods``, ``iss``; detached
  ``measres``, ``secboot``, ``dbgstat``, ``x-nvidia-gpu-attestation-report-nonce-match``,
  ``x-nvidia-gpu-driver-version``, ``x-nvidia-gpu-vbios-version``. In the real answer both the
  overall and the detached tokens carry ``eat_nonce``, ``iss``, ``iat``, ``nbf`` and ``exp``.
* Signing: ES384, key chosen by the header ``kid`` from NRAS's JWKS
  (``https://nras.attestation.nvidia.com/.well-known/jwks.json``). NVIDIA publishes keys with an
  ``x5c`` certificate (the SDK's ``JwkStore::refresh_jwks`` reads only ``x5c[0]``); we accept
  ``x``/``y`` coordinates, ``x5c[0]``, or both when they name the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from sidecar.verify.checks import Check, CheckedReport

__all__ = [
    "ALLOWED_JWT_ALGORITHMS",
    "CLOCK_LEEWAY_SECONDS",
    "MAX_GPU_TOKENS",
    "MAX_JWKS_KEYS",
    "MAX_JWT_BYTES",
    "MAX_NRAS_RESPONSE_BYTES",
    "MAX_NVIDIA_PAYLOAD_BYTES",
    "GpuEvidenceReport",
    "GpuPolicy",
    "GpuReport",
    "check_gpu_payload_nonce",
    "token_kids",
    "verify_nras_result",
]

# --- Bounds that stop abuse -------------------------------------------------------------------
# NRAS answers for one HGX box (8 GPUs) are ~25 KB; 1 MiB leaves room and stops a hostile or
# broken NRAS (or a man in the middle before TLS is pinned) from making us parse megabytes.
MAX_NRAS_RESPONSE_BYTES: Final = 1024 * 1024
# A real GPU detached token is ~2.7 KB (NVIDIA/attestation-sdk sample); 64 KiB is generous and
# bounds base64/JSON/signature work per token.
MAX_JWT_BYTES: Final = 64 * 1024
# The largest NVIDIA confidential-computing system today has 8 GPUs; 16 bounds the per-token work.
MAX_GPU_TOKENS: Final = 16
# Real nvidia_payload strings are ~40 KB per GPU (SPDM report + certificate chain).
MAX_NVIDIA_PAYLOAD_BYTES: Final = 2 * 1024 * 1024
# NRAS publishes a handful of keys (rotation); more than this is not a JWKS we should trust.
MAX_JWKS_KEYS: Final = 32
# Clocks of NRAS and the sidecar drift; a minute absorbs drift without stretching validity much.
CLOCK_LEEWAY_SECONDS: Final = 60
# NRAS signs with ES384 only. Anything else (``none``, HS256 with the public key as the secret,
# RS*, ES256) is an algorithm-confusion attempt and is refused before any key is touched.
ALLOWED_JWT_ALGORITHMS: Final = ("ES384",)
# Labels seen for the submods digest algorithm: "SHA-256" (real NRAS), "SHA256" (NVIDIA SDK writer).
SUBMOD_DIGEST_ALGORITHMS: Final = frozenset({"SHA-256", "SHA256"})
# NRAS names GPU submodules "GPU-<index>"; anything else is refused (it also ends up in logs).
_GPU_ID = re.compile(r"GPU-[0-9]{1,4}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

# Per-GPU claims copied into ``GpuReport.claims`` for reports and receipts.
_REPORTED_CLAIMS: Final[tuple[str, ...]] = (
    "measres",
    "secboot",
    "dbgstat",
    "x-nvidia-gpu-attestation-report-nonce-match",
    "x-nvidia-gpu-driver-version",
    "x-nvidia-gpu-vbios-version",
    "hwmodel",
    "ueid",
    "oemid",
    "x-nvidia-gpu-arch-check",
)


@dataclass(frozen=True)
class GpuPolicy:
    """What the user's policy demands of each attested GPU. The defaults are strict.

    Attributes:
        require_measres_success: ``measres`` must be ``"success"`` (measurements match the RIMs).
        require_secure_boot: ``secboot`` must be ``true``.
        require_debug_disabled: ``dbgstat`` must be ``"disabled"``.
        require_integrity_claims: every flag in ``INTEGRITY_FLAGS`` is ``true``, every chain in
            ``CERT_CHAINS`` is valid, and NRAS raised no ``x-nvidia-attestation-warning``.
        allowed_driver_versions: allowed ``x-nvidia-gpu-driver-version`` values; ``None`` = any.
        allowed_vbios_versions: allowed ``x-nvidia-gpu-vbios-version`` values; ``None`` = any.
    """

    require_measres_success: bool = True
    require_secure_boot: bool = True
    require_debug_disabled: bool = True
    require_integrity_claims: bool = True
    allowed_driver_versions: frozenset[str] | None = None
    allowed_vbios_versions: frozenset[str] | None = None


@dataclass(frozen=True)
class GpuReport(CheckedReport):
    """The checks and claims of one GPU's detached NRAS token.

    Attributes:
        gpu_id: the submodule name NRAS gave it (``GPU-0``…).
        checks: every check run on this GPU's token, in order.
        claims: the reported claims (read-only; empty when the token could not be verified).
    """

    gpu_id: str
    checks: tuple[Check, ...]
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class GpuEvidenceReport(CheckedReport):
    """Everything the sidecar checked about one NRAS answer.

    Attributes:
        checks: checks on the answer as a whole (shape, overall token, submods).
        gpus: one report per detached GPU token that was examined.
    """

    checks: tuple[Check, ...]
    gpus: tuple[GpuReport, ...]

    # An answer that names no GPU verified nothing, whatever its overall checks say.
    empty_code: ClassVar[str] = "gpu.nras_response_malformed"

    @property
    def ok(self) -> bool:
        """True only when every check passed and at least one GPU was verified."""
        return super().ok and bool(self.gpus) and all(gpu.ok for gpu in self.gpus)

    def all_checks(self) -> Iterator[Check]:
        """Every check, overall ones first, then per GPU."""
        yield from self.checks
        for gpu in self.gpus:
            yield from gpu.checks

    @property
    def failures(self) -> tuple[Check, ...]:
        """The checks that did not pass, overall ones first, then per GPU."""
        return tuple(check for check in self.all_checks() if not check.ok)

    @property
    def unknown_kids(self) -> bool:
        """True when some token named a ``kid`` absent from the JWKS (worth one JWKS refetch)."""
        return any(check.code == "gpu.jwt_unknown_kid" for check in self.all_checks())

    def failure_message(self, check: Check | None) -> str:
        """``<check>: <detail>``; with no failing check, that the answer named no GPU."""
        return f"{check.name}: {check.detail}" if check else "NRAS answer named no GPU"


# --- Request-nonce binding of the payload ---------------------------------------------------------


def check_gpu_payload_nonce(nvidia_payload: str | Mapping[str, Any], expected_nonce: str) -> Check:
    """Check that the provider's ``nvidia_payload.nonce`` is our request nonce.

    The nonce is hex (NRAS demands 32 bytes as 64 hex digits); case does not matter. Without this
    binding a provider could replay an old, genuine GPU payload (spec section 2 "GPU").

    Args:
        nvidia_payload: the payload as the report carries it (a JSON string) or already parsed.
        expected_nonce: the nonce the sidecar sent with its attestation request.

    Returns:
        A ``gpu.payload_nonce`` check; it fails with ``gpu.payload_malformed`` or
        ``gpu.nonce_mismatch``.
    """
    name = "gpu.payload_nonce"
    payload: object = nvidia_payload
    if isinstance(nvidia_payload, str):
        if len(nvidia_payload) > MAX_NVIDIA_PAYLOAD_BYTES:
            return Check.failed(
                name,
                "gpu.payload_malformed",
                f"nvidia_payload is larger than {MAX_NVIDIA_PAYLOAD_BYTES} bytes",
            )
        try:
            payload = json.loads(nvidia_payload)
        except (ValueError, RecursionError):
            return Check.failed(name, "gpu.payload_malformed", "nvidia_payload is not JSON")
    if not isinstance(payload, Mapping):
        return Check.failed(name, "gpu.payload_malformed", "nvidia_payload is not a JSON object")
    nonce = payload.get("nonce")
    if not isinstance(nonce, str):
        return Check.failed(name, "gpu.payload_malformed", "nvidia_payload has no string nonce")
    got = _hex_bytes(nonce)
    want = _hex_bytes(expected_nonce)
    if want is None:
        return Check.failed(name, "gpu.nonce_mismatch", "the request nonce is not hex")
    if got is None:
        return Check.failed(name, "gpu.payload_malformed", "nvidia_payload nonce is not hex")
    if got != want:
        return Check.failed(
            name,
            "gpu.nonce_mismatch",
            f"nvidia_payload nonce {_short(nonce)} is not the request nonce "
            f"{_short(expected_nonce)}",
        )
    return Check.passed(name, "nvidia_payload nonce equals the request nonce")


# --- NRAS answer -------------------------------------------------------------------------------


def token_kids(nras_response: bytes | list[Any]) -> frozenset[str]:
    """The ``kid`` header values of every token in an NRAS answer, read without verification.

    For the I/O side only: it tells the JWKS cache whether a refetch is worth trying. Malformed
    input gives an empty set; never trust the result for anything else.
    """
    parsed = _parse_response(nras_response)
    if isinstance(parsed, str):
        return frozenset()
    overall, detached = parsed
    kids: set[str] = set()
    for token in (overall, *detached.values()):
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            continue
        if isinstance(kid, str):
            kids.add(kid)
    return frozenset(kids)


def verify_nras_result(
    nras_response: bytes | list[Any],
    *,
    expected_nonce: str,
    jwks: Mapping[str, Any],
    expected_issuer: str,
    now: int,
    policy: GpuPolicy,
) -> GpuEvidenceReport:
    """Verify NRAS's answer for our GPU payload, never raising on bad input.

    The recipe:

    (1) Shape: a two-element list ``[["JWT", overall], {gpu_id: jwt, ...}]`` within the bounds.
    (2) Trust anchor: load the JWKS into ES384 P-384 public keys by ``kid``.
    (3) Overall token: ES384 signature under the JWKS key named by its ``kid`` (no ``none``, no
        HMAC, no unknown ``kid``); ``iss``; ``exp``/``nbf``/``iat`` against ``now``; ``eat_nonce``
        equals our request nonce; ``x-nvidia-overall-att-result`` is ``true``.
    (4) Submods: the GPUs named in ``submods`` are exactly the detached tokens, and each entry is
        ``["DIGEST", ["SHA-256", sha256(token)]]`` over that detached token's exact string. This is
        what binds the per-GPU claims to the overall verdict: without it a valid GPU token from
        another attestation could be slipped in beside a genuine overall token.
    (5) Each GPU token: same signature, issuer, time and ``eat_nonce`` checks, then the claims the
        policy names: ``measres``, ``secboot``, ``dbgstat``, the report-nonce match, and the
        driver and VBIOS versions.

    Args:
        nras_response: the NRAS answer body (bytes) or the parsed JSON list.
        expected_nonce: the request nonce (hex) the GPU payload was made for.
        jwks: NRAS's JSON Web Key Set (``{"keys": [...]}``), the trust anchor.
        expected_issuer: the ``iss`` every token must carry (NRAS's base URL).
        now: the current time, seconds since the epoch (injected; frozen in tests).
        policy: what each GPU must show.

    Returns:
        The report; ``report.ok`` is true only when every check passed.
    """
    checks: list[Check] = []

    # (1) Shape.
    parsed = _parse_response(nras_response)
    if isinstance(parsed, str):
        checks.append(Check.failed("gpu.nras_response", "gpu.nras_response_malformed", parsed))
        return GpuEvidenceReport(tuple(checks), ())
    overall_token, detached = parsed
    checks.append(
        Check.passed("gpu.nras_response", f"overall token and {len(detached)} GPU token(s)")
    )

    # (2) Trust anchor.
    keys = _load_jwks(jwks)
    if isinstance(keys, str):
        checks.append(Check.failed("gpu.jwks", "gpu.jwks_invalid", keys))
        return GpuEvidenceReport(tuple(checks), ())

    # (3) Overall token.
    overall_claims, token_checks = _verify_token(
        overall_token, "overall token", "gpu.overall", keys, expected_issuer, expected_nonce, now
    )
    checks.extend(token_checks)
    if overall_claims is not None:
        result = overall_claims.get("x-nvidia-overall-att-result")
        if result is True:
            checks.append(Check.passed("gpu.overall_result", "x-nvidia-overall-att-result is true"))
        else:
            checks.append(
                Check.failed(
                    "gpu.overall_result",
                    "gpu.overall_result_false",
                    f"x-nvidia-overall-att-result is {json.dumps(result)}, not true",
                )
            )

    # (4) Submods: the binding of the detached tokens to the overall token.
    digests: Mapping[str, str] = {}
    unbound: str | None = "the overall token did not verify, so nothing binds this token to it"
    if overall_claims is not None:
        parsed_submods = _parse_submods(overall_claims.get("submods"))
        if isinstance(parsed_submods, str):
            checks.append(Check.failed("gpu.submods", "gpu.submods_malformed", parsed_submods))
            unbound = "the overall token's submods are malformed, so nothing binds this token"
        else:
            unbound = None
            digests = parsed_submods
            missing = sorted(set(digests) - set(detached))
            extra = sorted(set(detached) - set(digests))
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"no detached token for {', '.join(missing)}")
                if extra:
                    parts.append(f"detached token(s) {', '.join(extra)} not in submods")
                checks.append(Check.failed("gpu.submods", "gpu.submods_mismatch", "; ".join(parts)))
            else:
                checks.append(
                    Check.passed(
                        "gpu.submods", f"submods name exactly {', '.join(sorted(digests))}"
                    )
                )

    # (5) Each GPU token.
    gpu_reports: list[GpuReport] = []
    for gpu_id in sorted(detached):
        gpu_reports.append(
            _verify_gpu(
                gpu_id,
                detached[gpu_id],
                digests.get(gpu_id),
                unbound,
                keys,
                expected_issuer,
                expected_nonce,
                now,
                policy,
            )
        )
    return GpuEvidenceReport(tuple(checks), tuple(gpu_reports))


# --- Internals ---------------------------------------------------------------------------------


def _parse_response(nras_response: object) -> tuple[str, dict[str, str]] | str:
    """Split an NRAS answer into (overall token, {gpu_id: token}) or say why it is malformed."""
    value: object = nras_response
    if isinstance(nras_response, (bytes, bytearray, memoryview)):
        raw = bytes(nras_response)
        if len(raw) > MAX_NRAS_RESPONSE_BYTES:
            return f"NRAS answer is larger than {MAX_NRAS_RESPONSE_BYTES} bytes"
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return "NRAS answer is not JSON"
    if not isinstance(value, list) or len(value) != 2:
        return 'NRAS answer is not [["JWT", overall], {gpu: jwt}]'
    head, body = value
    if (
        not isinstance(head, list)
        or len(head) != 2
        or head[0] != "JWT"
        or not isinstance(head[1], str)
    ):
        return 'NRAS answer does not start with ["JWT", "<overall token>"]'
    if not isinstance(body, dict):
        return "NRAS answer has no object of detached GPU tokens"
    if not body:
        return "NRAS answer has no detached GPU token"
    if len(body) > MAX_GPU_TOKENS:
        return f"NRAS answer has {len(body)} detached tokens, more than {MAX_GPU_TOKENS}"
    tokens: dict[str, str] = {}
    for gpu_id, token in body.items():
        if not isinstance(gpu_id, str) or not _GPU_ID.fullmatch(gpu_id):
            return f"detached token name {_short(str(gpu_id))!r} is not GPU-<n>"
        if not isinstance(token, str):
            return f"detached token {gpu_id} is not a string"
        tokens[gpu_id] = token
    return head[1], tokens


def _load_jwks(jwks: object) -> dict[str, ec.EllipticCurvePublicKey | str] | str:
    """Map each ``kid`` to its P-384 public key, or to why that entry cannot be used.

    A whole-set problem (not a JWKS at all) is returned as a string. A bad entry poisons only its
    own ``kid``; a ``kid`` listed twice is refused, since the key it names would be ambiguous.
    """
    if not isinstance(jwks, Mapping):
        return "JWKS is not a JSON object"
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        return "JWKS has no keys list"
    if len(entries) > MAX_JWKS_KEYS:
        return f"JWKS has {len(entries)} keys, more than {MAX_JWKS_KEYS}"
    keys: dict[str, ec.EllipticCurvePublicKey | str] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kid"), str):
            continue
        kid = entry["kid"]
        if kid in keys:
            keys[kid] = f"kid {_short(kid)!r} appears more than once in the JWKS"
            continue
        keys[kid] = _jwk_public_key(entry)
    return keys


def _jwk_public_key(entry: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | str:
    """The P-384 public key of one JWK (``x``/``y`` and/or ``x5c[0]``), or why not."""
    if "d" in entry:
        # A private key published in a JWKS is a compromised key, not a trust anchor.
        return "JWK contains private key material"
    if entry.get("kty") != "EC":
        return f"JWK kty is {entry.get('kty')!r}, not EC"
    if entry.get("alg") not in (None, *ALLOWED_JWT_ALGORITHMS):
        return f"JWK alg is {entry.get('alg')!r}, not ES384"
    if entry.get("use") not in (None, "sig"):
        return f"JWK use is {entry.get('use')!r}, not sig"
    from_coordinates: object = None
    from_certificate: object = None
    try:
        if "x" in entry or "y" in entry:
            from_coordinates = ECAlgorithm.from_jwk(dict(entry))
        x5c = entry.get("x5c")
        if x5c is not None:
            if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
                return "JWK x5c is not a list of base64 certificates"
            der = base64.b64decode(x5c[0], validate=True)
            from_certificate = x509.load_der_x509_certificate(der).public_key()
    except (jwt.PyJWTError, ValueError, TypeError, binascii.Error) as error:
        return f"JWK is not a usable EC key ({type(error).__name__})"
    key = from_coordinates if from_coordinates is not None else from_certificate
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "JWK holds no EC public key"
    if not isinstance(key.curve, ec.SECP384R1):
        return f"JWK curve is {key.curve.name}, not P-384 (ES384)"
    if isinstance(from_certificate, ec.EllipticCurvePublicKey) and (
        from_certificate.public_numbers() != key.public_numbers()
    ):
        return "JWK x/y and x5c certificate name different keys"
    return key


def _verify_token(
    token: str,
    label: str,
    prefix: str,
    keys: Mapping[str, ec.EllipticCurvePublicKey | str],
    expected_issuer: str,
    expected_nonce: str,
    now: int,
) -> tuple[dict[str, Any] | None, list[Check]]:
    """Signature, issuer, validity window and ``eat_nonce`` of one NRAS token.

    Returns the verified claims (``None`` when the signature does not verify: then nothing in the
    token may be read) and the checks ``{prefix}.signature|issuer|validity|eat_nonce``.
    """
    claims, signature = _verify_token_signature(token, label, f"{prefix}.signature", keys)
    if claims is None:
        return None, [signature]
    return claims, [
        signature,
        _check_issuer(claims, label, f"{prefix}.issuer", expected_issuer),
        _check_validity(claims, label, f"{prefix}.validity", now),
        _check_eat_nonce(claims, label, f"{prefix}.eat_nonce", expected_nonce),
    ]


def _verify_token_signature(
    token: str, label: str, name: str, keys: Mapping[str, ec.EllipticCurvePublicKey | str]
) -> tuple[dict[str, Any] | None, Check]:
    """The ES384 signature of one NRAS token under the JWKS key its ``kid`` names.

    Returns the claims (``None`` unless the signature verifies) and the ``name`` check.
    """
    if len(token) > MAX_JWT_BYTES:
        failed = Check.failed(
            name, "gpu.jwt_malformed", f"{label} is larger than {MAX_JWT_BYTES} bytes"
        )
        return None, failed
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None, Check.failed(name, "gpu.jwt_malformed", f"{label} is not a JWT")
    alg = header.get("alg")
    if alg not in ALLOWED_JWT_ALGORITHMS:
        detail = f"{label} alg {_short(str(alg))!r} is not allowed (only ES384)"
        return None, Check.failed(name, "gpu.jwt_verification_failed", detail)
    kid = header.get("kid")
    if not isinstance(kid, str):
        detail = f"{label} has no kid"
        return None, Check.failed(name, "gpu.jwt_verification_failed", detail)
    key = keys.get(kid)
    if key is None:
        detail = f"{label} kid {_short(kid)!r} is not in the NRAS JWKS"
        return None, Check.failed(name, "gpu.jwt_unknown_kid", detail)
    if isinstance(key, str):
        detail = f"{label} kid {_short(kid)!r} is unusable: {key}"
        return None, Check.failed(name, "gpu.jwt_verification_failed", detail)
    try:
        # Only the signature here: PyJWT reads the wall clock, we use the injected ``now``.
        claims = jwt.decode(
            token,
            key=key,
            algorithms=list(ALLOWED_JWT_ALGORITHMS),
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_iss": False,
                "verify_aud": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError:
        detail = f"{label} signature does not verify under kid {_short(kid)!r}"
        return None, Check.failed(name, "gpu.jwt_verification_failed", detail)
    except jwt.PyJWTError as error:
        detail = f"{label} is not a valid JWT ({type(error).__name__})"
        return None, Check.failed(name, "gpu.jwt_malformed", detail)
    return claims, Check.passed(
        name, f"{label} ES384 signature verifies under kid {_short(kid)!r}"
    )


def _check_issuer(claims: Mapping[str, Any], label: str, name: str, expected_issuer: str) -> Check:
    """``iss`` is NRAS's base URL."""
    issuer = claims.get("iss")
    if issuer == expected_issuer:
        return Check.passed(name, f"{label} issuer is {expected_issuer}")
    return Check.failed(
        name,
        "gpu.jwt_issuer_mismatch",
        f"{label} issuer {_short(str(issuer))!r} is not {expected_issuer!r}",
    )


def _check_eat_nonce(
    claims: Mapping[str, Any], label: str, name: str, expected_nonce: str
) -> Check:
    """``eat_nonce`` is our request nonce (hex, case-insensitive): no replayed NRAS answer."""
    eat_nonce = claims.get("eat_nonce")
    want = _hex_bytes(expected_nonce)
    got = _hex_bytes(eat_nonce) if isinstance(eat_nonce, str) else None
    if want is not None and got == want:
        return Check.passed(name, f"{label} eat_nonce equals the request nonce")
    return Check.failed(
        name,
        "gpu.eat_nonce_mismatch",
        f"{label} eat_nonce {_short(str(eat_nonce))} is not the request nonce "
        f"{_short(expected_nonce)}",
    )


def _check_validity(claims: Mapping[str, Any], label: str, name: str, now: int) -> Check:
    """``iat``, ``nbf`` and ``exp`` against ``now`` with ``CLOCK_LEEWAY_SECONDS``."""
    times: dict[str, int] = {}
    for claim in ("exp", "iat", "nbf"):
        value = claims.get(claim)
        if value is None and claim == "nbf":
            continue
        # bool is an int subclass; "exp": true is not a time.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Check.failed(
                name, "gpu.jwt_malformed", f"{label} {claim} is missing or not a number"
            )
        times[claim] = int(value)
    if now > times["exp"] + CLOCK_LEEWAY_SECONDS:
        return Check.failed(
            name, "gpu.jwt_expired", f"{label} expired at {times['exp']} (now {now})"
        )
    for claim in ("nbf", "iat"):
        if claim in times and times[claim] > now + CLOCK_LEEWAY_SECONDS:
            return Check.failed(
                name,
                "gpu.jwt_not_yet_valid",
                f"{label} {claim} {times[claim]} is in the future (now {now})",
            )
    return Check.passed(name, f"{label} is valid until {times['exp']}")


def _parse_submods(submods: object) -> dict[str, str] | str:
    """``{"GPU-0": ["DIGEST", ["SHA-256", hex]], ...}`` → ``{"GPU-0": hex}``, or why not."""
    if not isinstance(submods, dict) or not submods:
        return "overall token has no submods object"
    if len(submods) > MAX_GPU_TOKENS:
        return f"submods names {len(submods)} entries, more than {MAX_GPU_TOKENS}"
    digests: dict[str, str] = {}
    for gpu_id, entry in submods.items():
        if not _GPU_ID.fullmatch(gpu_id):
            return f"submods entry {_short(gpu_id)!r} is not GPU-<n>"
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or entry[0] != "DIGEST"
            or not isinstance(entry[1], list)
            or len(entry[1]) != 2
        ):
            return f'submods entry {gpu_id} is not ["DIGEST", [algorithm, digest]]'
        algorithm, digest = entry[1]
        if algorithm not in SUBMOD_DIGEST_ALGORITHMS:
            return f"submods entry {gpu_id} uses digest algorithm {_short(str(algorithm))!r}"
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            return f"submods entry {gpu_id} digest is not 64 hex digits"
        digests[gpu_id] = digest.lower()
    return digests


def _verify_gpu(
    gpu_id: str,
    token: str,
    expected_digest: str | None,
    unbound: str | None,
    keys: Mapping[str, ec.EllipticCurvePublicKey | str],
    expected_issuer: str,
    expected_nonce: str,
    now: int,
    policy: GpuPolicy,
) -> GpuReport:
    """All checks on one detached GPU token (recipe step 5, plus its submods digest).

    ``unbound`` says why the submods binding cannot be decided (``None`` when it can).
    """
    label = f"{gpu_id} token"
    checks: list[Check] = []

    if unbound is not None:
        checks.append(
            Check.incomplete(
                "gpu.submod_digest", "gpu.submod_digest_unverified", f"{gpu_id}: {unbound}"
            )
        )
    elif expected_digest is None:
        checks.append(
            Check.failed(
                "gpu.submod_digest",
                "gpu.submods_mismatch",
                f"{gpu_id} is not named in the overall token's submods",
            )
        )
    else:
        actual = hashlib.sha256(token.encode("utf-8")).hexdigest()
        if actual == expected_digest:
            checks.append(
                Check.passed(
                    "gpu.submod_digest", f"sha256 of the {label} matches the overall submods"
                )
            )
        else:
            checks.append(
                Check.failed(
                    "gpu.submod_digest",
                    "gpu.submod_digest_mismatch",
                    f"sha256 of the {label} is {actual[:16]}…, overall submods say "
                    f"{expected_digest[:16]}…",
                )
            )

    claims, token_checks = _verify_token(
        token, label, "gpu.token", keys, expected_issuer, expected_nonce, now
    )
    checks.extend(token_checks)
    if claims is None:
        return GpuReport(gpu_id, tuple(checks))

    checks.extend(_check_gpu_claims(gpu_id, claims, policy))
    reported = MappingProxyType({name: claims[name] for name in _REPORTED_CLAIMS if name in claims})
    return GpuReport(gpu_id, tuple(checks), reported)


# NRAS's own verdicts on the evidence it checked (GPU Claims guide v3.0), as a real NRAS answer
# carries them: the SPDM report parsed and its signature verified, the driver and VBIOS reference
# manifests (RIMs) fetched, schema-valid, signed and with measurements. ``measres`` summarises
# the measurement comparison, but a policy that trusts only ``measres`` trusts NRAS to have
# done every step; these flags say that it did.
INTEGRITY_FLAGS: Final[tuple[str, ...]] = (
    "x-nvidia-gpu-attestation-report-parsed",
    "x-nvidia-gpu-attestation-report-signature-verified",
    "x-nvidia-gpu-arch-check",
    "x-nvidia-gpu-driver-rim-fetched",
    "x-nvidia-gpu-driver-rim-signature-verified",
    "x-nvidia-gpu-driver-rim-measurements-available",
    "x-nvidia-gpu-vbios-rim-fetched",
    "x-nvidia-gpu-vbios-rim-signature-verified",
    "x-nvidia-gpu-vbios-rim-measurements-available",
    "x-nvidia-gpu-vbios-index-no-conflict",
)
# Certificate chains NRAS validated: (what, v3 object claim, older boolean claim). NRAS versions
# report either the object ({x-nvidia-cert-status, x-nvidia-cert-ocsp-status, …}) or the boolean.
CERT_CHAINS: Final[tuple[tuple[str, str, str], ...]] = (
    ("attestation report", "x-nvidia-gpu-attestation-report-cert-chain",
     "x-nvidia-gpu-attestation-report-cert-chain-validated"),
    ("driver RIM", "x-nvidia-gpu-driver-rim-cert-chain", "x-nvidia-gpu-driver-rim-cert-validated"),
    ("VBIOS RIM", "x-nvidia-gpu-vbios-rim-cert-chain", "x-nvidia-gpu-vbios-rim-cert-validated"),
)


def _check_integrity_claims(gpu_id: str, claims: Mapping[str, Any]) -> list[Check]:
    """NRAS's per-step verdicts: every flag true, every chain valid and not revoked, no warning."""
    bad_flags = [flag for flag in INTEGRITY_FLAGS if claims.get(flag) is not True]
    if bad_flags:
        shown = ", ".join(f"{flag}={_short(json.dumps(claims.get(flag), default=str), 20)}"
                          for flag in bad_flags)
        flags = Check.failed("gpu.integrity_claims", "gpu.integrity_claim_failed",
                             f"{gpu_id}: NRAS did not confirm {shown}")
    else:
        flags = Check.passed("gpu.integrity_claims",
                             f"{gpu_id}: report signature, RIMs and measurements confirmed by NRAS")
    bad_chains = []
    for what, chain_claim, flag_claim in CERT_CHAINS:
        chain = claims.get(chain_claim)
        if isinstance(chain, Mapping):
            status, ocsp = chain.get("x-nvidia-cert-status"), chain.get("x-nvidia-cert-ocsp-status")
            if status != "valid" or ocsp != "good":
                bad_chains.append(f"{what} certificate {status}/OCSP {ocsp}")
        elif claims.get(flag_claim) is not True:
            bad_chains.append(f"{what} certificate chain not validated")
    if bad_chains:
        chains = Check.failed("gpu.cert_chains", "gpu.cert_chain_invalid",
                              f"{gpu_id}: " + "; ".join(bad_chains))
    else:
        chains = Check.passed("gpu.cert_chains", f"{gpu_id}: report and RIM certificate chains valid")
    warning = claims.get("x-nvidia-attestation-warning")
    if warning is None:
        warned = Check.passed("gpu.attestation_warning", f"{gpu_id}: NRAS raised no warning")
    else:
        warned = Check.failed("gpu.attestation_warning", "gpu.attestation_warning",
                              f"{gpu_id}: NRAS warns {_short(json.dumps(warning, default=str))}")
    return [flags, chains, warned]


def _check_gpu_claims(gpu_id: str, claims: Mapping[str, Any], policy: GpuPolicy) -> list[Check]:
    """The per-GPU claims of NVIDIA's GPU Claims guide v3.0 that the policy names."""
    checks: list[Check] = []

    def expect(name: str, claim: str, wanted: object, code: str) -> None:
        value = claims.get(claim)
        # ``is``-style comparison for booleans: 1 == True must not pass for "secboot": 1.
        same = value is wanted if isinstance(wanted, bool) else value == wanted
        if same:
            checks.append(Check.passed(name, f"{gpu_id} {claim} is {json.dumps(wanted)}"))
        else:
            shown = _short(json.dumps(value, default=str))
            checks.append(
                Check.failed(
                    name, code, f"{gpu_id} {claim} is {shown}, policy needs {json.dumps(wanted)}"
                )
            )

    # The SPDM report's nonce is the one NRAS was given: always required, no policy knob.
    expect(
        "gpu.report_nonce_match",
        "x-nvidia-gpu-attestation-report-nonce-match",
        True,
        "gpu.report_nonce_mismatch",
    )
    if policy.require_measres_success:
        expect("gpu.measres", "measres", "success", "gpu.measres_failed")
    if policy.require_secure_boot:
        expect("gpu.secboot", "secboot", True, "gpu.secure_boot_disabled")
    if policy.require_debug_disabled:
        expect("gpu.dbgstat", "dbgstat", "disabled", "gpu.debug_enabled")
    if policy.require_integrity_claims:
        checks.extend(_check_integrity_claims(gpu_id, claims))
    checks.extend(
        _check_version(
            gpu_id,
            claims,
            "x-nvidia-gpu-driver-version",
            policy.allowed_driver_versions,
            "gpu.driver_version",
            "gpu.driver_version_not_allowed",
        )
    )
    checks.extend(
        _check_version(
            gpu_id,
            claims,
            "x-nvidia-gpu-vbios-version",
            policy.allowed_vbios_versions,
            "gpu.vbios_version",
            "gpu.vbios_version_not_allowed",
        )
    )
    return checks


def _check_version(
    gpu_id: str,
    claims: Mapping[str, Any],
    claim: str,
    allowed: frozenset[str] | None,
    name: str,
    code: str,
) -> list[Check]:
    """An allow-list check on a version claim; no check when the policy allows any."""
    if allowed is None:
        return []
    value = claims.get(claim)
    if isinstance(value, str) and value in allowed:
        return [Check.passed(name, f"{gpu_id} {claim} {value} is allowed")]
    shown = _short(json.dumps(value, default=str))
    return [
        Check.failed(
            name, code, f"{gpu_id} {claim} {shown} is not in the allowed set {sorted(allowed)}"
        )
    ]


def _hex_bytes(value: str) -> bytes | None:
    """Bytes of a hex string (any case), or ``None`` when it is not hex."""
    if not _HEX.fullmatch(value):
        return None
    return bytes.fromhex(value)


def _short(value: str, limit: int = 80) -> str:
    """Bound attacker-chosen text before it goes into a detail string (logs, headers)."""
    return value if len(value) <= limit else value[:limit] + "…"

