"""NVIDIA GPU evidence: payload nonce binding and NRAS detached-EAT verification.

Every NRAS answer here is produced and signed for real by ``SimulatedNras``; each fault knob
breaks exactly one thing, and each test pins the failing check's code and message.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import hypothesis.strategies as st
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from jwt.algorithms import ECAlgorithm

from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.simulator.nras import (
    SIMULATOR_DRIVER_VERSION,
    SIMULATOR_NRAS_ISSUER,
    SIMULATOR_VBIOS_VERSION,
    NrasFaults,
    SimulatedNras,
)
from sidecar.verify.checks import Check, Status
from sidecar.verify.nvidia import (
    CLOCK_LEEWAY_SECONDS,
    MAX_GPU_TOKENS,
    MAX_JWKS_KEYS,
    MAX_JWT_BYTES,
    MAX_NRAS_RESPONSE_BYTES,
    MAX_NVIDIA_PAYLOAD_BYTES,
    GpuEvidenceReport,
    GpuPolicy,
    GpuReport,
    check_gpu_payload_nonce,
    token_kids,
    verify_nras_result,
)

NONCE = "9f" * 32
OTHER_NONCE = "1a" * 32
NOW = 1_750_000_000


def simulator_jwks() -> dict[str, Any]:
    """The JWKS shipped as a trust anchor, read from the package."""
    text = resources.files("sidecar").joinpath("anchors/simulator_nras_jwks.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def attest(
    faults: NrasFaults | None = None,
    *,
    gpu_count: int = 1,
    payload_nonce: str = NONCE,
) -> list[Any]:
    nras = SimulatedNras(faults=faults or NrasFaults())
    return nras.attest(nras.make_nvidia_payload(payload_nonce, gpu_count), NOW)


def verify(
    answer: Any,
    *,
    policy: GpuPolicy | None = None,
    now: int = NOW,
    jwks: Any = None,
    nonce: str = NONCE,
) -> GpuEvidenceReport:
    return verify_nras_result(
        answer,
        expected_nonce=nonce,
        jwks=simulator_jwks() if jwks is None else jwks,
        expected_issuer=SIMULATOR_NRAS_ISSUER,
        now=now,
        policy=policy or GpuPolicy(),
    )


def failures(report: GpuEvidenceReport) -> list[Check]:
    return list(report.failures)


def only_failure(report: GpuEvidenceReport) -> Check:
    """The single failing check: a fault knob must break exactly one thing."""
    failed = failures(report)
    assert len(failed) == 1, [f"{c.name}:{c.code}" for c in failed]
    assert not report.ok
    return failed[0]


# --- Good evidence ------------------------------------------------------------------------


@pytest.mark.parametrize("gpu_count", [1, 8])
def test_good_nras_answer_passes(gpu_count: int) -> None:
    report = verify(attest(gpu_count=gpu_count))
    assert report.ok, failures(report)
    assert [gpu.gpu_id for gpu in report.gpus] == [f"GPU-{i}" for i in range(gpu_count)]
    claims = report.gpus[0].claims
    assert claims["measres"] == "success"
    assert claims["secboot"] is True
    assert claims["dbgstat"] == "disabled"
    assert claims["x-nvidia-gpu-driver-version"] == SIMULATOR_DRIVER_VERSION
    assert claims["x-nvidia-gpu-vbios-version"] == SIMULATOR_VBIOS_VERSION
    names = {check.name for check in report.checks}
    assert {"gpu.overall.signature", "gpu.overall_result", "gpu.submods"} <= names
    gpu_names = {check.name for check in report.gpus[0].checks}
    assert {"gpu.submod_digest", "gpu.token.signature", "gpu.measres", "gpu.dbgstat"} <= gpu_names
    report.raise_for_failure()


def test_good_answer_as_bytes_passes() -> None:
    assert verify(json.dumps(attest()).encode()).ok


def test_shipped_jwks_anchor_is_the_simulators_key() -> None:
    assert simulator_jwks() == SimulatedNras().jwks()
    assert SimulatedNras().jwks() == SimulatedNras(faults=NrasFaults(expired=True)).jwks()


def test_token_kids_reads_the_kid_of_every_token() -> None:
    kid = simulator_jwks()["keys"][0]["kid"]
    assert token_kids(attest(gpu_count=2)) == {kid}
    assert token_kids(b"garbage") == frozenset()


def test_jwks_with_x5c_certificate_only_verifies() -> None:
    # NRAS publishes its keys with an x5c certificate (NVIDIA/attestation-sdk JwkStore).
    key = SimulatedNras().signing_key
    jwk = simulator_jwks()["keys"][0]
    x5c_only = {k: v for k, v in jwk.items() if k not in ("x", "y")}
    x5c_only["x5c"] = [_self_signed_der_b64(key)]
    assert verify(attest(), jwks={"keys": [x5c_only]}).ok


# --- Signatures ---------------------------------------------------------------------------


def test_signed_by_another_key_fails() -> None:
    report = verify(attest(NrasFaults(sign_with_other_key=True)))
    assert not report.ok
    overall = _check(report.checks, "gpu.overall.signature")
    assert overall.code == "gpu.jwt_verification_failed"
    assert "overall token signature does not verify under kid" in overall.detail
    gpu = report.gpus[0]
    assert _check(gpu.checks, "gpu.token.signature").code == "gpu.jwt_verification_failed"
    # Nothing binds the GPU token to an unverified overall token: undecidable, not passed.
    assert _check(gpu.checks, "gpu.submod_digest").status is Status.INCOMPLETE
    assert gpu.claims == {}
    with pytest.raises(VerificationFailed, match="signature does not verify") as raised:
        report.raise_for_failure()
    assert raised.value.code == "gpu.jwt_verification_failed"
    assert not isinstance(raised.value, VerificationIncomplete)


@pytest.mark.parametrize(
    ("faults", "alg"),
    [
        (NrasFaults(alg_none=True), "none"),
        (NrasFaults(hs256_with_public_key=True), "HS256"),
    ],
    ids=["alg_none", "hs256_public_key_confusion"],
)
def test_algorithm_confusion_is_refused(faults: NrasFaults, alg: str) -> None:
    report = verify(attest(faults))
    overall = _check(report.checks, "gpu.overall.signature")
    assert overall.code == "gpu.jwt_verification_failed"
    assert overall.detail == f"overall token alg '{alg}' is not allowed (only ES384)"
    assert _check(report.gpus[0].checks, "gpu.token.signature").code == "gpu.jwt_verification_failed"
    assert not report.ok


def test_unknown_kid_fails_and_asks_for_a_jwks_refresh() -> None:
    report = verify(attest(NrasFaults(unknown_kid=True)))
    overall = _check(report.checks, "gpu.overall.signature")
    assert overall.code == "gpu.jwt_unknown_kid"
    assert "kid 'tee-sidecar-simulator-unknown' is not in the NRAS JWKS" in overall.detail
    assert report.unknown_kids
    assert not verify(attest()).unknown_kids


# --- Issuer, time, nonce ------------------------------------------------------------------


def test_expired_tokens_fail() -> None:
    report = verify(attest(NrasFaults(expired=True)))
    codes = {c.code for c in failures(report)}
    assert codes == {"gpu.jwt_expired"}
    detail = _check(report.checks, "gpu.overall.validity").detail
    assert detail == f"overall token expired at {NOW - 3600} (now {NOW})"


def test_tokens_from_the_future_fail() -> None:
    report = verify(attest(NrasFaults(not_yet_valid=True)))
    assert {c.code for c in failures(report)} == {"gpu.jwt_not_yet_valid"}
    assert "is in the future" in _check(report.checks, "gpu.overall.validity").detail


def test_clock_leeway_is_small_and_bounded() -> None:
    answer = attest()
    expires = NOW + 3600
    assert verify(answer, now=expires + CLOCK_LEEWAY_SECONDS).ok
    late = verify(answer, now=expires + CLOCK_LEEWAY_SECONDS + 1)
    assert {c.code for c in failures(late)} == {"gpu.jwt_expired"}


def test_wrong_issuer_fails() -> None:
    report = verify(attest(NrasFaults(wrong_issuer=True)))
    assert {c.code for c in failures(report)} == {"gpu.jwt_issuer_mismatch"}
    assert _check(report.checks, "gpu.overall.issuer").detail == (
        "overall token issuer 'https://nras.attacker.invalid' is not "
        f"'{SIMULATOR_NRAS_ISSUER}'"
    )


def test_eat_nonce_mismatch_fails() -> None:
    report = verify(attest(NrasFaults(wrong_eat_nonce=True)))
    assert {c.code for c in failures(report)} == {"gpu.eat_nonce_mismatch"}
    assert "is not the request nonce" in _check(report.checks, "gpu.overall.eat_nonce").detail


def test_answer_for_another_nonce_fails() -> None:
    # A genuine, fresh answer for someone else's nonce (replay of another attestation).
    report = verify(attest(payload_nonce=OTHER_NONCE))
    assert {c.code for c in failures(report)} == {"gpu.eat_nonce_mismatch"}


def test_eat_nonce_compares_hex_case_insensitively() -> None:
    assert verify(attest(), nonce=NONCE.upper()).ok


# --- Overall result and submods -----------------------------------------------------------


def test_overall_result_false_fails() -> None:
    failed = only_failure(verify(attest(NrasFaults(overall_result_false=True))))
    assert failed.name == "gpu.overall_result"
    assert failed.code == "gpu.overall_result_false"
    assert failed.detail == "x-nvidia-overall-att-result is false, not true"


def test_swapped_gpu_token_fails_the_submods_digest() -> None:
    report = verify(attest(NrasFaults(swap_gpu_token=True), gpu_count=2))
    failed = only_failure(report)
    assert failed.name == "gpu.submod_digest"
    assert failed.code == "gpu.submod_digest_mismatch"
    assert failed.detail.startswith("sha256 of the GPU-0 token is ")
    assert not report.gpus[0].ok
    assert report.gpus[1].ok


def test_missing_gpu_token_fails() -> None:
    report = verify(attest(NrasFaults(drop_gpu_token=True), gpu_count=2))
    failed = only_failure(report)
    assert failed.code == "gpu.submods_mismatch"
    assert failed.detail == "no detached token for GPU-1"
    assert [gpu.gpu_id for gpu in report.gpus] == ["GPU-0"]


def test_extra_gpu_token_fails() -> None:
    report = verify(attest(NrasFaults(extra_gpu_token=True)))
    assert {c.code for c in failures(report)} == {"gpu.submods_mismatch"}
    assert _check(report.checks, "gpu.submods").detail == (
        "detached token(s) GPU-1 not in submods"
    )
    extra = report.gpus[1]
    assert extra.gpu_id == "GPU-1"
    assert _check(extra.checks, "gpu.submod_digest").detail == (
        "GPU-1 is not named in the overall token's submods"
    )


# --- Per-GPU claims -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "name", "code", "detail"),
    [
        (
            NrasFaults(debug_enabled=True),
            "gpu.dbgstat",
            "gpu.debug_enabled",
            'GPU-0 dbgstat is "enabled", policy needs "disabled"',
        ),
        (
            NrasFaults(measres_failure=True),
            "gpu.measres",
            "gpu.measres_failed",
            'GPU-0 measres is "fail", policy needs "success"',
        ),
        (
            NrasFaults(secboot_disabled=True),
            "gpu.secboot",
            "gpu.secure_boot_disabled",
            "GPU-0 secboot is false, policy needs true",
        ),
        (
            NrasFaults(report_nonce_mismatch=True),
            "gpu.report_nonce_match",
            "gpu.report_nonce_mismatch",
            "GPU-0 x-nvidia-gpu-attestation-report-nonce-match is false, policy needs true",
        ),
    ],
    ids=["debug_enabled", "measres_failure", "secboot_disabled", "report_nonce_mismatch"],
)
def test_unhealthy_gpu_claim_fails(faults: NrasFaults, name: str, code: str, detail: str) -> None:
    report = verify(attest(faults))
    # A real NRAS would also say overall false; the claim check must fail on its own.
    per_gpu = [c for c in failures(report) if c.name != "gpu.overall_result"]
    assert len(per_gpu) == 1
    assert (per_gpu[0].name, per_gpu[0].code, per_gpu[0].detail) == (name, code, detail)
    with pytest.raises(VerificationFailed):
        report.raise_for_failure()


def test_policy_may_waive_debug_and_measres() -> None:
    lenient = GpuPolicy(require_debug_disabled=False, require_measres_success=False)
    report = verify(attest(NrasFaults(debug_enabled=True, overall_result_false=False)), policy=lenient)
    # Only the simulated NRAS's own overall verdict remains false.
    assert {c.code for c in failures(report)} == {"gpu.overall_result_false"}


def test_driver_version_not_allowed_fails() -> None:
    policy = GpuPolicy(allowed_driver_versions=frozenset({"575.57.08"}))
    failed = only_failure(verify(attest(), policy=policy))
    assert failed.code == "gpu.driver_version_not_allowed"
    assert failed.detail == (
        'GPU-0 x-nvidia-gpu-driver-version "570.133.20" is not in the allowed set ' "['575.57.08']"
    )


def test_allowed_driver_and_vbios_versions_pass() -> None:
    policy = GpuPolicy(
        allowed_driver_versions=frozenset({SIMULATOR_DRIVER_VERSION}),
        allowed_vbios_versions=frozenset({SIMULATOR_VBIOS_VERSION}),
    )
    report = verify(attest(), policy=policy)
    assert report.ok
    assert {"gpu.driver_version", "gpu.vbios_version"} <= {c.name for c in report.gpus[0].checks}


def test_vbios_version_not_allowed_fails() -> None:
    policy = GpuPolicy(allowed_vbios_versions=frozenset({"96.00.CF.00.01"}))
    failed = only_failure(verify(attest(NrasFaults()), policy=policy))
    assert failed.code == "gpu.vbios_version_not_allowed"


# --- The provider's payload ---------------------------------------------------------------


def test_payload_nonce_matches() -> None:
    payload = SimulatedNras().make_nvidia_payload(NONCE)
    assert check_gpu_payload_nonce(payload, NONCE).ok
    assert check_gpu_payload_nonce(json.loads(payload), NONCE.upper()).ok
    parsed = json.loads(payload)
    assert parsed["arch"] == "HOPPER"
    evidence = json.loads(base64.b64decode(parsed["evidence_list"][0]["evidence"]))
    assert evidence["nonce"] == NONCE
    assert evidence["gpu_id"] == "GPU-0"


def test_payload_nonce_mismatch_fails() -> None:
    check = check_gpu_payload_nonce(SimulatedNras().make_nvidia_payload(OTHER_NONCE), NONCE)
    assert check.name == "gpu.payload_nonce"
    assert check.code == "gpu.nonce_mismatch"
    assert check.detail == (
        f"nvidia_payload nonce {OTHER_NONCE} is not the request nonce {NONCE}"
    )


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ("", "nvidia_payload is not JSON"),
        ("[1]", "nvidia_payload is not a JSON object"),
        ('{"nonce": 5}', "nvidia_payload has no string nonce"),
        ('{"nonce": "zz"}', "nvidia_payload nonce is not hex"),
        ('{"nonce": "abc"}', "nvidia_payload nonce is not hex"),
        ("{" * 100_000, "nvidia_payload is not JSON"),
        ('{"nonce": "' + "a" * (3 * 1024 * 1024) + '"}', "nvidia_payload is larger than 2097152 bytes"),
    ],
    ids=["empty", "list", "int_nonce", "non_hex", "odd_hex", "deep_nesting", "huge"],
)
def test_malformed_payload_fails(payload: str, detail: str) -> None:
    check = check_gpu_payload_nonce(payload, NONCE)
    assert (check.code, check.detail) == ("gpu.payload_malformed", detail)


def test_evidence_for_another_nonce_is_caught_by_nras() -> None:
    # A provider puts our nonce on top of GPU evidence made for another nonce.
    nras = SimulatedNras()
    payload = json.loads(nras.make_nvidia_payload(OTHER_NONCE))
    payload["nonce"] = NONCE
    report = verify(nras.attest(json.dumps(payload), NOW))
    assert {c.code for c in failures(report)} == {
        "gpu.overall_result_false",
        "gpu.report_nonce_mismatch",
    }


# --- Garbage never raises -----------------------------------------------------------------

_GOOD = attest()
_TOKEN = _GOOD[0][1]


@pytest.mark.parametrize(
    ("answer", "code", "detail"),
    [
        (b"", "gpu.nras_response_malformed", "NRAS answer is not JSON"),
        (b"\xff\xfe", "gpu.nras_response_malformed", "NRAS answer is not JSON"),
        (b"[" * 50_000, "gpu.nras_response_malformed", "NRAS answer is not JSON"),
        (b"{}", "gpu.nras_response_malformed", 'NRAS answer is not [["JWT", overall], {gpu: jwt}]'),
        ([], "gpu.nras_response_malformed", 'NRAS answer is not [["JWT", overall], {gpu: jwt}]'),
        (
            [["JWS", _TOKEN], {}],
            "gpu.nras_response_malformed",
            'NRAS answer does not start with ["JWT", "<overall token>"]',
        ),
        ([["JWT", 5], {}], "gpu.nras_response_malformed", 'NRAS answer does not start with ["JWT", "<overall token>"]'),
        ([["JWT", _TOKEN], []], "gpu.nras_response_malformed", "NRAS answer has no object of detached GPU tokens"),
        ([["JWT", _TOKEN], {}], "gpu.nras_response_malformed", "NRAS answer has no detached GPU token"),
        ([["JWT", _TOKEN], {"GPU-0": 7}], "gpu.nras_response_malformed", "detached token GPU-0 is not a string"),
        (
            [["JWT", _TOKEN], {"GPU-0\r\nX-Evil: 1": _TOKEN}],
            "gpu.nras_response_malformed",
            "detached token name 'GPU-0\\r\\nX-Evil: 1' is not GPU-<n>",
        ),
        (
            [["JWT", _TOKEN], {f"GPU-{i}": _TOKEN for i in range(MAX_GPU_TOKENS + 1)}],
            "gpu.nras_response_malformed",
            f"NRAS answer has {MAX_GPU_TOKENS + 1} detached tokens, more than {MAX_GPU_TOKENS}",
        ),
        (
            b" " * (MAX_NRAS_RESPONSE_BYTES + 1),
            "gpu.nras_response_malformed",
            f"NRAS answer is larger than {MAX_NRAS_RESPONSE_BYTES} bytes",
        ),
        ([["JWT", "a.b.c"], {"GPU-0": "a.b.c"}], "gpu.jwt_malformed", "overall token is not a JWT"),
        (
            [["JWT", "x" * (MAX_JWT_BYTES + 1)], {"GPU-0": _TOKEN}],
            "gpu.jwt_malformed",
            f"overall token is larger than {MAX_JWT_BYTES} bytes",
        ),
    ],
    ids=[
        "empty",
        "not_utf8",
        "deep_nesting",
        "object",
        "empty_list",
        "wrong_type_tag",
        "overall_not_string",
        "detached_not_object",
        "no_gpu",
        "gpu_token_not_string",
        "header_injection_gpu_id",
        "too_many_gpus",
        "too_large",
        "not_jwts",
        "jwt_too_large",
    ],
)
def test_garbage_nras_answer_fails_cleanly(answer: Any, code: str, detail: str) -> None:
    report = verify(answer)
    assert not report.ok
    first = failures(report)[0]
    assert (first.code, first.detail) == (code, detail)
    with pytest.raises(VerificationFailed):
        report.raise_for_failure()


def _jwk() -> dict[str, Any]:
    return dict(simulator_jwks()["keys"][0])


@pytest.mark.parametrize(
    ("jwks", "code", "detail"),
    [
        ([], "gpu.jwks_invalid", "JWKS is not a JSON object"),
        ({}, "gpu.jwks_invalid", "JWKS has no keys list"),
        ({"keys": [{}] * 33}, "gpu.jwks_invalid", "JWKS has 33 keys, more than 32"),
        ({"keys": []}, "gpu.jwt_unknown_kid", None),
        ({"keys": [{**_jwk(), "d": "AAAA"}]}, "gpu.jwt_verification_failed", "JWK contains private key material"),
        ({"keys": [{**_jwk(), "kty": "RSA"}]}, "gpu.jwt_verification_failed", "JWK kty is 'RSA', not EC"),
        ({"keys": [{**_jwk(), "alg": "ES256"}]}, "gpu.jwt_verification_failed", "JWK alg is 'ES256', not ES384"),
        ({"keys": [{**_jwk(), "x": "AAAA"}]}, "gpu.jwt_verification_failed", "JWK is not a usable EC key"),
        ({"keys": [_jwk(), _jwk()]}, "gpu.jwt_verification_failed", "appears more than once in the JWKS"),
        (
            {"keys": [{**_jwk(), "x5c": [base64.b64encode(b"not a cert").decode()]}]},
            "gpu.jwt_verification_failed",
            "JWK is not a usable EC key",
        ),
    ],
    ids=["list", "no_keys", "too_many", "empty", "private", "rsa", "es256", "bad_x", "duplicate", "bad_x5c"],
)
def test_bad_jwks_fails_cleanly(jwks: Any, code: str, detail: str | None) -> None:
    report = verify(attest(), jwks=jwks)
    assert not report.ok
    first = failures(report)[0]
    assert first.code == code
    if detail is not None:
        assert detail in first.detail


def test_jwk_with_p256_key_is_refused() -> None:
    p256 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    jwks = {"keys": [{**p256, "kid": _jwk()["kid"]}]}
    first = failures(verify(attest(), jwks=jwks))[0]
    assert "not P-384" in first.detail or "not a usable EC key" in first.detail


def test_jwk_whose_x5c_names_another_key_is_refused() -> None:
    jwk = {**_jwk(), "x5c": [_self_signed_der_b64(ec.generate_private_key(ec.SECP384R1()))]}
    first = failures(verify(attest(), jwks={"keys": [jwk]}))[0]
    assert "JWK x/y and x5c certificate name different keys" in first.detail


def test_boolean_lookalikes_do_not_pass() -> None:
    # "secboot": 1 and "x-nvidia-overall-att-result": "true" are not true.
    key = SimulatedNras().signing_key
    kid = _jwk()["kid"]
    good = attest()
    gpu_claims = jwt.decode(good[1]["GPU-0"], options={"verify_signature": False})
    gpu_claims["secboot"] = 1
    gpu_token = jwt.encode(gpu_claims, key, algorithm="ES384", headers={"kid": kid})
    overall = jwt.decode(good[0][1], options={"verify_signature": False})
    overall["x-nvidia-overall-att-result"] = "true"
    overall["submods"]["GPU-0"][1][1] = hashlib.sha256(gpu_token.encode()).hexdigest()
    overall_token = jwt.encode(overall, key, algorithm="ES384", headers={"kid": kid})
    report = verify([["JWT", overall_token], {"GPU-0": gpu_token}])
    assert {c.code for c in failures(report)} == {
        "gpu.overall_result_false",
        "gpu.secure_boot_disabled",
    }


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    answer=st.one_of(
        _json,
        st.binary(max_size=200),
        st.tuples(st.sampled_from(["JWT", "x"]), _json).map(lambda t: [list(t), {"GPU-0": _TOKEN}]),
        _json.map(lambda body: [["JWT", _TOKEN], body]),
        st.text(max_size=200).map(lambda t: [["JWT", t], {"GPU-0": t}]),
    ),
    jwks=st.one_of(_json, st.just(simulator_jwks())),
)
def test_fuzzed_inputs_never_raise(answer: Any, jwks: Any) -> None:
    report = verify_nras_result(
        answer,
        expected_nonce=NONCE,
        jwks=jwks,
        expected_issuer=SIMULATOR_NRAS_ISSUER,
        now=NOW,
        policy=GpuPolicy(),
    )
    assert not report.ok


@settings(max_examples=100, deadline=None)
@given(payload=st.one_of(st.text(max_size=100), _json.map(json.dumps)), nonce=st.text(max_size=70))
def test_fuzzed_payloads_never_raise(payload: str, nonce: str) -> None:
    assert isinstance(check_gpu_payload_nonce(payload, nonce), Check)


# --- helpers ------------------------------------------------------------------------------


def _check(checks: tuple[Check, ...], name: str) -> Check:
    matching = [check for check in checks if check.name == name]
    assert len(matching) == 1, (name, checks)
    return matching[0]


def _self_signed_der_b64(key: ec.EllipticCurvePrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "simulated NRAS signer")])
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA384())
    )
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


def _resign_overall(answer: list[Any], edit: Any) -> list[Any]:
    """Re-sign the overall token after ``edit(claims)`` under the trusted simulator key."""
    overall = jwt.decode(answer[0][1], options={"verify_signature": False})
    edit(overall)
    token = jwt.encode(
        overall, SimulatedNras().signing_key, algorithm="ES384", headers={"kid": _jwk()["kid"]}
    )
    return [["JWT", token], answer[1]]


@pytest.mark.parametrize("label", ["SHA-256", "SHA256"])
def test_submods_digest_labels_seen_in_the_wild_pass(label: str) -> None:
    # "SHA-256": a real NRAS answer; "SHA256": NVIDIA attestation SDK's own writer.
    def relabel(claims: dict[str, Any]) -> None:
        claims["submods"]["GPU-0"][1][0] = label

    assert verify(_resign_overall(attest(), relabel)).ok


@pytest.mark.parametrize(
    ("submods", "detail"),
    [
        ({"GPU-0": ["DIGEST", ["SHA-384", "00" * 32]]}, "submods entry GPU-0 uses digest algorithm 'SHA-384'"),
        ({"GPU-0": ["HASH", ["SHA-256", "00" * 32]]}, 'submods entry GPU-0 is not ["DIGEST", [algorithm, digest]]'),
        ({"GPU-0": ["DIGEST", ["SHA-256", "00"]]}, "submods entry GPU-0 digest is not 64 hex digits"),
        ({}, "overall token has no submods object"),
        ({"SWITCH-0": ["DIGEST", ["SHA-256", "00" * 32]]}, "submods entry 'SWITCH-0' is not GPU-<n>"),
    ],
    ids=["other_algorithm", "not_digest", "short_digest", "empty", "not_a_gpu"],
)
def test_malformed_submods_fail(submods: dict[str, Any], detail: str) -> None:
    def replace_submods(claims: dict[str, Any]) -> None:
        claims["submods"] = submods

    report = verify(_resign_overall(attest(), replace_submods))
    assert not report.ok
    failed = _check(report.checks, "gpu.submods")
    assert (failed.code, failed.detail) == ("gpu.submods_malformed", detail)
    unbound = _check(report.gpus[0].checks, "gpu.submod_digest")
    assert unbound.status is Status.INCOMPLETE
    assert unbound.detail == (
        "GPU-0: the overall token's submods are malformed, so nothing binds this token"
    )
    assert {c.code for c in failures(report)} == {
        "gpu.submods_malformed",
        "gpu.submod_digest_unverified",
    }


def test_raise_for_failure_ranks_failed_above_incomplete() -> None:
    undecided = Check.incomplete("gpu.submod_digest", "gpu.submod_digest_unverified", "GPU-0: why")
    bad = Check.failed("gpu.dbgstat", "gpu.debug_enabled", "GPU-0 dbgstat is on")
    passed = Check.passed("gpu.nras_response", "ok")

    only_undecided = GpuEvidenceReport((passed,), (GpuReport("GPU-0", (undecided,)),))
    with pytest.raises(VerificationIncomplete, match="gpu.submod_digest: GPU-0: why"):
        only_undecided.raise_for_failure()
    both = GpuEvidenceReport((passed,), (GpuReport("GPU-0", (undecided, bad)),))
    with pytest.raises(VerificationFailed, match="dbgstat is on") as raised:
        both.raise_for_failure()
    assert not isinstance(raised.value, VerificationIncomplete)
    with pytest.raises(VerificationFailed, match="named no GPU"):
        GpuEvidenceReport((passed,), ()).raise_for_failure()


# --- NRAS's per-step verdicts (report signature, RIMs, certificate chains) ---------------------


@pytest.mark.parametrize(
    ("faults", "name", "code", "detail"),
    [
        (NrasFaults(rim_signature_unverified=True), "gpu.integrity_claims",
         "gpu.integrity_claim_failed",
         "GPU-0: NRAS did not confirm x-nvidia-gpu-driver-rim-signature-verified=false"),
        (NrasFaults(cert_revoked=True), "gpu.cert_chains", "gpu.cert_chain_invalid",
         "GPU-0: attestation report certificate revoked/OCSP revoked"),
        (NrasFaults(attestation_warning="RIM expired"), "gpu.attestation_warning",
         "gpu.attestation_warning", 'GPU-0: NRAS warns "RIM expired"'),
    ],
    ids=["rim_signature_unverified", "cert_revoked", "attestation_warning"],
)
def test_nras_step_verdicts_each_fail_on_their_own(faults: NrasFaults, name: str, code: str,
                                                   detail: str) -> None:
    failed = only_failure(verify(attest(faults)))
    assert (failed.name, failed.code, failed.detail) == (name, code, detail)
    # A policy that waives them accepts the same answer.
    assert verify(attest(faults), policy=GpuPolicy(require_integrity_claims=False)).ok


def _resign(answer: list[Any], edit: Any) -> list[Any]:
    """Re-issue an answer with edited GPU claims, signed by the simulator's key (a genuine NRAS
    of another version), with the overall token's submods recomputed."""
    nras = SimulatedNras()
    overall = jwt.decode(answer[0][1], options={"verify_signature": False})
    detached = {}
    for gpu_id, token in answer[1].items():
        claims = jwt.decode(token, options={"verify_signature": False})
        edit(claims)
        detached[gpu_id] = nras._sign(claims)
    overall["submods"] = {gpu_id: ["DIGEST", ["SHA-256", hashlib.sha256(t.encode()).hexdigest()]]
                          for gpu_id, t in detached.items()}
    return [["JWT", nras._sign(overall)], detached]


