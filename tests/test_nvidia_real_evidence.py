"""NVIDIA's own NRAS answer through ``sidecar.verify.nvidia``: evidence the project did not make.

The answer is ``tests/assets/nvidia/hopperClaimsv3_detached_eat.json``, copied unmodified from
NVIDIA/attestation-sdk (see that folder's README). NVIDIA publishes no JWKS for it and the key of
2025-06-09 is no longer served, so the tests (a) show the answer is refused under a JWKS that lacks
its kid, and (b) recover the one P-384 key both signatures verify under (ECDSA public-key recovery,
python-ecdsa) to run every later check on NVIDIA's exact bytes. (b) proves the two tokens share one
signer, not that the signer is NVIDIA. Each tampered copy asserts the exact set of failing checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from ecdsa import NIST384p, VerifyingKey
from ecdsa.util import sigdecode_string

from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.verify.checks import Status
from sidecar.verify.nvidia import (
    CLOCK_LEEWAY_SECONDS,
    GpuEvidenceReport,
    GpuPolicy,
    verify_nras_result,
)

ASSETS = Path(__file__).parent / "assets" / "nvidia"
ISSUER = "https://nras.attestation.nvidia.com"
KID = "nv-eat-kid-prod-20250609211310110-93b13aa1-17e4-4c14-9d33-dba2323329f2"
NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
IAT = 1749601858
EXP = 1749605458
# Inside the tokens' own window: the clock frozen a minute after NRAS issued them.
NOW = IAT + 60


def answer() -> list[Any]:
    """A fresh parsed copy of NVIDIA's answer (tests tamper with their own copy)."""
    parsed: list[Any] = json.loads((ASSETS / "hopperClaimsv3_detached_eat.json").read_bytes())
    return parsed


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _candidate_keys(token: str) -> set[bytes]:
    """The P-384 public keys (uncompressed points) an ES384 token's signature could be under."""
    header, payload, signature = token.split(".")
    digest = hashlib.sha384(f"{header}.{payload}".encode()).digest()
    keys = VerifyingKey.from_public_key_recovery_with_digest(
        _b64url_decode(signature), digest, NIST384p, sigdecode=sigdecode_string
    )
    return {key.to_string("uncompressed") for key in keys}


def recovered_jwks() -> dict[str, Any]:
    """A one-key JWKS under the sample's kid, the key recovered from both signatures."""
    overall = answer()[0][1]
    gpu = answer()[1]["GPU-0"]
    common = _candidate_keys(overall) & _candidate_keys(gpu)
    assert len(common) == 1, "the overall and GPU signatures must share exactly one key"
    point = common.pop()
    assert point[0] == 4 and len(point) == 97
    return {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-384",
                "kid": KID,
                "alg": "ES384",
                "use": "sig",
                "x": _b64url_encode(point[1:49]),
                "y": _b64url_encode(point[49:]),
            }
        ]
    }


def verify(
    nras_answer: Any = None,
    *,
    jwks: Any = None,
    now: int = NOW,
    nonce: str = NONCE,
    issuer: str = ISSUER,
    policy: GpuPolicy | None = None,
) -> GpuEvidenceReport:
    return verify_nras_result(
        answer() if nras_answer is None else nras_answer,
        expected_nonce=nonce,
        jwks=recovered_jwks() if jwks is None else jwks,
        expected_issuer=issuer,
        now=now,
        policy=policy or GpuPolicy(),
    )


def not_passed(report: GpuEvidenceReport) -> set[tuple[str, str | None, Status]]:
    """The exact set of checks that did not pass: (name, code, status)."""
    return {(check.name, check.code, check.status) for check in report.failures}


def test_the_asset_is_nvidias_file_unmodified() -> None:
    raw = (ASSETS / "hopperClaimsv3_detached_eat.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == (
        "4a7663d275f8247cb24bc845aad90a755fae249eb638644a708df79950c831e4"
    )


