"""The attestation recipe end to end, sans I/O: simulator evidence broken one way at a time.

Each case starts from a report that verifies and breaks exactly one thing; the node must then
fail with that thing's code, and nothing else about the verdict may pass it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import time
from typing import Any

import pytest

from sidecar.providers.wire import compose_manager_label, parse_attestation_document
from sidecar.simulator.evidence import SimulatedEvidence
from sidecar.simulator.nras import NrasFaults, SimulatedNras
from sidecar.simulator.provider import Faults, SigningNode
from sidecar.simulator.tdx_authority import TestTdxAuthority
from sidecar.trust import load_anchors
from sidecar.config import TrustAnchors
from sidecar.verify.attestation import (
    AttestationReport,
    NodeEvidence,
    NodeReport,
    verify_attestation,
)
from sidecar.verify.checks import Check, Status
from sidecar.verify.policy import FACT_FIELDS, ModelPolicy, build_model_policy
from sidecar.verify.signature import AttestedSigner
from tests import test_near_report as near

NOW = int(time.time())
ANCHORS = load_anchors(TrustAnchors.SIMULATOR)


def attest(*, faults: Faults | None = None, authority: TestTdxAuthority | None = None,
           nras_faults: NrasFaults | None = None, policy: ModelPolicy | None = None,
           nonce: str | None = None, answer_nonce: str | None = None,
           edit: Any = None, tls_spki: bytes | None = None,
           collateral: bool = True, nras: bool = True, nodes: int = 1,
           gathered_edit: Any = None, algo: str = "ecdsa") -> AttestationReport:
    """Build a simulator report for ``nonce`` and verify it as the sidecar would.

    ``gathered_edit`` may change what the I/O layer gathered (label -> ``NodeEvidence``)."""
    nonce = nonce or secrets.token_hex(32)
    evidence = SimulatedEvidence(authority=authority or TestTdxAuthority(),
                                 nras=SimulatedNras(faults=nras_faults or NrasFaults()))
    signing = [SigningNode() for _ in range(nodes)]
    answered = answer_nonce or nonce
    report = evidence(signing, algo, answered, bytes.fromhex(answered), faults or Faults())
    if edit is not None:
        edit(report)
    document = parse_attestation_document(json.dumps(report).encode())
    gathered = {}
    for claim in document.nodes:
        payload = claim.wire.nvidia_payload_text()
        gathered[claim.label] = NodeEvidence(
            collateral_json=evidence.authority.collateral_json(NOW) if collateral else None,
            collateral_error="offline",
            nras_response=evidence.nras.attest(payload, NOW) if payload and nras else None,
            nras_error="offline",
            jwks=ANCHORS.pinned_jwks,
            tls_spki_sha256=tls_spki,
        )
    if gathered_edit is not None:
        gathered_edit(gathered)
    return verify_attestation(document, model="TEE/m", nonce=nonce, evidence=gathered,
                              roots=ANCHORS.roots, policy=policy or build_model_policy("*"),
                              now=NOW)


def failure_codes(report: AttestationReport) -> set[str | None]:
    return {c.code for node in report.nodes for c in node.checks if c.status is Status.FAIL}


def test_genuine_report_verifies() -> None:
    report = attest()
    assert report.verdict == "verified", report.failure
    assert len(report.attested_keys) == 1
    node = report.nodes[0]
    assert node.tcb_status == "UpToDate"
    assert set(node.measurements) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id"}
    assert node.gpus and node.gpus[0].ok


def test_every_node_is_verified_on_its_own() -> None:
    def break_second(report: dict[str, Any]) -> None:
        report["all_attestations"][1]["nonce"] = "00" * 32

    report = attest(nodes=3, edit=break_second)
    assert [str(n.status) for n in report.nodes] == ["pass", "fail", "pass"]
    assert len(report.attested_keys) == 2
    assert report.verdict == "failed"


def test_near_shape_with_model_attestations() -> None:
    report = attest(faults=Faults(evidence={"shape": "near"}), nodes=2)
    assert report.verdict == "verified"
    assert [n.label for n in report.nodes] == ["model-0", "model-1"]


REAL_MRTD = "6c84753d65d680c81e167bf00b2313e6f745111aa10a4647366dd85c82e195ff9fcbe787a39117ce529fe3e743fb7006"

GPU_NOT_VERIFIED = ("policy.gpu_evidence", "policy.gpu_not_verified")

# name -> (attest() keyword arguments, the exact set of (check, code) that does not pass). The
# whole set, not one member: a fault that also breaks something it should not, or a check that
# stops firing while another still does, changes the set.
ONE_THING_BROKEN: dict[str, tuple[dict[str, Any], set[tuple[str, str]]]] = {
    "wrong_mrtd": ({"policy": build_model_policy("*", measurement_sets=[{"mrtd": ["ab" * 48]}])},
                   {("policy.mrtd", "policy.mrtd_not_allowed")}),
    # The compose file, and the compose hash in both the event log and the info that name it.
    "wrong_compose": ({"faults": Faults(evidence={"wrong_compose": True})},
                      {("binding.compose", "binding.compose_mismatch"),
                       ("binding.compose_hash_event", "binding.compose_hash_mismatch"),
                       ("binding.info_compose_hash", "binding.compose_hash_mismatch")}),
    # A report for another nonce: REPORTDATA, the JSON echo and every GPU nonce disagree.
    "replayed_nonce": ({"answer_nonce": "11" * 32},
                       {("binding.nonce", "binding.nonce_mismatch"),
                        ("binding.nonce_echo.nonce", "binding.nonce_mismatch"),
                        ("gpu.payload_nonce", "gpu.nonce_mismatch"),
                        ("gpu.overall.eat_nonce", "gpu.eat_nonce_mismatch"),
                        ("gpu.token.eat_nonce", "gpu.eat_nonce_mismatch"), GPU_NOT_VERIFIED}),
    "report_data_binds_other_address": ({"faults": Faults(report_binds_other_address=True)},
                                        {("binding.signing_key", "binding.signing_key_mismatch")}),
    "event_log_does_not_replay": ({"faults": Faults(evidence={"break_replay": True})},
                                  {("eventlog.rtmr3_replay", "measurement.rtmr3_mismatch")}),
    "event_payload_swapped_under_genuine_digest": (
        {"faults": Faults(evidence={"swap_compose_hash_payload": True})},
        {("eventlog.event_digests", "eventlog.digest_mismatch")}),
    "gpu_nonce_mismatch": ({"faults": Faults(evidence={"gpu_nonce": "22" * 32})},
                           {("gpu.payload_nonce", "gpu.nonce_mismatch"),
                            ("gpu.overall.eat_nonce", "gpu.eat_nonce_mismatch"),
                            ("gpu.token.eat_nonce", "gpu.eat_nonce_mismatch"), GPU_NOT_VERIFIED}),
    # Nothing signed by an unknown key is read, so the submods digest stays undecided.
    "nras_jwt_signed_by_other_key": ({"nras_faults": NrasFaults(sign_with_other_key=True)},
                                     {("gpu.overall.signature", "gpu.jwt_verification_failed"),
                                      ("gpu.token.signature", "gpu.jwt_verification_failed"),
                                      ("gpu.submod_digest", "gpu.submod_digest_unverified"),
                                      GPU_NOT_VERIFIED}),
    "expired_jwt": ({"nras_faults": NrasFaults(expired=True)},
                    {("gpu.overall.validity", "gpu.jwt_expired"),
                     ("gpu.token.validity", "gpu.jwt_expired"), GPU_NOT_VERIFIED}),
    "overall_result_false": ({"nras_faults": NrasFaults(overall_result_false=True)},
                             {("gpu.overall_result", "gpu.overall_result_false"),
                              GPU_NOT_VERIFIED}),
    "per_gpu_token_swapped": ({"nras_faults": NrasFaults(swap_gpu_token=True)},
                              {("gpu.submod_digest", "gpu.submod_digest_mismatch"),
                               GPU_NOT_VERIFIED}),
    # NRAS's overall verdict follows its per-GPU verdict, as a real NRAS answer does.
    "gpu_debug_enabled": ({"nras_faults": NrasFaults(debug_enabled=True)},
                          {("gpu.dbgstat", "gpu.debug_enabled"),
                           ("gpu.overall_result", "gpu.overall_result_false"), GPU_NOT_VERIFIED}),
    "tcb_status_not_allowed": ({"authority": TestTdxAuthority(tcb_status="OutOfDate")},
                               {("policy.tcb_status", "policy.tcb_status_not_allowed")}),
    "quote_truncated": ({"edit": lambda r: r.update(
        intel_quote=r["intel_quote"][:-200] + "00" * 100)},
        {("tdx.quote_format", "tdx.quote_invalid")}),
    "gpu_evidence_missing_but_required": ({"faults": Faults(evidence={"no_gpu": True})},
                                          {("policy.gpu_evidence", "policy.gpu_required")}),
}


def not_passed(report: AttestationReport) -> set[tuple[str, str | None]]:
    """Every check that did not pass, as (name, code)."""
    return {(c.name, c.code) for node in report.nodes for c in node.checks
            if c.status is not Status.PASS}


@pytest.mark.parametrize("case", sorted(ONE_THING_BROKEN))
def test_one_thing_broken_fails_with_its_code(case: str) -> None:
    kwargs, expected = ONE_THING_BROKEN[case]
    report = attest(**kwargs)
    assert report.verdict == "failed"
    assert not report.attested_keys
    assert not_passed(report) == expected, report.failure


def test_pinned_measurements_that_match_pass() -> None:
    genuine = attest().nodes[0].measurements
    policy = build_model_policy("*", measurement_sets=[{"mrtd": [genuine["mrtd"]],
                                                        "rtmr0": [genuine["rtmr0"]]}])
    assert attest(policy=policy).verdict == "verified"


def test_tcb_status_allowed_by_policy_passes() -> None:
    policy = build_model_policy("*", accepted_tcb_statuses=["UpToDate", "OutOfDate"])
    report = attest(authority=TestTdxAuthority(tcb_status="OutOfDate"), policy=policy)
    assert report.verdict == "verified"
    assert report.nodes[0].tcb_status == "OutOfDate"


def test_without_collateral_or_nras_the_verdict_is_incomplete_never_verified() -> None:
    report = attest(collateral=False, nras=False)
    assert report.verdict == "incomplete"
    assert not report.attested_keys
    statuses = {c.name: c.status for c in report.nodes[0].checks}
    assert statuses["tdx.collateral"] is Status.INCOMPLETE
    assert statuses["gpu.nras"] is Status.INCOMPLETE
    # What could be decided offline still was: the bindings hold.
    assert statuses["binding.nonce"] is Status.PASS


# --- TLS binding (NEAR's include_tls_fingerprint=true) ----------------------------------------

SPKI = hashlib.sha256(b"the attested TLS public key").digest()


def attest_tls(live_spki: bytes | None, *, fingerprint: str | None = None) -> AttestationReport:
    """A report bound to a TLS key as NEAR does: report_data[0:32] = sha256(address ‖ SPKI hash)."""
    nonce = secrets.token_hex(32)
    evidence = SimulatedEvidence()
    node = SigningNode()
    address = bytes.fromhex(node.address("ecdsa")[2:])
    report_data = hashlib.sha256(address + SPKI).digest() + bytes.fromhex(nonce)

    identity = evidence.identity(0, {})
    quote = evidence.authority.make_quote(
        report_data=report_data, mrtd=identity.mrtd, rtmr0=identity.rtmr0, rtmr1=identity.rtmr1,
        rtmr2=identity.rtmr2, rtmr3=identity.rtmr3, mr_config_id=identity.mr_config_id)
    obj = evidence.node_report(0, node, "ecdsa", nonce, bytes.fromhex(nonce), Faults())
    obj.update(intel_quote=quote.hex(), report_data=report_data.hex(),
               tls_cert_fingerprint=fingerprint or SPKI.hex())
    document = parse_attestation_document(json.dumps(obj).encode())
    gathered = {"node-0": NodeEvidence(
        collateral_json=evidence.authority.collateral_json(NOW),
        nras_response=evidence.nras.attest(obj["nvidia_payload"], NOW),
        jwks=ANCHORS.pinned_jwks, tls_spki_sha256=live_spki)}
    return verify_attestation(document, model="TEE/m", nonce=nonce, evidence=gathered,
                              roots=ANCHORS.roots, policy=build_model_policy("*"), now=NOW)


def test_tls_bound_report_over_the_attested_certificate_verifies() -> None:
    report = attest_tls(SPKI)
    assert report.verdict == "verified", report.failure


def test_tls_certificate_other_than_the_attested_one_fails() -> None:
    report = attest_tls(hashlib.sha256(b"a man in the middle's key").digest())
    assert not_passed(report) == {("binding.tls_certificate", "binding.tls_mismatch")}


def test_tls_bound_report_over_plain_http_fails() -> None:
    report = attest_tls(None)
    assert not_passed(report) == {("binding.tls_certificate", "binding.tls_not_observed")}


def test_report_fields_are_reported_per_node_in_json() -> None:
    from sidecar.render import attestation_json

    data = attestation_json(attest())
    assert data["verdict"] == "verified"
    assert {c["status"] for c in data["checks"]} == {"pass"}
    assert all({"name", "node", "status", "detail"} <= set(c) for c in data["checks"])


def test_a_gateway_key_never_signs_completions() -> None:
    """NEAR's gateway is verified without GPU evidence, so its key must not be admitted."""
    def gateway_without_gpu(report: dict[str, Any]) -> None:
        gateway = dict(report["model_attestations"][0])
        gateway.pop("nvidia_payload")
        report["gateway_attestation"] = gateway

    report = attest(faults=Faults(evidence={"shape": "near"}), edit=gateway_without_gpu)
    gateway, model = report.nodes
    assert (gateway.role, str(gateway.status)) == ("gateway", "pass")
    assert report.attested_keys == {model.signing_key}