def test_older_nras_boolean_cert_claims_are_accepted() -> None:
    def older(claims: dict[str, Any]) -> None:
        for _, chain, flag in (("r", "x-nvidia-gpu-attestation-report-cert-chain",
                                "x-nvidia-gpu-attestation-report-cert-chain-validated"),
                               ("d", "x-nvidia-gpu-driver-rim-cert-chain",
                                "x-nvidia-gpu-driver-rim-cert-validated"),
                               ("v", "x-nvidia-gpu-vbios-rim-cert-chain",
                                "x-nvidia-gpu-vbios-rim-cert-validated")):
            del claims[chain]
            claims[flag] = True

    assert verify(_resign(attest(), older)).ok


def test_a_missing_integrity_flag_fails() -> None:
    def drop(claims: dict[str, Any]) -> None:
        del claims["x-nvidia-gpu-vbios-rim-measurements-available"]

    failed = only_failure(verify(_resign(attest(), drop)))
    assert failed.code == "gpu.integrity_claim_failed"
    assert "x-nvidia-gpu-vbios-rim-measurements-available=null" in failed.detail


# --- The report as a user reads it: every check's name, status, code and detail -----------------
# These pin the report itself (the exact checks of a good answer, the edges of every bound, the
# JWKS entries refused and why, the clock claims, the submods shapes), so that a check that
# stops checking, or a detail that stops saying what was wrong, fails a test. Answers are the
# simulator's, re-signed under its trusted key after an edit where a test needs claims the
# simulator does not make.