def test_under_a_jwks_without_its_kid_the_answer_is_refused() -> None:
    # The situation of any verifier today: NRAS no longer serves the key of 2025-06-09.
    report = verify(jwks={"keys": []})
    assert not report.ok
    assert not_passed(report) == {
        ("gpu.overall.signature", "gpu.jwt_unknown_kid", Status.FAIL),
        ("gpu.token.signature", "gpu.jwt_unknown_kid", Status.FAIL),
        ("gpu.submod_digest", "gpu.submod_digest_unverified", Status.INCOMPLETE),
    }
    assert report.unknown_kids
    assert report.gpus[0].claims == {}
    with pytest.raises(VerificationFailed, match="not in the NRAS JWKS") as raised:
        report.raise_for_failure()
    assert raised.value.code == "gpu.jwt_unknown_kid"


def test_under_the_recovered_key_every_check_passes() -> None:
    report = verify()
    assert not_passed(report) == set()
    assert report.ok
    names = {check.name for check in report.all_checks()}
    # The whole recipe ran on NVIDIA's bytes, not just the signature.
    assert {
        "gpu.overall.signature", "gpu.overall.issuer", "gpu.overall.validity",
        "gpu.overall.eat_nonce", "gpu.overall_result", "gpu.submods", "gpu.submod_digest",
        "gpu.token.signature", "gpu.token.issuer", "gpu.token.validity", "gpu.token.eat_nonce",
        "gpu.report_nonce_match", "gpu.measres", "gpu.secboot", "gpu.dbgstat",
        "gpu.integrity_claims", "gpu.cert_chains", "gpu.attestation_warning",
    } <= names
    report.raise_for_failure()


def test_reported_claims_are_nvidias_decoded_claims() -> None:
    decoded = json.loads((ASSETS / "hopperClaimsv3_decoded.json").read_bytes())["GPU-0"]
    (gpu,) = verify().gpus
    assert gpu.gpu_id == "GPU-0"
    assert gpu.claims  # not empty: the token verified
    for claim, value in gpu.claims.items():
        assert decoded[claim] == value, claim
    assert gpu.claims["hwmodel"] == "GH100 A01 GSP BROM"
    assert gpu.claims["x-nvidia-gpu-driver-version"] == "550.90.07"
    assert gpu.claims["x-nvidia-gpu-vbios-version"] == "96.00.9F.00.01"


def test_the_submods_digest_is_the_gpu_tokens_sha256() -> None:
    nras = answer()
    overall_claims = json.loads(_b64url_decode(nras[0][1].split(".")[1]))
    label, digest = overall_claims["submods"]["GPU-0"][1]
    assert label == "SHA-256"  # real NRAS writes the hyphen (nvidia.py module docstring)
    assert digest == hashlib.sha256(nras[1]["GPU-0"].encode("ascii")).hexdigest()


def _edit_payload(token: str, edit: Any) -> str:
    """The token with its claims edited and its original signature kept (a forgery)."""
    header, payload, signature = token.split(".")
    claims = json.loads(_b64url_decode(payload))
    edit(claims)
    return ".".join((header, _b64url_encode(json.dumps(claims).encode()), signature))


def test_gpu_token_with_debug_forged_on_fails() -> None:
    nras = answer()
    nras[1]["GPU-0"] = _edit_payload(nras[1]["GPU-0"], lambda c: c.update(dbgstat="enabled"))
    assert not_passed(verify(nras)) == {
        ("gpu.submod_digest", "gpu.submod_digest_mismatch", Status.FAIL),
        ("gpu.token.signature", "gpu.jwt_verification_failed", Status.FAIL),
    }


def test_overall_token_with_a_forged_nonce_fails() -> None:
    nras = answer()
    nras[0][1] = _edit_payload(nras[0][1], lambda c: c.update(eat_nonce="00" * 32))
    assert not_passed(verify(nras)) == {
        ("gpu.overall.signature", "gpu.jwt_verification_failed", Status.FAIL),
        ("gpu.submod_digest", "gpu.submod_digest_unverified", Status.INCOMPLETE),
    }