def test_a_report_of_a_gateway_alone_is_refused() -> None:
    from sidecar.errors import VerificationFailed

    node = SimulatedEvidence().node_report(0, SigningNode(), "ecdsa", "00" * 32, b"\0" * 32, Faults())
    body = json.dumps({"gateway_attestation": node, "model_attestations": []}).encode()
    with pytest.raises(VerificationFailed, match="model_attestations"):
        parse_attestation_document(body)


def test_lone_surrogates_in_a_report_are_refused_at_the_edge() -> None:
    from sidecar.errors import VerificationFailed

    body = b'{"signing_address": "0x' + b"11" * 20 + b'", "event_log": [{"event": "\\ud800"}]}'
    with pytest.raises(VerificationFailed, match="not valid Unicode"):
        parse_attestation_document(body)


def test_a_verifier_that_raises_fails_the_node_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.verify.attestation as recipe

    def boom(*_: Any, **__: Any) -> None:
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(recipe, "verify_event_log", boom)
    report = attest()
    assert report.verdict == "failed" and not report.attested_keys
    assert not_passed(report) == {("attestation.internal", "attestation.internal_error")}


@pytest.mark.parametrize("data", [
    b"not json", b"[]", b'{"format": "other"}',
    b'{"format": "tee-sidecar-attestation-context/1", "nonce": "zz", "model": "m", '
    b'"verified_at": 1, "nodes": {}}',
    b'{"format": "tee-sidecar-attestation-context/1", "nonce": "' + b"ab" * 32 + b'", '
    b'"model": "m", "verified_at": 1, "nodes": {"node-0": {"collateral": 5}}}',
])
def test_a_malformed_context_is_refused(data: bytes) -> None:
    from sidecar.errors import VerificationFailed
    from sidecar.archive import decode_context

    with pytest.raises(VerificationFailed) as info:
        decode_context(data)
    assert info.value.code == "attestation.context_malformed"