EXP = NOW + 3600  # the simulator's tokens live an hour
Claims = dict[str, Any]
Edit = Callable[[Claims], None]
KID = simulator_jwks()["keys"][0]["kid"]


def sign(claims: Claims, headers: dict[str, Any] | None = None) -> str:
    """ES384 under the simulator's trusted key (what a genuine NRAS of another version signs)."""
    return jwt.encode(
        claims, SimulatedNras().signing_key, algorithm="ES384", headers=headers or {"kid": KID}
    )


def unverified(token: str) -> Claims:
    claims: Claims = jwt.decode(token, options={"verify_signature": False})
    return claims


def rebuild(
    answer: list[Any], *, gpu: Edit | None = None, overall: Edit | None = None
) -> list[Any]:
    """Re-sign ``answer`` after editing every GPU's claims, then the overall claims; submods are
    recomputed over the new GPU tokens before ``overall`` runs (so it may break them)."""
    detached = {}
    for gpu_id, token in answer[1].items():
        claims = unverified(token)
        if gpu is not None:
            gpu(claims)
        detached[gpu_id] = sign(claims)
    claims = unverified(answer[0][1])
    claims["submods"] = {
        gpu_id: ["DIGEST", ["SHA-256", hashlib.sha256(token.encode()).hexdigest()]]
        for gpu_id, token in detached.items()
    }
    if overall is not None:
        overall(claims)
    return [["JWT", sign(claims)], detached]