def test_flipped_signature_byte_fails() -> None:
    nras = answer()
    header, payload, signature = nras[1]["GPU-0"].split(".")
    raw = bytearray(_b64url_decode(signature))
    raw[10] ^= 0x01
    nras[1]["GPU-0"] = ".".join((header, payload, _b64url_encode(bytes(raw))))
    assert not_passed(verify(nras)) == {
        ("gpu.submod_digest", "gpu.submod_digest_mismatch", Status.FAIL),
        ("gpu.token.signature", "gpu.jwt_verification_failed", Status.FAIL),
    }


def test_gpu_token_renamed_fails_the_submods() -> None:
    nras = answer()
    nras[1] = {"GPU-1": nras[1]["GPU-0"]}
    assert not_passed(verify(nras)) == {
        ("gpu.submods", "gpu.submods_mismatch", Status.FAIL),
        ("gpu.submod_digest", "gpu.submods_mismatch", Status.FAIL),
    }


def test_alg_none_header_is_refused() -> None:
    nras = answer()
    _, payload, _ = nras[1]["GPU-0"].split(".")
    header = _b64url_encode(json.dumps({"kid": KID, "alg": "none"}).encode())
    nras[1]["GPU-0"] = f"{header}.{payload}."
    assert not_passed(verify(nras)) == {
        ("gpu.submod_digest", "gpu.submod_digest_mismatch", Status.FAIL),
        ("gpu.token.signature", "gpu.jwt_verification_failed", Status.FAIL),
    }


@pytest.mark.parametrize(
    ("now", "code"),
    [
        (EXP + CLOCK_LEEWAY_SECONDS + 1, "gpu.jwt_expired"),
        (IAT - CLOCK_LEEWAY_SECONDS - 1, "gpu.jwt_not_yet_valid"),
    ],
)
def test_outside_the_tokens_window_fails(now: int, code: str) -> None:
    assert not_passed(verify(now=now)) == {
        ("gpu.overall.validity", code, Status.FAIL),
        ("gpu.token.validity", code, Status.FAIL),
    }


def test_the_edges_of_the_window_pass() -> None:
    assert verify(now=EXP + CLOCK_LEEWAY_SECONDS).ok
    assert verify(now=IAT - CLOCK_LEEWAY_SECONDS).ok


def test_replayed_for_another_nonce_fails() -> None:
    assert not_passed(verify(nonce="ab" * 32)) == {
        ("gpu.overall.eat_nonce", "gpu.eat_nonce_mismatch", Status.FAIL),
        ("gpu.token.eat_nonce", "gpu.eat_nonce_mismatch", Status.FAIL),
    }


def test_staging_issuer_expected_fails() -> None:
    assert not_passed(verify(issuer="https://nras.attestation-stg.nvidia.com")) == {
        ("gpu.overall.issuer", "gpu.jwt_issuer_mismatch", Status.FAIL),
        ("gpu.token.issuer", "gpu.jwt_issuer_mismatch", Status.FAIL),
    }


def test_driver_outside_the_policy_fails() -> None:
    policy = GpuPolicy(allowed_driver_versions=frozenset({"570.124.06"}))
    assert not_passed(verify(policy=policy)) == {
        ("gpu.driver_version", "gpu.driver_version_not_allowed", Status.FAIL),
    }
    assert verify(policy=GpuPolicy(allowed_driver_versions=frozenset({"550.90.07"}))).ok


def test_raise_for_failure_on_a_forgery_is_a_failure_not_undecided() -> None:
    nras = answer()
    nras[0][1] = _edit_payload(nras[0][1], lambda c: c.update(iss="https://evil.example"))
    with pytest.raises(VerificationFailed) as raised:
        verify(nras).raise_for_failure()
    assert not isinstance(raised.value, VerificationIncomplete)
    assert raised.value.code == "gpu.jwt_verification_failed"
