"""NVIDIA GPU evidence: payload nonce binding and NRAS detached-EAT verification.

Every NRAS answer here is produced and signed for real by ``SimulatedNras``; each fault knob
breaks exactly one thing, and each test pins the failing check's code and message.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
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
    MAX_JWT_BYTES,
    MAX_NRAS_RESPONSE_BYTES,
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