def _rows(checks: Any) -> list[tuple[str, Status, str | None, str]]:
    return [(c.name, c.status, c.code, c.detail) for c in checks]


def _not_passed_rows(report: GpuEvidenceReport) -> list[tuple[str, Status, str | None, str]]:
    return _rows(report.failures)


PASS = Status.PASS
FAIL = Status.FAIL
INCOMPLETE = Status.INCOMPLETE


# --- A good answer, as the report reads ----------------------------------------------------------


def _gpu_rows(gpu_id: str) -> list[tuple[str, Status, str | None, str]]:
    return [
        ("gpu.submod_digest", PASS, None, f"sha256 of the {gpu_id} token matches the overall submods"),
        ("gpu.token.signature", PASS, None,
         f"{gpu_id} token ES384 signature verifies under kid {KID!r}"),
        ("gpu.token.issuer", PASS, None, f"{gpu_id} token issuer is {SIMULATOR_NRAS_ISSUER}"),
        ("gpu.token.validity", PASS, None, f"{gpu_id} token is valid until {EXP}"),
        ("gpu.token.eat_nonce", PASS, None, f"{gpu_id} token eat_nonce equals the request nonce"),
        ("gpu.report_nonce_match", PASS, None,
         f"{gpu_id} x-nvidia-gpu-attestation-report-nonce-match is true"),
        ("gpu.measres", PASS, None, f'{gpu_id} measres is "success"'),
        ("gpu.secboot", PASS, None, f"{gpu_id} secboot is true"),
        ("gpu.dbgstat", PASS, None, f'{gpu_id} dbgstat is "disabled"'),
        ("gpu.integrity_claims", PASS, None,
         f"{gpu_id}: report signature, RIMs and measurements confirmed by NRAS"),
        ("gpu.cert_chains", PASS, None, f"{gpu_id}: report and RIM certificate chains valid"),
        ("gpu.attestation_warning", PASS, None, f"{gpu_id}: NRAS raised no warning"),
        ("gpu.driver_version", PASS, None,
         f"{gpu_id} x-nvidia-gpu-driver-version {SIMULATOR_DRIVER_VERSION} is allowed"),
        ("gpu.vbios_version", PASS, None,
         f"{gpu_id} x-nvidia-gpu-vbios-version {SIMULATOR_VBIOS_VERSION} is allowed"),
    ]