def test_a_nonce_echoed_in_base64_is_the_same_nonce() -> None:
    import base64 as b64

    nonce = secrets.token_hex(32)
    echoed = b64.b64encode(bytes.fromhex(nonce)).decode()
    report = attest(nonce=nonce, edit=lambda r: r.update(nonce=echoed))
    assert report.verdict == "verified", report.failure
    other = b64.b64encode(b"\x01" * 32).decode()
    report = attest(nonce=nonce, edit=lambda r: r.update(nonce=other))
    assert "binding.nonce_mismatch" in failure_codes(report)


def test_a_null_signing_algo_means_ecdsa() -> None:
    report = attest(edit=lambda r: r.update(signing_algo=None))
    assert report.verdict == "verified", report.failure


def test_a_misspelt_evidence_knob_is_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="unknown evidence knobs"):
        attest(faults=Faults(evidence={"break_reply": True}))


# --- DEBUG TDs and NEAR's newer fields (spec 0.4) --------------------------------------------


def _resign_quote(report: dict[str, Any], *, debug: bool) -> None:
    """Re-make the node's quote with the same measurements, validly signed by the authority."""
    import dcap_qvl

    from sidecar.simulator.tdx_authority import DEBUG_TD_ATTRIBUTES

    body = dcap_qvl.parse_quote(bytes.fromhex(report["intel_quote"])).report
    authority = TestTdxAuthority()
    quote = authority.make_quote(
        report_data=bytes(body.report_data), mrtd=bytes(body.mr_td), rtmr0=bytes(body.rt_mr0),
        rtmr1=bytes(body.rt_mr1), rtmr2=bytes(body.rt_mr2), rtmr3=bytes(body.rt_mr3),
        mr_config_id=bytes(body.mr_config_id),
        **({"td_attributes": DEBUG_TD_ATTRIBUTES} if debug else {}))
    report["intel_quote"] = quote.hex()


def test_validly_signed_quote_of_a_debug_td_fails() -> None:
    assert attest(edit=lambda r: _resign_quote(r, debug=False)).verdict == "verified"
    report = attest(edit=lambda r: _resign_quote(r, debug=True))
    assert report.verdict == "failed"
    assert failure_codes(report) >= {"tdx.debug_enabled"}
    assert report.failure is not None and report.failure.code == "tdx.debug_enabled"


def test_debug_td_fails_without_collateral_too() -> None:
    report = attest(edit=lambda r: _resign_quote(r, debug=True), collateral=False)
    assert report.verdict == "failed"
    assert report.failure is not None and report.failure.code == "tdx.debug_enabled"


def test_model_name_flows_to_the_node_report() -> None:
    report = attest(faults=Faults(evidence={"shape": "near"}))
    assert report.verdict == "verified", report.failure
    assert report.nodes[0].model_name == "simulated"
    assert {s.model_name for s in report.attested_signers.values()} == {"simulated"}


