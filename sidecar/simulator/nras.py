"""A simulated NVIDIA Remote Attestation Service (NRAS) that signs for real under its own key.

It speaks the wire contract of ``POST /v3/attest/gpu`` (provider-api.md §2 "GPU" and §5): the
request body is the provider's ``nvidia_payload`` JSON (``nonce``, ``evidence_list``, ``arch``),
the answer a detached EAT ``[["JWT", overall], {"GPU-0": jwt, ...}]`` whose tokens are ES384 JWTs
with NVIDIA's claim names (GPU Claims guide v3.0) and whose overall ``submods`` carry
``["DIGEST", ["SHA-256", sha256(gpu_jwt)]]`` exactly as a real NRAS answer does (see
``sidecar.verify.nvidia``). Its JWKS is served at ``/.well-known/jwks.json``.

The signing key is derived deterministically from a fixed seed, so the sidecar can ship the
simulator's JWKS as a trust anchor (``sidecar/anchors/simulator_nras_jwks.json``) without ever
contacting it. The key is public knowledge: trusting it outside tests and demos is trusting anyone.

The simulated "evidence" is not SPDM: it is base64 of a small JSON blob naming the GPU and the
nonce, enough for the simulated NRAS to decide ``x-nvidia-gpu-attestation-report-nonce-match``.

Knobs (``NrasFaults``) break exactly one thing each, for negative tests: see its docstring.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from sidecar.issuers import SIMULATOR_NRAS_ISSUER

__all__ = [
    "SIMULATOR_DRIVER_VERSION",
    "SIMULATOR_NRAS_ISSUER",
    "SIMULATOR_VBIOS_VERSION",
    "NrasFaults",
    "SimulatedNras",
    "add_nras_routes",
]

SIMULATOR_DRIVER_VERSION: Final = "570.133.20"
SIMULATOR_VBIOS_VERSION: Final = "96.00.CF.00.02"
# NRAS tokens in the wild live one hour (iat → exp in NVIDIA/attestation-sdk sample data).
TOKEN_LIFETIME_SECONDS: Final = 3600
# Fixed seeds: the trusted simulator key and the "other" key an attacker would sign with.
_TRUSTED_SEED: Final = b"tee-sidecar simulated NRAS signing key v1"
_OTHER_SEED: Final = b"tee-sidecar simulated NRAS attacker key v1"
# Order n of the P-384 group (FIPS 186-4 D.1.2.4); private scalars live in [1, n-1].
_P384_ORDER: Final = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffff"
    "c7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)
_EVIDENCE_MAGIC: Final = "tee-sidecar-simulated-gpu-evidence/1"
# A simulated request is small; this stops the test server from parsing junk at length.
_MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True)
class NrasFaults:
    """One broken thing per knob; the default breaks nothing.

    Attributes:
        sign_with_other_key: sign every token with a different key under the trusted ``kid``.
        unknown_kid: sign with the trusted key but name a ``kid`` absent from the JWKS.
        alg_none: emit unsigned tokens (``alg: none``).
        hs256_with_public_key: HMAC-SHA256 tokens keyed with the public key's PEM
            (algorithm confusion).
        expired: tokens that expired two hours before ``now``.
        not_yet_valid: tokens issued one hour after ``now``.
        wrong_issuer: ``iss`` names another service.
        overall_result_false: ``x-nvidia-overall-att-result`` is false (per-GPU claims unchanged).
        wrong_eat_nonce: every token's ``eat_nonce`` is a different nonce.
        swap_gpu_token: replace GPU-0's detached token with another validly signed one (same
            healthy claims, new ``jti``) after the overall token's submods digest was computed.
        drop_gpu_token: leave the last GPU's detached token out (submods still names it).
        extra_gpu_token: add a validly signed detached token that submods does not name.
        debug_enabled: ``dbgstat`` is ``"enabled"``.
        measres_failure: ``measres`` is ``"fail"``.
        secboot_disabled: ``secboot`` is false.
        report_nonce_mismatch: NRAS says the SPDM report's nonce did not match.
        rim_signature_unverified: the driver RIM's signature did not verify.
        cert_revoked: the attestation report's certificate chain is revoked.
        attestation_warning: a warning NRAS attaches to the GPU's claims.
        driver_version: the ``x-nvidia-gpu-driver-version`` claim.
        vbios_version: the ``x-nvidia-gpu-vbios-version`` claim.
    """

    sign_with_other_key: bool = False
    unknown_kid: bool = False
    alg_none: bool = False
    hs256_with_public_key: bool = False
    expired: bool = False
    not_yet_valid: bool = False
    wrong_issuer: bool = False
    overall_result_false: bool = False
    wrong_eat_nonce: bool = False
    swap_gpu_token: bool = False
    drop_gpu_token: bool = False
    extra_gpu_token: bool = False
    debug_enabled: bool = False
    measres_failure: bool = False
    secboot_disabled: bool = False
    report_nonce_mismatch: bool = False
    rim_signature_unverified: bool = False
    cert_revoked: bool = False
    attestation_warning: str | None = None
    driver_version: str = SIMULATOR_DRIVER_VERSION
    vbios_version: str = SIMULATOR_VBIOS_VERSION


def _derive_key(seed: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-384 private key fixed by ``seed`` (scalar = sha384(seed) reduced into [1, n-1])."""
    scalar = int.from_bytes(hashlib.sha384(seed).digest(), "big") % (_P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class SimulatedNras:
    """A simulated NRAS with a stable ES384 key.

    Attributes:
        faults: what to break (mutable so a running test server can be switched per test).
        issuer: the ``iss`` of every token and the base URL a verifier expects.
    """

    faults: NrasFaults = field(default_factory=NrasFaults)
    issuer: str = SIMULATOR_NRAS_ISSUER

    def __post_init__(self) -> None:
        self._key = _derive_key(_TRUSTED_SEED)
        self._other_key = _derive_key(_OTHER_SEED)
        self._jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self.kid = "tee-sidecar-simulator-" + self._thumbprint(self._jwk)[:16]

    @property
    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        """The simulator's private key (public knowledge; for tests that build other anchors)."""
        return self._key

    @staticmethod
    def _thumbprint(jwk: Mapping[str, Any]) -> str:
        """RFC 7638 JWK thumbprint (SHA-256 over the required EC members, sorted, compact)."""
        members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
        return _b64url(hashlib.sha256(canonical).digest())

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set a verifier trusts for this simulator (stable across instances)."""
        key = {name: self._jwk[name] for name in ("kty", "crv", "x", "y")}
        key.update({"kid": self.kid, "use": "sig", "alg": "ES384"})
        return {"keys": [key]}

    def make_nvidia_payload(self, nonce: str, gpu_count: int = 1) -> str:
        """A provider's ``nvidia_payload`` (a JSON *string*) for ``gpu_count`` simulated GPUs.

        Raises:
            ValueError: ``gpu_count`` is not between 1 and 16.
        """
        if not 1 <= gpu_count <= 16:
            raise ValueError("gpu_count must be between 1 and 16")
        evidence_list = []
        for index in range(gpu_count):
            blob = {"format": _EVIDENCE_MAGIC, "gpu_id": f"GPU-{index}", "nonce": nonce}
            evidence = base64.b64encode(json.dumps(blob, sort_keys=True).encode()).decode()
            certificate = base64.b64encode(
                f"SIMULATED CERTIFICATE CHAIN GPU-{index}".encode()
            ).decode()
            evidence_list.append({"evidence": evidence, "certificate": certificate})
        return json.dumps({"nonce": nonce, "evidence_list": evidence_list, "arch": "HOPPER"})

    def attest(self, payload: bytes | str, now: int) -> list[Any]:
        """NRAS's answer for ``payload``: ``[["JWT", overall], {"GPU-0": jwt, ...}]``.

        The overall result is true only if every GPU's evidence embeds the payload's nonce and
        its claims are healthy (and no fault says otherwise).

        Raises:
            ValueError: the payload is not the ``nvidia_payload`` shape (NRAS answers 400).
        """
        nonce, gpu_nonces = self._parse_payload(payload)
        faults = self.faults
        eat_nonce = hashlib.sha256(nonce.encode()).hexdigest() if faults.wrong_eat_nonce else nonce
        common = self._common_claims(now)
        common["eat_nonce"] = eat_nonce

        detached: dict[str, str] = {}
        healthy = True
        for gpu_id, evidence_nonce in gpu_nonces.items():
            claims = self._gpu_claims(gpu_id, evidence_nonce == nonce, faults)
            healthy = healthy and self._gpu_healthy(claims)
            detached[gpu_id] = self._sign({**common, "jti": str(uuid.uuid4()), **claims})

        overall = {
            **common,
            "jti": str(uuid.uuid4()),
            "sub": "NVIDIA-PLATFORM-ATTESTATION",
            "x-nvidia-ver": "3.0",
            "x-nvidia-overall-att-result": healthy and not faults.overall_result_false,
            "submods": {
                gpu_id: ["DIGEST", ["SHA-256", hashlib.sha256(token.encode()).hexdigest()]]
                for gpu_id, token in detached.items()
            },
        }
        overall_token = self._sign(overall)

        # Faults that tamper with the detached set after the overall token committed to it.
        if faults.swap_gpu_token:
            # Same healthy claims, validly signed, fresh jti: only the submods binding breaks.
            first = next(iter(detached))
            swapped = self._gpu_claims(first, gpu_nonces[first] == nonce, faults)
            detached[first] = self._sign({**common, "jti": str(uuid.uuid4()), **swapped})
        if faults.drop_gpu_token:
            detached.pop(next(reversed(detached)))
        if faults.extra_gpu_token:
            extra_id = f"GPU-{len(gpu_nonces)}"
            extra_claims = self._gpu_claims(extra_id, True, faults)
            detached[extra_id] = self._sign({**common, "jti": str(uuid.uuid4()), **extra_claims})
        return [["JWT", overall_token], detached]

    # --- internals -------------------------------------------------------------------------

    @staticmethod
    def _parse_payload(payload: bytes | str) -> tuple[str, dict[str, str | None]]:
        """The payload nonce and, per GPU, the nonce its evidence embeds (None if unreadable)."""
        if len(payload) > _MAX_REQUEST_BYTES:
            raise ValueError("payload too large")
        try:
            body = json.loads(payload)
        except ValueError as error:
            raise ValueError("payload is not JSON") from error
        if not isinstance(body, dict) or not isinstance(body.get("nonce"), str):
            raise ValueError("payload has no nonce")
        evidence_list = body.get("evidence_list")
        if not isinstance(evidence_list, list) or not 1 <= len(evidence_list) <= 16:
            raise ValueError("payload has no evidence_list")
        gpus: dict[str, str | None] = {}
        for index, item in enumerate(evidence_list):
            gpu_id, evidence_nonce = f"GPU-{index}", None
            try:
                blob = json.loads(base64.b64decode(item["evidence"], validate=True))
                if isinstance(blob, dict) and blob.get("format") == _EVIDENCE_MAGIC:
                    evidence_nonce = blob.get("nonce")
            except (ValueError, TypeError, KeyError, binascii.Error):
                pass
            gpus[gpu_id] = evidence_nonce if isinstance(evidence_nonce, str) else None
        return body["nonce"], gpus

    def _common_claims(self, now: int) -> dict[str, Any]:
        issued = now
        if self.faults.expired:
            issued = now - 2 * TOKEN_LIFETIME_SECONDS
        elif self.faults.not_yet_valid:
            issued = now + TOKEN_LIFETIME_SECONDS
        issuer = "https://nras.attacker.invalid" if self.faults.wrong_issuer else self.issuer
        return {
            "iss": issuer,
            "iat": issued,
            "nbf": issued,
            "exp": issued + TOKEN_LIFETIME_SECONDS,
        }

    @staticmethod
    def _gpu_claims(gpu_id: str, nonce_match: bool, faults: NrasFaults) -> dict[str, Any]:
        """Detached claims shaped like NVIDIA's GPU Claims v3.0 for one simulated H100."""
        index = int(gpu_id.removeprefix("GPU-"))
        cert_chain = {
            "x-nvidia-cert-status": "valid",
            "x-nvidia-cert-ocsp-status": "good",
            "x-nvidia-cert-expiration-date": "9999-12-31T23:59:59Z",
            "x-nvidia-cert-revocation-reason": None,
        }
        report_chain = cert_chain if not faults.cert_revoked else {
            **cert_chain, "x-nvidia-cert-status": "revoked", "x-nvidia-cert-ocsp-status": "revoked",
            "x-nvidia-cert-revocation-reason": "keyCompromise"}
        return {
            "measres": "fail" if faults.measres_failure else "success",
            "secboot": not faults.secboot_disabled,
            "dbgstat": "enabled" if faults.debug_enabled else "disabled",
            "hwmodel": "GH100 A01 GSP BROM",
            "oemid": "5703",
            "ueid": str(10**40 + index),
            "x-nvidia-gpu-attestation-report-nonce-match": (
                nonce_match and not faults.report_nonce_mismatch
            ),
            "x-nvidia-gpu-attestation-report-parsed": True,
            "x-nvidia-gpu-attestation-report-signature-verified": True,
            "x-nvidia-gpu-attestation-report-cert-chain": report_chain,
            "x-nvidia-gpu-attestation-report-cert-chain-fwid-match": True,
            "x-nvidia-gpu-arch-check": True,
            "x-nvidia-gpu-driver-version": faults.driver_version,
            "x-nvidia-gpu-vbios-version": faults.vbios_version,
            "x-nvidia-gpu-driver-rim-fetched": True,
            "x-nvidia-gpu-driver-rim-schema-validated": True,
            "x-nvidia-gpu-driver-rim-signature-verified": not faults.rim_signature_unverified,
            "x-nvidia-gpu-driver-rim-version-match": True,
            "x-nvidia-gpu-driver-rim-measurements-available": True,
            "x-nvidia-gpu-driver-rim-cert-chain": cert_chain,
            "x-nvidia-gpu-vbios-rim-fetched": True,
            "x-nvidia-gpu-vbios-rim-schema-validated": True,
            "x-nvidia-gpu-vbios-rim-signature-verified": True,
            "x-nvidia-gpu-vbios-rim-version-match": True,
            "x-nvidia-gpu-vbios-rim-measurements-available": True,
            "x-nvidia-gpu-vbios-rim-cert-chain": cert_chain,
            "x-nvidia-gpu-vbios-index-no-conflict": True,
            "x-nvidia-attestation-warning": faults.attestation_warning,
        }

    @staticmethod
    def _gpu_healthy(claims: Mapping[str, Any]) -> bool:
        return (
            claims["measres"] == "success"
            and claims["secboot"] is True
            and claims["dbgstat"] == "disabled"
            and claims["x-nvidia-gpu-attestation-report-nonce-match"] is True
        )

    def _sign(self, claims: Mapping[str, Any]) -> str:
        """Encode ``claims`` as the faults dictate (ES384 under the trusted key by default)."""
        faults = self.faults
        if faults.alg_none:
            return self._unsigned(claims)
        if faults.hs256_with_public_key:
            return self._hs256_with_public_key(claims)
        key = self._other_key if faults.sign_with_other_key else self._key
        kid = "tee-sidecar-simulator-unknown" if faults.unknown_kid else self.kid
        return jwt.encode(dict(claims), key, algorithm="ES384", headers={"kid": kid})

    def _unsigned(self, claims: Mapping[str, Any]) -> str:
        header = _b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": self.kid}).encode())
        return f"{header}.{_b64url(json.dumps(dict(claims)).encode())}."

    def _hs256_with_public_key(self, claims: Mapping[str, Any]) -> str:
        # PyJWT refuses to HMAC with a PEM key (that refusal is the defence under test), so the
        # forged token is assembled by hand, as an attacker would.
        pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.kid}).encode())
        body = _b64url(json.dumps(dict(claims)).encode())
        mac = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64url(mac)}"


def add_nras_routes(
    app: web.Application,
    nras: SimulatedNras,
    prefix: str = "/nras",
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Serve ``POST {prefix}/v3/attest/gpu`` and ``GET {prefix}/.well-known/jwks.json``.

    Args:
        app: the aiohttp application to extend.
        nras: the simulator answering (its ``faults`` are read per request).
        prefix: the path under which the NRAS endpoints live.
        clock: the time source for token validity (inject a frozen clock in tests).
    """

    async def attest_gpu(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            answer = nras.attest(body, int(clock()))
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(answer)

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(nras.jwks())

    app.router.add_post(f"{prefix}/v3/attest/gpu", attest_gpu)
    app.router.add_get(f"{prefix}/.well-known/jwks.json", jwks)