def test_a_good_answer_reports_every_check_with_its_detail() -> None:
    policy = GpuPolicy(
        allowed_driver_versions=frozenset({SIMULATOR_DRIVER_VERSION}),
        allowed_vbios_versions=frozenset({SIMULATOR_VBIOS_VERSION}),
    )
    report = verify(attest(gpu_count=2), policy=policy)
    assert _rows(report.checks) == [
        ("gpu.nras_response", PASS, None, "overall token and 2 GPU token(s)"),
        ("gpu.overall.signature", PASS, None,
         f"overall token ES384 signature verifies under kid {KID!r}"),
        ("gpu.overall.issuer", PASS, None, f"overall token issuer is {SIMULATOR_NRAS_ISSUER}"),
        ("gpu.overall.validity", PASS, None, f"overall token is valid until {EXP}"),
        ("gpu.overall.eat_nonce", PASS, None, "overall token eat_nonce equals the request nonce"),
        ("gpu.overall_result", PASS, None, "x-nvidia-overall-att-result is true"),
        ("gpu.submods", PASS, None, "submods name exactly GPU-0, GPU-1"),
    ]
    assert [gpu.gpu_id for gpu in report.gpus] == ["GPU-0", "GPU-1"]
    assert _rows(report.gpus[0].checks) == _gpu_rows("GPU-0")
    assert _rows(report.gpus[1].checks) == _gpu_rows("GPU-1")
    assert list(report.all_checks()) == [*report.checks, *report.gpus[0].checks,
                                         *report.gpus[1].checks]
    assert report.ok and report.failures == () and not report.unknown_kids
    assert dict(report.gpus[1].claims) == {
        "measres": "success",
        "secboot": True,
        "dbgstat": "disabled",
        "x-nvidia-gpu-attestation-report-nonce-match": True,
        "x-nvidia-gpu-driver-version": SIMULATOR_DRIVER_VERSION,
        "x-nvidia-gpu-vbios-version": SIMULATOR_VBIOS_VERSION,
        "hwmodel": "GH100 A01 GSP BROM",
        "ueid": str(10**40 + 1),
        "oemid": "5703",
        "x-nvidia-gpu-arch-check": True,
    }


def test_a_policy_that_waives_a_claim_runs_no_check_for_it() -> None:
    lenient = GpuPolicy(require_measres_success=False, require_secure_boot=False,
                        require_debug_disabled=False, require_integrity_claims=False)
    (gpu,) = verify(attest(), policy=lenient).gpus
    assert [c.name for c in gpu.checks] == [
        "gpu.submod_digest", "gpu.token.signature", "gpu.token.issuer", "gpu.token.validity",
        "gpu.token.eat_nonce", "gpu.report_nonce_match",
    ]
    # The report-nonce match has no knob: NRAS must have seen our nonce in the SPDM report.
    report = verify(attest(NrasFaults(report_nonce_mismatch=True)), policy=lenient)
    assert _check(report.gpus[0].checks, "gpu.report_nonce_match").code == (
        "gpu.report_nonce_mismatch"
    )


# --- The report's own verdict --------------------------------------------------------------------


def test_a_report_is_ok_only_with_a_gpu_and_every_check_passed() -> None:
    passed = Check.passed("gpu.nras_response", "fine")
    failed = Check.failed("gpu.dbgstat", "gpu.debug_enabled", "GPU-0 dbgstat is on")
    good_gpu = GpuReport("GPU-0", (passed,))
    bad_gpu = GpuReport("GPU-1", (failed,))
    assert GpuEvidenceReport((passed,), (good_gpu,)).ok
    assert not GpuEvidenceReport((passed,), ()).ok
    assert not GpuEvidenceReport((passed,), (good_gpu, bad_gpu)).ok
    assert not GpuEvidenceReport((failed,), (good_gpu,)).ok
    report = GpuEvidenceReport((passed,), (good_gpu, bad_gpu))
    assert report.failures == (failed,)
    with pytest.raises(VerificationFailed) as raised:
        report.raise_for_failure()
    assert raised.value.message == "gpu.dbgstat: GPU-0 dbgstat is on"
    assert raised.value.code == "gpu.debug_enabled"


def test_an_answer_naming_no_gpu_raises_its_own_message() -> None:
    report = GpuEvidenceReport((Check.passed("gpu.nras_response", "fine"),), ())
    assert report.failure_message(None) == "NRAS answer named no GPU"
    with pytest.raises(VerificationFailed) as raised:
        report.raise_for_failure()
    assert raised.value.message == "NRAS answer named no GPU"
    assert raised.value.code == "gpu.nras_response_malformed"


def test_an_unknown_kid_on_a_gpu_token_alone_asks_for_a_refresh() -> None:
    good = attest()
    gpu_token = sign(unverified(good[1]["GPU-0"]), {"kid": "rotated-kid"})
    overall = unverified(good[0][1])
    overall["submods"]["GPU-0"][1][1] = hashlib.sha256(gpu_token.encode()).hexdigest()
    report = verify([["JWT", sign(overall)], {"GPU-0": gpu_token}])
    assert _not_passed_rows(report) == [
        ("gpu.token.signature", FAIL, "gpu.jwt_unknown_kid",
         "GPU-0 token kid 'rotated-kid' is not in the NRAS JWKS")
    ]
    assert report.unknown_kids