def test_both_nonce_echoes_must_name_the_nonce() -> None:
    def two_echoes(report: dict[str, Any]) -> None:
        report["request_nonce"] = report["nonce"]
        report["nonce"] = "00" * 32

    report = attest(edit=two_echoes)
    assert failure_codes(report) == {"binding.nonce_mismatch"}
    assert attest(edit=lambda r: r.update(request_nonce=r["nonce"])).verdict == "verified"


# --- One TCB gate: the quote verifier reports TCB status and advisories, the policy judges ----


def _failing(report: AttestationReport) -> dict[str, str | None]:
    return {c.name: c.code for node in report.nodes for c in node.checks
            if c.status is Status.FAIL}


def test_tcb_status_is_judged_by_the_policy_not_the_quote_check() -> None:
    report = attest(authority=TestTdxAuthority(tcb_status="OutOfDate"))

    assert report.verdict == "failed"
    assert _failing(report) == {"policy.tcb_status": "policy.tcb_status_not_allowed"}
    checks = {c.name: c for c in report.nodes[0].checks}
    assert checks["tdx.tcb_status"].ok  # a fact, reported
    assert report.nodes[0].tcb_status == "OutOfDate"


def test_advisory_not_tolerated_by_the_policy_fails_the_node() -> None:
    authority = TestTdxAuthority(tcb_status="UpToDate", advisory_ids=["INTEL-SA-00837"])

    refused = attest(authority=authority)
    tolerated = attest(authority=authority,
                       policy=build_model_policy("*", tolerated_advisories=["INTEL-SA-00837"]))

    assert _failing(refused) == {"policy.advisories": "policy.advisory_not_tolerated"}
    assert tolerated.verdict == "verified", tolerated.failure


def test_tcb_is_gated_even_when_the_policy_does_not_require_tdx() -> None:
    # Every node carries a quote the sidecar verifies; its TCB is judged whatever require_tdx says.
    report = attest(authority=TestTdxAuthority(tcb_status="OutOfDate"),
                    policy=build_model_policy("*", require_tdx=False))

    assert _failing(report) == {"policy.tcb_status": "policy.tcb_status_not_allowed"}


def test_the_compose_manager_quote_tcb_is_judged_by_the_same_policy() -> None:
    from sidecar.providers.wire import compose_manager_label

    nonce = secrets.token_hex(32)
    evidence = SimulatedEvidence(authority=TestTdxAuthority(tcb_status="OutOfDate"),
                                 nras=SimulatedNras(faults=NrasFaults()))
    body = {"model_attestations": [evidence.near_model_entry(
        0, SigningNode(), "ecdsa", nonce, bytes.fromhex(nonce), Faults(), model_name="TEE/m")]}
    document = parse_attestation_document(json.dumps(body).encode())
    gathered = {}
    for claim in document.nodes:
        payload = claim.wire.nvidia_payload_text()
        gathered[claim.label] = NodeEvidence(
            collateral_json=evidence.authority.collateral_json(NOW),
            nras_response=evidence.nras.attest(payload, NOW) if payload else None,
            jwks=ANCHORS.pinned_jwks)
        gathered[compose_manager_label(claim.label)] = NodeEvidence(
            collateral_json=evidence.authority.collateral_json(NOW))
    assert all(c.wire.compose_manager_attestation is not None for c in document.nodes)

    def verify(policy: ModelPolicy) -> AttestationReport:
        return verify_attestation(document, model="TEE/m", nonce=nonce, evidence=gathered,
                                  roots=ANCHORS.roots, policy=policy, now=NOW)

    refused = verify(build_model_policy("*"))
    accepted = verify(build_model_policy("*", accepted_tcb_statuses=["OutOfDate"]))

    assert _failing(refused) == {"policy.tcb_status": "policy.tcb_status_not_allowed",
                                 "compose_manager.policy.tcb_status":
                                     "policy.tcb_status_not_allowed"}
    assert accepted.verdict == "verified", accepted.failure


# --- What the recipe reports, exactly ----------------------------------------------------------
# The paths above are seen pass or fail; these pin each check's name, code and the detail a user
# reads (``attest`` prints it), the facts a node report carries and the policy's view of every
# measured register. Simulator evidence for the node recipe; the real NEAR report
# (tests/assets/near) for the compose-manager attestation (spec 0.4). Written against the
# survivors of mutation testing (docs/mutation.md).


def checks_of(node: NodeReport) -> dict[str, Check]:
    return {c.name: c for c in node.checks}


def event_payload(report: dict[str, Any], event: str) -> str:
    payload: str = next(e["event_payload"] for e in report["event_log"] if e.get("event") == event)
    return payload


# --- (7) every measured fact reaches the policy ------------------------------------------------


