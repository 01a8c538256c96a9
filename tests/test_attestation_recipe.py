"""What the attestation recipe reports, exactly, on the paths ``test_attestation.py`` only sees
pass or fail: each check's name, code and the detail a user reads (``attest`` prints it), the
facts a node report carries, and the policy's view of every measured register.

Simulator evidence (``tests/test_attestation.py``'s ``attest``) for the node recipe; the real NEAR
report (``tests/assets/near``) for the compose-manager attestation (spec 0.4).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import pytest

from sidecar.providers.wire import compose_manager_label, parse_attestation_document
from sidecar.verify.attestation import AttestationReport, NodeEvidence, NodeReport
from sidecar.verify.checks import Check, Status
from sidecar.verify.policy import FACT_FIELDS, build_model_policy
from sidecar.verify.signature import AttestedSigner
from tests import test_near_report as near
from tests.test_attestation import NOW, SPKI, attest, attest_tls, not_passed


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
    from tests.test_attestation import _resign_quote

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
    from tests.test_attestation import ANCHORS

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