# --- The provider's nvidia_payload ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code", "detail"),
    [
        ("[1]", "gpu.payload_malformed", "nvidia_payload is not a JSON object"),
        ("{", "gpu.payload_malformed", "nvidia_payload is not JSON"),
        (" " * (MAX_NVIDIA_PAYLOAD_BYTES + 1), "gpu.payload_malformed",
         f"nvidia_payload is larger than {MAX_NVIDIA_PAYLOAD_BYTES} bytes"),
        ('{"nonce": 1}', "gpu.payload_malformed", "nvidia_payload has no string nonce"),
        ('{"nonce": "zz"}', "gpu.payload_malformed", "nvidia_payload nonce is not hex"),
        (json.dumps({"nonce": "ab" * 50}), "gpu.nonce_mismatch",
         f"nvidia_payload nonce {'ab' * 40}… is not the request nonce {NONCE}"),
        (json.dumps({"nonce": "ab" * 40}), "gpu.nonce_mismatch",
         f"nvidia_payload nonce {'ab' * 40} is not the request nonce {NONCE}"),
    ],
    ids=["list", "not_json", "too_large", "int_nonce", "non_hex", "long_nonce", "80_digits"],
)
def test_every_payload_failure_is_the_payload_nonce_check(payload: str, code: str,
                                                          detail: str) -> None:
    assert _rows([check_gpu_payload_nonce(payload, NONCE)]) == [
        ("gpu.payload_nonce", FAIL, code, detail)
    ]


def test_a_request_nonce_that_is_not_hex_matches_nothing() -> None:
    payload = json.dumps({"nonce": "zz"})
    assert _rows([check_gpu_payload_nonce(payload, "zz")]) == [
        ("gpu.payload_nonce", FAIL, "gpu.nonce_mismatch", "the request nonce is not hex")
    ]


def test_a_payload_of_exactly_the_size_bound_is_read() -> None:
    payload = json.dumps({"nonce": NONCE})
    payload += " " * (MAX_NVIDIA_PAYLOAD_BYTES - len(payload))
    assert _rows([check_gpu_payload_nonce(payload, NONCE)]) == [
        ("gpu.payload_nonce", PASS, None, "nvidia_payload nonce equals the request nonce")
    ]


# --- token_kids (the JWKS refresh hint) ----------------------------------------------------------


def test_token_kids_skips_unreadable_tokens_and_tokens_without_a_kid() -> None:
    good = attest(gpu_count=2)
    no_kid = sign(unverified(good[1]["GPU-1"]), {"typ": "JWT"})
    rotated = sign(unverified(good[1]["GPU-0"]), {"kid": "rotated"})
    answer = [["JWT", "not.a.jwt"], {"GPU-0": rotated, "GPU-1": no_kid}]
    assert token_kids(answer) == {"rotated"}
    assert token_kids(json.dumps(answer).encode()) == {"rotated"}


# --- Bounds, at the bound and one past it --------------------------------------------------------


def test_an_answer_of_exactly_the_size_bound_is_read() -> None:
    raw = json.dumps(attest()).encode()
    assert verify(raw + b" " * (MAX_NRAS_RESPONSE_BYTES - len(raw))).ok
    assert verify(bytearray(raw)).ok
    assert verify(memoryview(raw)).ok


def test_the_largest_gpu_count_is_accepted() -> None:
    report = verify(attest(gpu_count=MAX_GPU_TOKENS))
    assert report.ok
    assert len(report.gpus) == MAX_GPU_TOKENS


def test_submods_naming_more_gpus_than_the_bound_are_malformed() -> None:
    def many(claims: Claims) -> None:
        entry = claims["submods"]["GPU-0"]
        claims["submods"] = {f"GPU-{i}": entry for i in range(MAX_GPU_TOKENS + 1)}

    report = verify(rebuild(attest(), overall=many))
    assert _check(report.checks, "gpu.submods").detail == (
        f"submods names {MAX_GPU_TOKENS + 1} entries, more than {MAX_GPU_TOKENS}"
    )


def test_a_jwks_of_exactly_the_key_bound_is_used() -> None:
    filler = [{"kid": f"other-{i}", "kty": "RSA"} for i in range(MAX_JWKS_KEYS - 1)]
    assert verify(attest(), jwks={"keys": [*filler, *simulator_jwks()["keys"]]}).ok


def _token_of_length(length: int) -> str:
    """An overall token of exactly ``length`` characters: a filler claim sized by arithmetic
    (base64url writes 4 characters per 3 bytes, so a few paddings and header sizes are tried)."""
    base = unverified(attest()[0][1])
    for extra in range(4):
        headers = {"kid": KID, "x": "y" * extra}
        empty = len(sign({**base, "pad": ""}, headers))
        estimate = (length - empty) * 3 // 4
        for pad in range(max(estimate - 3, 0), estimate + 4):
            token = sign({**base, "pad": "x" * pad}, headers)
            if len(token) == length:
                return token
    raise AssertionError(f"no token of {length} characters")


def test_a_token_of_exactly_the_size_bound_is_verified() -> None:
    token = _token_of_length(MAX_JWT_BYTES)
    report = verify([["JWT", token], attest()[1]])
    assert _check(report.checks, "gpu.overall.signature").ok
    longer = _token_of_length(MAX_JWT_BYTES + 1)
    report = verify([["JWT", longer], attest()[1]])
    assert _rows(report.failures)[0] == (
        "gpu.overall.signature", FAIL, "gpu.jwt_malformed",
        f"overall token is larger than {MAX_JWT_BYTES} bytes",
    )


# --- Shape of the answer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        ([["JWT", "t", "extra"], {"GPU-0": "t"}],
         'NRAS answer does not start with ["JWT", "<overall token>"]'),
        ([["JWT", "t"], {"GPU-0": "t"}, {}], 'NRAS answer is not [["JWT", overall], {gpu: jwt}]'),
        ([["JWT", "t"], {0: "t"}], "detached token name '0' is not GPU-<n>"),
        ([["JWT", "t"], {"GPU-12345": "t"}], "detached token name 'GPU-12345' is not GPU-<n>"),
        ([["JWT", "t"], {"GPU-0": "t", "x" * 100: "t"}],
         f"detached token name '{'x' * 80}…' is not GPU-<n>"),
    ],
    ids=["head_of_three", "three_parts", "int_name", "five_digits", "long_name"],
)
def test_malformed_answers_say_what_is_wrong(answer: Any, detail: str) -> None:
    report = verify(answer)
    assert _not_passed_rows(report) == [
        ("gpu.nras_response", FAIL, "gpu.nras_response_malformed", detail)
    ]
    assert report.gpus == ()


# --- The JWKS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "detail"),
    [
        ([], "JWKS is not a JSON object"),
        ({"keys": {}}, "JWKS has no keys list"),
        ({"keys": [{}] * (MAX_JWKS_KEYS + 1)},
         f"JWKS has {MAX_JWKS_KEYS + 1} keys, more than {MAX_JWKS_KEYS}"),
    ],
    ids=["list", "keys_not_a_list", "too_many"],
)
def test_a_jwks_that_is_not_a_key_set_is_the_jwks_check(keys: Any, detail: str) -> None:
    report = verify(attest(), jwks=keys)
    assert _rows(report.checks) == [
        ("gpu.nras_response", PASS, None, "overall token and 1 GPU token(s)"),
        ("gpu.jwks", FAIL, "gpu.jwks_invalid", detail),
    ]
    assert report.gpus == ()


def _signature_failure(keys: Any) -> tuple[str, Status, str | None, str]:
    report = verify(attest(), jwks=keys)
    return _rows([_check(report.checks, "gpu.overall.signature")])[0]


def _unusable(why: str) -> tuple[str, Status, str | None, str]:
    return ("gpu.overall.signature", FAIL, "gpu.jwt_verification_failed",
            f"overall token kid {KID!r} is unusable: {why}")