def genuine_facts() -> dict[str, str]:
    """The genuine report's facts, read from the report itself (the quote's registers as the
    node report shows them; the runtime events' payloads from the event log)."""
    seen: dict[str, Any] = {}

    def keep(report: dict[str, Any]) -> None:
        seen.update(report)

    measurements = attest(edit=keep).nodes[0].measurements
    return {**{k: measurements[k] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")},
            "compose_hash": event_payload(seen, "compose-hash"),
            "app_id": event_payload(seen, "app-id"),
            "os_image_hash": event_payload(seen, "os-image-hash")}


@pytest.mark.parametrize("fact", FACT_FIELDS)
def test_every_measured_fact_is_judged_by_its_pin(fact: str) -> None:
    genuine = genuine_facts()[fact]
    pinned = attest(policy=build_model_policy("*", measurement_sets=[{fact: [genuine]}]))
    assert pinned.verdict == "verified", pinned.failure
    other = "ab" * (len(genuine) // 2)
    refused = attest(policy=build_model_policy("*", measurement_sets=[{fact: [other]}]))
    assert not_passed(refused) == {(f"policy.{fact}", f"policy.{fact}_not_allowed")}


# --- (3) the TLS key of the connection -----------------------------------------------------------

OTHER_SPKI = hashlib.sha256(b"a man in the middle's key").digest()


def test_tls_binding_details_and_the_pinned_key() -> None:
    passed = attest_tls(SPKI).nodes[0]
    check = checks_of(passed)["binding.tls_certificate"]
    assert check.ok and check.detail == f"the connection's TLS key {SPKI.hex()} is the attested one"
    assert passed.bound_tls_spki == SPKI

    mismatch = attest_tls(OTHER_SPKI).nodes[0]
    assert checks_of(mismatch)["binding.tls_certificate"] == Check.failed(
        "binding.tls_certificate", "binding.tls_mismatch",
        f"connection's TLS key {OTHER_SPKI.hex()} != attested {SPKI.hex()}")
    assert mismatch.bound_tls_spki is None

    plain = attest_tls(None).nodes[0]
    assert checks_of(plain)["binding.tls_certificate"] == Check.failed(
        "binding.tls_certificate", "binding.tls_not_observed",
        "report binds a TLS key but the report did not arrive over TLS")
    assert plain.bound_tls_spki is None


def test_a_report_without_a_tls_fingerprint_pins_no_tls_key() -> None:
    node = attest(tls_spki=SPKI).nodes[0]
    assert "binding.tls_certificate" not in checks_of(node)
    assert node.bound_tls_spki is None


# --- the compose-manager attestation, on the real NEAR report (spec 0.4) ----------------------


def cm_checks(report: AttestationReport) -> dict[str, Check]:
    model = report.nodes[1]
    return {c.name: c for c in model.checks if c.name.startswith("compose_manager.")}


@pytest.mark.parametrize("quote", ["", 123, None], ids=["empty", "number", "null"])
def test_a_compose_manager_without_a_hex_quote_string_is_missing(quote: object) -> None:
    report = near.tampered(lambda r: near.cma(r).update(quote=quote))
    assert cm_checks(report) == {"compose_manager.tdx.quote": Check.failed(
        "compose_manager.tdx.quote", "tdx.quote_missing",
        "compose_manager_attestation carries no quote")}
    near.assert_only_failure(report, "tdx.quote_missing")


def test_a_compose_manager_quote_that_is_not_hex_is_malformed() -> None:
    report = near.tampered(lambda r: near.cma(r).update(quote="zz" + near.cma(r)["quote"]))
    assert cm_checks(report) == {"compose_manager.tdx.quote": Check.failed(
        "compose_manager.tdx.quote", "tdx.quote_malformed",
        "compose_manager_attestation quote is not hex")}
    near.assert_only_failure(report, "tdx.quote_malformed")


def test_a_0x_prefixed_compose_manager_quote_is_the_same_quote() -> None:
    genuine = near.verify()
    report = near.tampered(lambda r: near.cma(r).update(quote="0x" + near.cma(r)["quote"]))
    assert report.nodes == genuine.nodes


@pytest.mark.parametrize("actions_hash", [
    "ab" * 31, "ab" * 33, "zz" * 32, 7, None], ids=["31-bytes", "33-bytes", "not-hex", "number",
                                                   "null"])
def test_an_actions_hash_that_is_not_32_bytes_of_hex_is_malformed(actions_hash: object) -> None:
    report = near.tampered(lambda r: near.cma(r).update(actions_hash=actions_hash))
    checks = cm_checks(report)
    assert checks["compose_manager.report_data"] == Check.failed(
        "compose_manager.report_data", "binding.actions_malformed",
        "actions_hash is not 32 bytes of hex")
    near.assert_only_failure(report, "binding.actions_malformed")
    # Nothing after it is checked: without a hash the quote binds, the rest proves nothing.
    assert "compose_manager.nonce_echo" not in checks
    assert "binding.compose_manager_actions" not in checks_of(report.nodes[1])


def test_compose_manager_report_data_details() -> None:
    genuine = json.loads(near.RAW)
    bound = near.cma(genuine)["actions_hash"] + near.NONCE
    check = cm_checks(near.verify())["compose_manager.report_data"]
    assert check == Check.passed("compose_manager.report_data",
                                 "report_data = actions_hash ‖ this session's nonce")

    def rehash(report: dict[str, Any]) -> None:
        near.cma(report)["actions_hash"] = "cd" * 32

    check = cm_checks(near.tampered(rehash))["compose_manager.report_data"]
    assert check == Check.failed(
        "compose_manager.report_data", "compose_manager.report_data_mismatch",
        f"report_data {bound} is not actions_hash ‖ nonce {'cd' * 32}{near.NONCE}")


def test_the_compose_manager_quote_is_undecided_for_its_own_collateral_reason() -> None:
    document = parse_attestation_document(near.RAW)
    evidence = {compose_manager_label("model-0"): NodeEvidence(
        collateral_error="PCCS answered 503")}
    report = near.verify_attestation(document, model=near.MODEL, nonce=near.NONCE,
                                     evidence=evidence, roots=near.ROOTS,
                                     policy=build_model_policy("*"), now=near.NOW)
    checks = cm_checks(report)
    undecided = checks["compose_manager.tdx.collateral"]
    assert undecided.status is Status.INCOMPLETE
    assert undecided.detail.endswith(" (PCCS answered 503)")
    # The node's own quote had no evidence entry: the default reason, not the compose manager's.
    assert checks_of(report.nodes[1])["tdx.collateral"].detail.endswith(" (no collateral)")


# --- the report as a whole ----------------------------------------------------------------------


def test_the_report_names_what_was_attested_when_and_for_which_nonce() -> None:
    seen: dict[str, Any] = {}
    nonce = secrets.token_hex(32)
    report = attest(nonce=nonce, edit=seen.update)
    assert (report.model, report.nonce, report.verified_at) == ("TEE/m", nonce, NOW)
    # The digest of the exact bytes received (the attester hashes what it parsed).
    assert report.evidence_sha256 == hashlib.sha256(json.dumps(seen).encode()).hexdigest()


def node(role: str, status: Status, *, public_key: str | None = None, key: str = "0x" + "11" * 20,
         model_name: str | None = None) -> NodeReport:
    check = {Status.PASS: Check.passed("a", "fine"), Status.FAIL: Check.failed("a", "a.bad", "bad"),
             Status.INCOMPLETE: Check.incomplete("a", "a.undecided", "undecided")}[status]
    return NodeReport(f"{role}-{key[-2:]}", role, key, "ecdsa", (check,), public_key=public_key,
                      model_name=model_name)


def test_only_attested_model_nodes_give_keys_and_e2ee_keys() -> None:
    model = node("model", Status.PASS, key="0x" + "11" * 20, public_key="aa" * 64, model_name="m")
    no_public_key = node("model", Status.PASS, key="0x" + "22" * 20)
    gateway = node("gateway", Status.PASS, key="0x" + "33" * 20, public_key="bb" * 64)
    failed = node("model", Status.FAIL, key="0x" + "44" * 20, public_key="cc" * 64)
    undecided = node("model", Status.INCOMPLETE, key="0x" + "55" * 20, public_key="dd" * 64)
    report = AttestationReport("TEE/m", "00" * 32, "ee" * 32,
                               (model, no_public_key, gateway, failed, undecided), NOW)

    assert report.attested_keys == {"0x" + "11" * 20, "0x" + "22" * 20}
    assert report.e2ee_keys == {"0x" + "11" * 20: "aa" * 64}
    # Every attested node is a signer (the signature verifier decides what a gateway may sign).
    assert report.attested_signers == {
        "0x" + "11" * 20: AttestedSigner("0x" + "11" * 20, "ecdsa", "model", "m"),
        "0x" + "22" * 20: AttestedSigner("0x" + "22" * 20, "ecdsa", "model", None),
        "0x" + "33" * 20: AttestedSigner("0x" + "33" * 20, "ecdsa", "gateway", None)}
    assert report.status is Status.FAIL and not report.ok
    assert report.checks == tuple(c for n in report.nodes for c in n.checks)


def test_a_report_of_undecided_and_passed_nodes_is_incomplete() -> None:
    report = AttestationReport("TEE/m", "00" * 32, "ee" * 32,
                               (node("model", Status.PASS), node("model", Status.INCOMPLETE)), NOW)
    assert report.status is Status.INCOMPLETE and report.verdict == "incomplete"
    assert not report.ok
    empty = AttestationReport("TEE/m", "00" * 32, "ee" * 32, (), NOW)
    assert empty.verdict == "failed" and not empty.ok


# --- (1) the node's quote -------------------------------------------------------------------------


@pytest.mark.parametrize("quote", ["", None], ids=["empty", "absent"])
def test_a_node_without_a_quote_is_checked_no_further(quote: str | None) -> None:
    report = attest(edit=lambda r: r.update(intel_quote=quote))
    (only,) = report.nodes
    assert only.checks == (Check.failed("tdx.quote", "tdx.quote_missing",
                                        "node carries no intel_quote"),)
    assert (only.tcb_status, only.measurements, only.gpus) == (None, {}, ())


def test_a_node_quote_that_is_not_hex_is_checked_no_further() -> None:
    report = attest(edit=lambda r: r.update(intel_quote=r["intel_quote"] + "zz"))
    assert report.nodes[0].checks == (Check.failed("tdx.quote", "tdx.quote_malformed",
                                                   "intel_quote is not hex"),)


def test_a_0x_prefixed_node_quote_is_the_same_quote() -> None:
    report = attest(edit=lambda r: r.update(intel_quote="0x" + r["intel_quote"]))
    assert report.verdict == "verified", report.failure


def test_a_failed_quote_reports_nothing_it_measured() -> None:
    report = attest(edit=lambda r: _resign_quote(r, debug=True))
    (only,) = report.nodes
    assert only.tcb_status is None
    assert only.measurements == {} and only.deployment is None and only.gpus == ()
    assert {c.name for c in only.checks} == {c.name for c in only.checks
                                             if c.name.startswith("tdx.")}


def test_an_undecided_quote_says_why_and_still_reports_what_it_measured() -> None:
    report = attest(collateral=False)
    (only,) = report.nodes
    collateral = checks_of(only)["tdx.collateral"]
    assert collateral.status is Status.INCOMPLETE and collateral.detail.endswith(" (offline)")
    # Only the undecided check is explained: what passed says nothing about the collateral.
    passed = [c for c in only.checks if c.name.startswith("tdx.") and c.ok]
    assert passed and not any("offline" in c.detail for c in passed)
    assert only.tcb_status is None
    assert set(only.measurements) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id"}


# --- (2) the bindings ---------------------------------------------------------------------------


def test_a_tls_fingerprint_that_is_not_hex_stops_the_node_after_its_quote() -> None:
    report = attest(edit=lambda r: r.update(tls_cert_fingerprint="not hex"))
    (only,) = report.nodes
    assert only.checks[-1] == Check.failed("binding.tls", "binding.tls_malformed",
                                           "tls_cert_fingerprint is not hex")
    assert all(c.name.startswith("tdx.") for c in only.checks[:-1])
    assert only.tcb_status == "UpToDate" and set(only.measurements) >= {"mrtd"}


def test_a_nonce_that_is_not_32_bytes_is_a_caller_bug() -> None:
    from sidecar.verify.attestation import TrustRoots, verify_node

    seen: dict[str, Any] = {}
    attest(edit=seen.update)
    claim = parse_attestation_document(json.dumps(seen).encode()).nodes[0]
    roots: TrustRoots = ANCHORS.roots
    with pytest.raises(ValueError, match="the session nonce must be 32 bytes"):
        verify_node(claim, nonce="00" * 31, evidence=NodeEvidence(), roots=roots,
                    policy=build_model_policy("*"), now=NOW)
    # verify_attestation fails that node closed instead of raising.
    report = attest(nonce="00" * 31, answer_nonce="00" * 32)
    assert report.nodes[0].checks == (Check.failed(
        "attestation.internal", "attestation.internal_error", "verification raised ValueError"),)


@pytest.mark.parametrize(("echo", "shown"), [
    ("00" * 32, "00" * 32),
    ("ab" * 100, "ab" * 40),  # a hostile echo is shown cut to 80 characters
    (5, "int"),  # not a string: its type, never its value
    ({"nonce": "x"}, "dict"),
], ids=["other-nonce", "long", "number", "object"])
def test_a_wrong_compose_manager_nonce_echo_says_what_it_echoed(echo: object, shown: str) -> None:
    report = near.tampered(lambda r: near.cma(r).update(nonce=echo))
    assert cm_checks(report)["compose_manager.nonce_echo"] == Check.failed(
        "compose_manager.nonce_echo", "binding.nonce_mismatch",
        f"compose_manager_attestation.nonce echoes {shown}, not the nonce sent")
    near.assert_only_failure(report, "binding.nonce_mismatch")


def test_echo_details_name_their_field() -> None:
    checks = checks_of(near.verify().nodes[1])
    assert checks["binding.nonce_echo.request_nonce"] == Check.passed(
        "binding.nonce_echo.request_nonce", "request_nonce echoes the nonce sent")
    assert checks["compose_manager.nonce_echo"] == Check.passed(
        "compose_manager.nonce_echo", "compose_manager_attestation.nonce echoes the nonce sent")
    report = near.tampered(lambda r: near.model_entry(r).update(request_nonce="11" * 32))
    assert checks_of(report.nodes[1])["binding.nonce_echo.request_nonce"].detail \
        == f"request_nonce echoes {'11' * 32}, not the nonce sent"


def test_a_node_without_info_binds_no_compose_and_reports_no_deployment() -> None:
    report = near.tampered(lambda r: near.model_entry(r).pop("info"))
    assert near.failures(report) == {"info.parse": "info.malformed",
                                     "compose_manager.binding.compose": "binding.compose_mismatch"}
    model = report.nodes[1]
    checks = checks_of(model)
    assert checks["info.parse"].detail == "info.tcb_info must be an object, got NoneType"
    assert checks["compose_manager.binding.compose"] == Check.failed(
        "compose_manager.binding.compose", "binding.compose_mismatch",
        "the node serves no app_compose to bind the quote to")
    assert "binding.compose" not in checks and model.deployment is None


# --- (7) the policy, read with what the evidence could not decide --------------------------------


def test_undecided_evidence_keeps_the_policy_undecided_and_says_why() -> None:
    gateway, model = near.verify().nodes
    checks = checks_of(model)
    for name in ("policy.tdx_evidence", "policy.gpu_evidence"):
        assert checks[name] == Check.incomplete(
            name, "policy.evidence_undecided",
            "evidence present but its verification was not decided")
    assert checks["policy.tcb_status"] == Check.incomplete(
        "policy.tcb_status", "policy.evidence_undecided",
        "no TCB status: no verified TDX quote (quote verification undecided)")
    # The gateway carries no GPU evidence and needs none; its TDX evidence is as undecided.
    assert checks_of(gateway)["policy.gpu_evidence"] == Check.passed(
        "policy.gpu_evidence", "gateway node: no GPU evidence expected")
    assert checks_of(gateway)["policy.tdx_evidence"].status is Status.INCOMPLETE


# --- (6) GPU evidence ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["nras_response", "jwks"])
def test_gpu_evidence_is_undecided_without_the_nras_answer_or_the_jwks(missing: str) -> None:
    def drop(gathered: dict[str, NodeEvidence]) -> None:
        gathered["node-0"] = dataclasses.replace(gathered["node-0"], **{missing: None},
                                                 nras_error="NRAS timed out")

    (only,) = attest(gathered_edit=drop).nodes
    assert checks_of(only)["gpu.nras"] == Check.incomplete("gpu.nras", "gpu.nras_unavailable",
                                                           "NRAS timed out")
    assert {(c.name, c.code) for c in only.checks if not c.ok} == {
        ("gpu.nras", "gpu.nras_unavailable"), ("policy.gpu_evidence", "policy.evidence_undecided")}
    assert only.gpus == ()


def test_an_nras_answer_that_verifies_no_gpu_fails() -> None:
    (only,) = attest(nras_faults=NrasFaults(drop_gpu_token=True)).nodes
    assert checks_of(only)["gpu.count"] == Check.failed("gpu.count", "gpu.nras_response_malformed",
                                                        "NRAS answer verified no GPU")
    assert {(c.name, c.code) for c in only.checks if not c.ok} == {
        ("gpu.nras_response", "gpu.nras_response_malformed"),
        ("gpu.count", "gpu.nras_response_malformed"), GPU_NOT_VERIFIED}


def test_the_node_report_carries_its_verified_gpus() -> None:
    (only,) = attest().nodes
    assert len(only.gpus) == 1 and only.gpus[0].ok
    assert checks_of(only)["policy.gpu_evidence"].ok


# --- (2) nonce echoes and the signing public key ------------------------------------------------


def _echo_report(echo: Any) -> AttestationReport:
    nonce = "a1" * 32
    return attest(nonce=nonce, edit=lambda r: r.update(nonce=echo(nonce)))


@pytest.mark.parametrize("echo", [
    lambda n: n.upper(), lambda n: "0x" + n, lambda n: f"  {n}\n",
    lambda n: " " + base64.b64encode(bytes.fromhex(n)).decode() + " ",
], ids=["upper-case", "0x", "padded", "base64-padded"])
def test_a_nonce_echo_names_the_nonce_in_any_spelling(echo: Any) -> None:
    report = _echo_report(echo)
    assert report.verdict == "verified", report.failure


@pytest.mark.parametrize("echo", [
    lambda n: n[:-2],
    lambda n: "0X" + n,  # only the lower-case prefix is a hex prefix
    lambda n: base64.b64encode(bytes.fromhex(n)).decode()[:8] + "!"
        + base64.b64encode(bytes.fromhex(n)).decode()[8:],  # not base64: never decoded leniently
    lambda n: base64.b64encode(bytes.fromhex(n)[:31]).decode(),
], ids=["short", "0X", "base64-with-junk", "base64-short"])
def test_a_nonce_echo_that_is_not_the_nonce_fails(echo: Any) -> None:
    report = _echo_report(echo)
    assert not_passed(report) == {("binding.nonce_echo.nonce", "binding.nonce_mismatch")}


def _near_with_key(key: Any) -> NodeReport:
    """The real NEAR report's model node, its ``signing_public_key`` respelt by ``key``."""
    def edit(report: dict[str, Any]) -> None:
        entry = near.model_entry(report)
        entry["signing_public_key"] = key(entry["signing_public_key"])

    report = near.tampered(edit)
    assert not near.failures(report)
    return report.nodes[1]


@pytest.mark.parametrize("key", [
    lambda k: k, lambda k: "04" + k, lambda k: "0x" + k.upper(), lambda k: f" {k} ",
    lambda k: "0x04" + k], ids=["plain", "sec1-04", "0x-upper", "padded", "0x-sec1-04"])
def test_the_proven_public_key_is_reported_in_one_spelling(key: Any) -> None:
    served = near.model_entry(json.loads(near.RAW))["signing_public_key"]
    node = _near_with_key(key)
    assert node.public_key == served.lower() and len(served) == 128
    assert checks_of(node)["binding.public_key"].ok


def test_a_public_key_of_another_address_is_not_reported() -> None:
    report = near.tampered(lambda r: near.model_entry(r).update(signing_public_key="11" * 64))
    assert report.nodes[1].public_key is None
    assert near.failures(report) == {"binding.public_key": "binding.public_key_mismatch"}


# --- a verifier that raises fails its node closed, and only its node ----------------------------


def test_a_node_whose_verifier_raised_is_reported_failed_with_its_identity(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.verify.attestation as recipe

    genuine = recipe.verify_event_log
    calls: list[int] = []

    def first_call_raises(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("boom")
        return genuine(*args, **kwargs)

    monkeypatch.setattr(recipe, "verify_event_log", first_call_raises)
    seen: dict[str, Any] = {}
    report = attest(faults=Faults(evidence={"shape": "near"}), nodes=2, edit=seen.update)
    broken, healthy = report.nodes
    entry = seen["model_attestations"][0]
    assert broken == NodeReport(
        "model-0", "model", entry["signing_address"].lower(), "ecdsa",
        (Check.failed("attestation.internal", "attestation.internal_error",
                      "verification raised KeyError"),), model_name="simulated")
    assert healthy.status is Status.PASS
    assert report.attested_keys == {healthy.signing_key}


# --- (5) a replayed log that lacks a dstack event ------------------------------------------------


def _drop_event_and_requote(report: dict[str, Any], event: str) -> None:
    """Leave ``event`` out of the log and re-make the quote so that the log still replays: a
    node that never measured that event (RTMR3 = sha384 fold of the imr-3 digests, spec 2)."""
    import dcap_qvl

    report["event_log"] = [e for e in report["event_log"] if e.get("event") != event]
    rtmr3 = b"\0" * 48
    for entry in report["event_log"]:
        if entry["imr"] == 3:
            rtmr3 = hashlib.sha384(rtmr3 + bytes.fromhex(entry["digest"])).digest()
    body = dcap_qvl.parse_quote(bytes.fromhex(report["intel_quote"])).report
    report["intel_quote"] = TestTdxAuthority().make_quote(
        report_data=bytes(body.report_data), mrtd=bytes(body.mr_td), rtmr0=bytes(body.rt_mr0),
        rtmr1=bytes(body.rt_mr1), rtmr2=bytes(body.rt_mr2), rtmr3=rtmr3,
        mr_config_id=bytes(body.mr_config_id)).hex()


@pytest.mark.parametrize(("event", "fact", "missing"), [
    ("compose-hash", "compose_hash", {("binding.compose_hash_event", "binding.compose_hash_mismatch")}),
    ("app-id", "app_id", {("binding.app_id_event", "binding.app_id_mismatch")}),
    ("os-image-hash", "os_image_hash", set()),  # info names no OS image: only a pin needs it
])
def test_a_fact_whose_event_was_never_measured_is_not_established(
        event: str, fact: str, missing: set[tuple[str, str]]) -> None:
    genuine = attest(edit=lambda r: _drop_event_and_requote(r, event))
    pinned = attest(edit=lambda r: _drop_event_and_requote(r, event),
                    policy=build_model_policy("*", measurement_sets=[{fact: ["ab" * 32]}]))
    assert checks_of(genuine.nodes[0])["eventlog.rtmr3_replay"].ok
    # Not an internal error: the fact is simply absent, and a pin on it cannot be met.
    assert not_passed(genuine) == missing
    assert not_passed(pinned) == missing | {(f"policy.{fact}", f"policy.{fact}_not_allowed")}


def test_the_gpus_are_judged_by_the_models_gpu_policy() -> None:
    from sidecar.verify.nvidia import GpuPolicy

    pinned = build_model_policy("*", gpu=GpuPolicy(allowed_driver_versions=frozenset({"1.0"})))
    assert not_passed(attest(policy=pinned)) == {
        ("gpu.driver_version", "gpu.driver_version_not_allowed"), GPU_NOT_VERIFIED}
    assert attest(nras_faults=NrasFaults(driver_version="1.0"), policy=pinned).verdict \
        == "verified"


def test_a_node_that_serves_no_public_key_gives_none_to_seal_to() -> None:
    report = attest()
    assert report.verdict == "verified", report.failure
    assert report.nodes[0].public_key is None
    assert "binding.public_key" not in checks_of(report.nodes[0])
    assert report.e2ee_keys == {}


def test_0x_prefixed_hex_fields_are_the_same_bytes() -> None:
    genuine = near.verify()
    actions = near.tampered(lambda r: near.cma(r).update(actions_hash="0x" + near.cma(r)["actions_hash"]))
    assert actions.nodes == genuine.nodes
    tls = attest_tls(SPKI, fingerprint="0x" + SPKI.hex())
    assert tls.verdict == "verified", tls.failure
    assert tls.nodes[0].bound_tls_spki == SPKI


def test_an_ed25519_node_is_known_by_its_bare_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    report = attest(algo="ed25519", edit=seen.update)
    assert report.verdict == "verified", report.failure
    key = seen["signing_address"].lower()
    assert not key.startswith("0x")
    assert report.attested_keys == {key}
    assert report.attested_signers[key].algo == "ed25519"

    import sidecar.verify.attestation as recipe

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("a verifier bug")

    monkeypatch.setattr(recipe, "verify_event_log", boom)
    (failed,) = attest(algo="ed25519", edit=seen.update).nodes
    assert (failed.signing_key, failed.algo) == (seen["signing_address"].lower(), "ed25519")


def test_an_ed25519_public_key_is_reported_without_its_0x() -> None:
    def serve_key(report: dict[str, Any]) -> None:
        report["signing_public_key"] = "0x" + report["signing_address"].upper()

    seen: dict[str, Any] = {}
    report = attest(algo="ed25519", edit=lambda r: (serve_key(r), seen.update(r)))
    assert report.verdict == "verified", report.failure
    key = seen["signing_address"].lower()
    assert report.nodes[0].public_key == key
    assert report.e2ee_keys == {key: key}


def test_a_node_without_an_event_log_replays_nothing() -> None:
    # Absent is an empty log (nothing measured at runtime), not a malformed one: RTMR3 of the
    # quote is then the unreplayed all-zero register's mismatch.
    report = attest(edit=lambda r: r.pop("event_log"))
    assert not_passed(report) == {("eventlog.rtmr3_replay", "measurement.rtmr3_mismatch")}
    assert checks_of(report.nodes[0])["eventlog.parse"].ok