@pytest.mark.parametrize(
    ("jwk", "why"),
    [
        ({**_jwk(), "d": "AAAA"}, "JWK contains private key material"),
        ({**_jwk(), "kty": "OKP"}, "JWK kty is 'OKP', not EC"),
        ({**_jwk(), "alg": "ES256"}, "JWK alg is 'ES256', not ES384"),
        ({**_jwk(), "use": "enc"}, "JWK use is 'enc', not sig"),
        ({**_jwk(), "x5c": "MIIB"}, "JWK x5c is not a list of base64 certificates"),
        ({**_jwk(), "x5c": []}, "JWK x5c is not a list of base64 certificates"),
        ({**_jwk(), "x5c": [7]}, "JWK x5c is not a list of base64 certificates"),
        # Strict base64: "AAAA*" is refused, not read as "AAAA" with the "*" dropped.
        ({**_jwk(), "x5c": ["AAAA*"]}, "JWK is not a usable EC key (Error)"),
        ({k: v for k, v in _jwk().items() if k != "y"}, "JWK is not a usable EC key (InvalidKeyError)"),
        ({k: v for k, v in _jwk().items() if k != "x"}, "JWK is not a usable EC key (InvalidKeyError)"),
        ({k: v for k, v in _jwk().items() if k not in ("x", "y")}, "JWK holds no EC public key"),
        ({**_jwk(), "x5c": [_self_signed_der_b64(ec.generate_private_key(ec.SECP384R1()))]},
         "JWK x/y and x5c certificate name different keys"),
    ],
    ids=["private", "okp", "es256", "enc", "x5c_string", "x5c_empty", "x5c_int", "x5c_not_b64",
         "no_y", "no_x", "no_key", "x5c_other_key"],
)
def test_an_unusable_jwk_is_refused_with_its_reason(jwk: dict[str, Any], why: str) -> None:
    assert _signature_failure({"keys": [jwk]}) == _unusable(why)


def test_a_jwk_without_alg_or_use_is_accepted() -> None:
    bare = {k: v for k, v in _jwk().items() if k not in ("alg", "use")}
    assert verify(attest(), jwks={"keys": [bare]}).ok


def test_a_p256_jwk_is_refused_for_its_curve() -> None:
    p256 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    assert _signature_failure({"keys": [{**p256, "kid": KID}]}) == _unusable(
        "JWK curve is secp256r1, not P-384 (ES384)"
    )


def test_a_kid_listed_twice_is_ambiguous_even_when_a_bad_entry_is_skipped() -> None:
    keys = {"keys": ["not an object", {"kid": 5}, _jwk(), _jwk()]}
    assert _signature_failure(keys) == _unusable(f"kid {KID!r} appears more than once in the JWKS")
    # Entries without a string kid are skipped, not fatal: the good key still verifies.
    assert verify(attest(), jwks={"keys": ["not an object", {"kid": 5}, _jwk()]}).ok
    # A duplicated kid poisons only itself: the keys after it are still loaded.
    other = {**_jwk(), "kid": "rotated-out"}
    assert verify(attest(), jwks={"keys": [other, other, _jwk()]}).ok


def test_only_the_injected_clock_and_our_own_claim_checks_decide() -> None:
    # PyJWT's own claim checks stay off: it would read the wall clock (tokens issued in 2099
    # verify at an injected 2099 "now") and refuse claims NRAS may add (aud, or a non-string
    # sub or jti) that this module does not rely on.
    later = 4_100_000_000
    nras = SimulatedNras()
    answer = nras.attest(nras.make_nvidia_payload(NONCE), later)

    def extra(claims: Claims) -> None:
        claims.update(aud="someone", sub=5, jti=5)

    report = verify(rebuild(answer, overall=extra), now=later)
    assert report.ok, _not_passed_rows(report)


# --- Token signatures ----------------------------------------------------------------------------


def test_tokens_that_are_not_jwts_fail_their_signature_checks() -> None:
    report = verify([["JWT", "a.b.c"], {"GPU-0": "a.b.c"}])
    assert _not_passed_rows(report) == [
        ("gpu.overall.signature", FAIL, "gpu.jwt_malformed", "overall token is not a JWT"),
        ("gpu.submod_digest", INCOMPLETE, "gpu.submod_digest_unverified",
         "GPU-0: the overall token did not verify, so nothing binds this token to it"),
        ("gpu.token.signature", FAIL, "gpu.jwt_malformed", "GPU-0 token is not a JWT"),
    ]


def test_a_token_without_a_kid_is_refused() -> None:
    good = attest()
    token = sign(unverified(good[0][1]), {"typ": "JWT"})
    report = verify([["JWT", token], good[1]])
    assert _rows([_check(report.checks, "gpu.overall.signature")]) == [
        ("gpu.overall.signature", FAIL, "gpu.jwt_verification_failed", "overall token has no kid")
    ]


def test_a_signed_token_whose_payload_is_not_json_is_malformed() -> None:
    token = jwt.api_jws.encode(b"not json", SimulatedNras().signing_key, algorithm="ES384",
                               headers={"kid": KID})
    report = verify([["JWT", token], attest()[1]])
    assert _rows([_check(report.checks, "gpu.overall.signature")]) == [
        ("gpu.overall.signature", FAIL, "gpu.jwt_malformed",
         "overall token is not a valid JWT (DecodeError)")
    ]


def test_a_long_hostile_alg_and_kid_are_shortened_in_details() -> None:
    good = attest()
    alg_token = good[0][1].replace(good[0][1].split(".")[0], jwt.utils.base64url_encode(
        json.dumps({"alg": "A" * 100, "kid": KID}).encode()).decode(), 1)
    report = verify([["JWT", alg_token], good[1]])
    assert _check(report.checks, "gpu.overall.signature").detail == (
        f"overall token alg {'A' * 80 + '…'!r} is not allowed (only ES384)"
    )
    kid = "k" * 81
    report = verify([["JWT", sign(unverified(good[0][1]), {"kid": kid})], good[1]])
    assert _rows([_check(report.checks, "gpu.overall.signature")]) == [
        ("gpu.overall.signature", FAIL, "gpu.jwt_unknown_kid",
         f"overall token kid {'k' * 80 + '…'!r} is not in the NRAS JWKS")
    ]


def test_an_overall_token_that_does_not_verify_binds_nothing() -> None:
    report = verify(attest(NrasFaults(sign_with_other_key=True)))
    assert [c.name for c in report.checks] == ["gpu.nras_response", "gpu.overall.signature"]
    assert [(gpu.gpu_id, dict(gpu.claims)) for gpu in report.gpus] == [("GPU-0", {})]
    assert _rows([_check(report.gpus[0].checks, "gpu.submod_digest")]) == [
        ("gpu.submod_digest", INCOMPLETE, "gpu.submod_digest_unverified",
         "GPU-0: the overall token did not verify, so nothing binds this token to it")
    ]


# --- Issuer, clock and nonce claims --------------------------------------------------------------


def _overall_validity(edit: Edit, now: int = NOW) -> tuple[str, Status, str | None, str]:
    report = verify(rebuild(attest(), overall=edit), now=now)
    return _rows([_check(report.checks, "gpu.overall.validity")])[0]


@pytest.mark.parametrize(
    ("edit", "claim"),
    [
        (lambda c: c.pop("exp"), "exp"),
        (lambda c: c.pop("iat"), "iat"),
        (lambda c: c.update(exp=True), "exp"),
        (lambda c: c.update(iat="1750000000"), "iat"),
        (lambda c: c.update(nbf=[1]), "nbf"),
    ],
    ids=["no_exp", "no_iat", "exp_true", "iat_string", "nbf_list"],
)
def test_a_missing_or_non_numeric_time_claim_is_malformed(edit: Edit, claim: str) -> None:
    assert _overall_validity(edit) == (
        "gpu.overall.validity", FAIL, "gpu.jwt_malformed",
        f"overall token {claim} is missing or not a number",
    )


def test_nbf_may_be_absent_and_times_may_be_fractional() -> None:
    def older(claims: Claims) -> None:
        del claims["nbf"]
        claims["exp"] = EXP + 0.9

    assert _overall_validity(older) == (
        "gpu.overall.validity", PASS, None, f"overall token is valid until {EXP}"
    )


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_future_nbf_or_iat_fails_past_the_leeway(claim: str) -> None:
    edge = NOW + CLOCK_LEEWAY_SECONDS

    def at(when: int) -> Edit:
        return lambda claims: claims.update({claim: when})

    assert _overall_validity(at(edge))[1] is PASS
    assert _overall_validity(at(edge + 1)) == (
        "gpu.overall.validity", FAIL, "gpu.jwt_not_yet_valid",
        f"overall token {claim} {edge + 1} is in the future (now {NOW})",
    )


def test_issuer_and_nonce_details_show_what_the_token_said() -> None:
    def hostile(claims: Claims) -> None:
        claims["iss"] = "https://" + "e" * 100
        claims["eat_nonce"] = 42

    report = verify(rebuild(attest(), overall=hostile))
    assert _not_passed_rows(report) == [
        ("gpu.overall.issuer", FAIL, "gpu.jwt_issuer_mismatch",
         f"overall token issuer {('https://' + 'e' * 72 + '…')!r} is not {SIMULATOR_NRAS_ISSUER!r}"),
        ("gpu.overall.eat_nonce", FAIL, "gpu.eat_nonce_mismatch",
         f"overall token eat_nonce 42 is not the request nonce {NONCE}"),
    ]


def test_a_non_hex_request_nonce_matches_no_eat_nonce() -> None:
    report = verify_nras_result(attest(), expected_nonce="not hex", jwks=simulator_jwks(),
                                expected_issuer=SIMULATOR_NRAS_ISSUER, now=NOW,
                                policy=GpuPolicy())
    assert {c.code for c in report.failures} == {"gpu.eat_nonce_mismatch"}


# --- The overall result and the submods binding --------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), [(None, "null"), (1, "1"), ("true", '"true"')])
def test_an_overall_result_other_than_true_fails(value: Any, shown: str) -> None:
    def edit(claims: Claims) -> None:
        if value is None:
            del claims["x-nvidia-overall-att-result"]
        else:
            claims["x-nvidia-overall-att-result"] = value

    assert _not_passed_rows(verify(rebuild(attest(), overall=edit))) == [
        ("gpu.overall_result", FAIL, "gpu.overall_result_false",
         f"x-nvidia-overall-att-result is {shown}, not true")
    ]


def test_missing_and_extra_gpus_are_all_named() -> None:
    def misname(claims: Claims) -> None:
        entry = claims["submods"]["GPU-0"]
        claims["submods"] = {"GPU-0": entry, "GPU-3": entry, "GPU-4": entry}

    answer = rebuild(attest(gpu_count=3), overall=misname)
    report = verify(answer)
    assert _rows([_check(report.checks, "gpu.submods")]) == [
        ("gpu.submods", FAIL, "gpu.submods_mismatch",
         "no detached token for GPU-3, GPU-4; detached token(s) GPU-1, GPU-2 not in submods")
    ]


def test_an_upper_case_submods_digest_matches() -> None:
    def upper(claims: Claims) -> None:
        label, digest = claims["submods"]["GPU-0"][1]
        claims["submods"]["GPU-0"][1] = [label, digest.upper()]

    assert verify(rebuild(attest(), overall=upper)).ok


def test_a_submods_digest_mismatch_shows_both_prefixes() -> None:
    def other(claims: Claims) -> None:
        claims["submods"]["GPU-0"][1][1] = "ab" * 32

    answer = rebuild(attest(), overall=other)
    actual = hashlib.sha256(answer[1]["GPU-0"].encode()).hexdigest()
    assert _not_passed_rows(verify(answer)) == [
        ("gpu.submod_digest", FAIL, "gpu.submod_digest_mismatch",
         f"sha256 of the GPU-0 token is {actual[:16]}…, overall submods say {'ab' * 8}…")
    ]


@pytest.mark.parametrize(
    ("submods", "detail"),
    [
        ([["DIGEST", ["SHA-256", "00" * 32]]], "overall token has no submods object"),
        (None, "overall token has no submods object"),
        ({"GPU-0": ["DIGEST", ["SHA-256", "00" * 32], "x"]},
         'submods entry GPU-0 is not ["DIGEST", [algorithm, digest]]'),
        ({"GPU-0": ("DIGEST",)}, 'submods entry GPU-0 is not ["DIGEST", [algorithm, digest]]'),
        ({"GPU-0": ["DIGEST", "SHA-256"]}, 'submods entry GPU-0 is not ["DIGEST", [algorithm, digest]]'),
        ({"GPU-0": ["DIGEST", ["SHA-256", "00" * 32, "x"]]},
         'submods entry GPU-0 is not ["DIGEST", [algorithm, digest]]'),
        ({"GPU-0": ["DIGEST", ["SHA-256", 0]]}, "submods entry GPU-0 digest is not 64 hex digits"),
        ({"GPU-0": ["DIGEST", ["S" * 100, "00" * 32]]},
         f"submods entry GPU-0 uses digest algorithm {'S' * 80 + '…'!r}"),
    ],
    ids=["list", "null", "three_parts", "one_part", "not_a_pair", "triple", "int_digest",
         "long_label"],
)
def test_malformed_submods_say_what_is_wrong(submods: Any, detail: str) -> None:
    def replace(claims: Claims) -> None:
        claims["submods"] = submods

    report = verify(rebuild(attest(), overall=replace))
    assert _rows([_check(report.checks, "gpu.submods")]) == [
        ("gpu.submods", FAIL, "gpu.submods_malformed", detail)
    ]


# --- Per-GPU claims ------------------------------------------------------------------------------


def _gpu_failures(edit: Edit, policy: GpuPolicy | None = None) -> list[Any]:
    report = verify(rebuild(attest(), gpu=edit), policy=policy)
    return [row for row in _not_passed_rows(report) if row[0] != "gpu.overall_result"]


def test_every_unconfirmed_integrity_flag_is_named() -> None:
    def edit(claims: Claims) -> None:
        claims["x-nvidia-gpu-attestation-report-parsed"] = False
        claims["x-nvidia-gpu-vbios-index-no-conflict"] = "a very long hostile string value"
        del claims["x-nvidia-gpu-arch-check"]

    assert _gpu_failures(edit) == [
        ("gpu.integrity_claims", FAIL, "gpu.integrity_claim_failed",
         "GPU-0: NRAS did not confirm x-nvidia-gpu-attestation-report-parsed=false, "
         "x-nvidia-gpu-arch-check=null, "
         'x-nvidia-gpu-vbios-index-no-conflict="a very long hostile…')
    ]


def test_every_bad_certificate_chain_is_named() -> None:
    def edit(claims: Claims) -> None:
        claims["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-ocsp-status"] = "revoked"
        claims["x-nvidia-gpu-driver-rim-cert-chain"]["x-nvidia-cert-status"] = "expired"
        del claims["x-nvidia-gpu-vbios-rim-cert-chain"]
        claims["x-nvidia-gpu-vbios-rim-cert-validated"] = 1

    assert _gpu_failures(edit) == [
        ("gpu.cert_chains", FAIL, "gpu.cert_chain_invalid",
         "GPU-0: attestation report certificate valid/OCSP revoked; "
         "driver RIM certificate expired/OCSP good; VBIOS RIM certificate chain not validated")
    ]


def test_a_long_nras_warning_is_shortened() -> None:
    def edit(claims: Claims) -> None:
        claims["x-nvidia-attestation-warning"] = {"w": "x" * 200}

    (row,) = _gpu_failures(edit)
    assert row == ("gpu.attestation_warning", FAIL, "gpu.attestation_warning",
                   'GPU-0: NRAS warns {"w": "' + "x" * 73 + "…")


def test_claims_are_compared_by_value_and_shown_as_json() -> None:
    def edit(claims: Claims) -> None:
        claims["measres"] = None
        claims["dbgstat"] = "disabled "
        claims["secboot"] = "true"

    assert _gpu_failures(edit) == [
        ("gpu.measres", FAIL, "gpu.measres_failed", "GPU-0 measres is null, policy needs \"success\""),
        ("gpu.secboot", FAIL, "gpu.secure_boot_disabled",
         'GPU-0 secboot is "true", policy needs true'),
        ("gpu.dbgstat", FAIL, "gpu.debug_enabled",
         'GPU-0 dbgstat is "disabled ", policy needs "disabled"'),
    ]


def test_a_version_that_is_not_a_string_is_not_allowed() -> None:
    def edit(claims: Claims) -> None:
        claims["x-nvidia-gpu-driver-version"] = 570
        claims["x-nvidia-gpu-vbios-version"] = "v" * 100

    policy = GpuPolicy(allowed_driver_versions=frozenset({"570", "575.1"}),
                       allowed_vbios_versions=frozenset({"v" * 100 + "x"}))
    assert _gpu_failures(edit, policy) == [
        ("gpu.driver_version", FAIL, "gpu.driver_version_not_allowed",
         "GPU-0 x-nvidia-gpu-driver-version 570 is not in the allowed set ['570', '575.1']"),
        ("gpu.vbios_version", FAIL, "gpu.vbios_version_not_allowed",
         f"GPU-0 x-nvidia-gpu-vbios-version \"{'v' * 79}… is not in the allowed set "
         f"['{'v' * 100}x']"),
    ]
