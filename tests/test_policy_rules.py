"""The policy engine's checks as a user reads them: every rule's check name, code and detail on
every path, what ``build_model_policy`` composes and refuses, and who may pass unattested.

``tests/test_policy.py`` pins the verdicts; this pins what the ``attest`` report, the refusal
message and the receipts show (issue 10: a check whose name or detail went missing, or whose
rule was built from the wrong setting, must fail a test).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.verify.checks import Check, Status
from sidecar.verify.identity import DeploymentIdentity
from sidecar.verify.policy import (
    AcceptedTcbStatuses,
    AllOf,
    AllowedValues,
    AnyOf,
    NodeFacts,
    PolicyReport,
    PolicySet,
    RequireEvidence,
    ToleratedAdvisories,
    build_model_policy,
)
from sidecar.verify.provenance import ProvenanceRequirement

MRTD = "aa" * 48
COMPOSE = "bb" * 32

GOOD = NodeFacts(has_tdx=True, has_nvidia=True, tdx_ok=True, gpu_ok=True, mrtd=MRTD,
                 rtmr0="01" * 48, rtmr1="02" * 48, rtmr2="03" * 48, compose_hash=COMPOSE,
                 app_id="cc" * 20, os_image_hash="dd" * 32, tcb_status="UpToDate")
NO_EVIDENCE = NodeFacts(has_tdx=False, has_nvidia=False, tdx_ok=False, gpu_ok=False)

PIN = DeploymentIdentity(role="model", mrtd=MRTD, rtmr0="01" * 48, rtmr1="02" * 48,
                         rtmr2="03" * 48, mr_config_id="00" * 48, compose_hash=COMPOSE,
                         images=("ghcr.io/example/model@sha256:" + "ee" * 32,),
                         os_image_hash="dd" * 32, key_provider=None)


def _facts(**changes: Any) -> NodeFacts:
    return dataclasses.replace(GOOD, **changes)


def _rows(checks: tuple[Check, ...]) -> list[tuple[str, Status, str | None, str]]:
    return [(c.name, c.status, c.code, c.detail) for c in checks]


P, F = Status.PASS, Status.FAIL


# -- RequireEvidence: both checks, every combination of required / present / verified --------


@pytest.mark.parametrize(("rule", "facts", "rows"), [
    pytest.param(RequireEvidence(), GOOD, [
        ("policy.tdx_evidence", P, None, "TDX evidence verified"),
        ("policy.gpu_evidence", P, None, "NVIDIA GPU evidence verified"),
    ], id="both-verified"),
    pytest.param(RequireEvidence(), NO_EVIDENCE, [
        ("policy.tdx_evidence", F, "policy.tdx_required", "TDX evidence required but absent"),
        ("policy.gpu_evidence", F, "policy.gpu_required",
         "NVIDIA GPU evidence required but absent"),
    ], id="both-required-absent"),
    pytest.param(RequireEvidence(), _facts(tdx_ok=False, gpu_ok=False), [
        ("policy.tdx_evidence", F, "policy.tdx_not_verified",
         "TDX evidence failed verification"),
        ("policy.gpu_evidence", F, "policy.gpu_not_verified",
         "NVIDIA GPU evidence failed verification"),
    ], id="both-present-bad"),
    pytest.param(RequireEvidence(tdx=False, nvidia=False), NO_EVIDENCE, [
        ("policy.tdx_evidence", P, None, "TDX evidence not required by policy"),
        ("policy.gpu_evidence", P, None, "NVIDIA GPU evidence not required by policy"),
    ], id="neither-required-absent"),
    # Present but bad fails even when not required: the provider served something bad.
    pytest.param(RequireEvidence(tdx=False, nvidia=False), _facts(tdx_ok=False, gpu_ok=False), [
        ("policy.tdx_evidence", F, "policy.tdx_not_verified",
         "TDX evidence failed verification"),
        ("policy.gpu_evidence", F, "policy.gpu_not_verified",
         "NVIDIA GPU evidence failed verification"),
    ], id="neither-required-present-bad"),
    pytest.param(RequireEvidence(tdx=False, nvidia=False), GOOD, [
        ("policy.tdx_evidence", P, None, "TDX evidence verified"),
        ("policy.gpu_evidence", P, None, "NVIDIA GPU evidence verified"),
    ], id="neither-required-present-good"),
    # Each flag governs its own evidence only.
    pytest.param(RequireEvidence(tdx=True, nvidia=False), NO_EVIDENCE, [
        ("policy.tdx_evidence", F, "policy.tdx_required", "TDX evidence required but absent"),
        ("policy.gpu_evidence", P, None, "NVIDIA GPU evidence not required by policy"),
    ], id="tdx-only-required"),
    pytest.param(RequireEvidence(tdx=False, nvidia=True), NO_EVIDENCE, [
        ("policy.tdx_evidence", P, None, "TDX evidence not required by policy"),
        ("policy.gpu_evidence", F, "policy.gpu_required",
         "NVIDIA GPU evidence required but absent"),
    ], id="gpu-only-required"),
])
def test_require_evidence_checks(rule: RequireEvidence, facts: NodeFacts,
                                 rows: list[tuple[str, Status, str | None, str]]) -> None:
    assert _rows(rule.evaluate(facts)) == rows


# -- AllowedValues ------------------------------------------------------------------------------


def test_a_pin_reads_like_the_register_whatever_its_spelling() -> None:
    # A pin copied with a 0X prefix, upper case and a trailing newline (as from a shell) still
    # matches, and the fact's own 0x prefix is ignored too; the detail shows the normal form.
    rule = AllowedValues("mrtd", frozenset({" 0X" + MRTD.upper() + "\n"}))
    assert rule.allowed == frozenset({MRTD})
    assert _rows(rule.evaluate(_facts(mrtd="0x" + MRTD.upper()))) == [
        ("policy.mrtd", P, None, f"mrtd {MRTD} is allowed")]


def test_a_value_that_only_starts_like_a_prefix_is_not_shortened() -> None:
    # Only a leading "0x" is a prefix: "x0" + value is a different (wrong) value.
    rule = AllowedValues("compose_hash", frozenset({COMPOSE}))
    assert _rows(rule.evaluate(_facts(compose_hash="x0" + COMPOSE))) == [
        ("policy.compose_hash", F, "policy.compose_hash_not_allowed",
         f"compose_hash x0{COMPOSE} is not in the policy's allow-list")]


@pytest.mark.parametrize("field", ["rtmr0", "rtmr1", "rtmr2", "app_id", "os_image_hash"])
def test_every_fact_field_is_pinned_by_its_own_name(field: str) -> None:
    value = getattr(GOOD, field)
    rule = AllowedValues(field, frozenset({value}))  # type: ignore[arg-type]
    assert _rows(rule.evaluate(GOOD)) == [(f"policy.{field}", P, None,
                                           f"{field} {value} is allowed")]
    assert _rows(rule.evaluate(_facts(**{field: None}))) == [
        (f"policy.{field}", F, f"policy.{field}_not_allowed",
         f"{field} is pinned but was not established")]


# -- TCB status and advisories ------------------------------------------------------------------


def test_tcb_status_checks() -> None:
    accepted = AcceptedTcbStatuses(frozenset({"UpToDate", "SWHardeningNeeded"}))
    assert _rows(accepted.evaluate(GOOD)) == [
        ("policy.tcb_status", P, None, "TCB status UpToDate accepted")]
    # Sorted, so the detail is the same on every run.
    assert _rows(accepted.evaluate(_facts(tcb_status="OutOfDate"))) == [
        ("policy.tcb_status", F, "policy.tcb_status_not_allowed",
         "TCB status OutOfDate not accepted (accepted: SWHardeningNeeded, UpToDate)")]
    assert _rows(accepted.evaluate(_facts(tcb_status=None))) == [
        ("policy.tcb_status", F, "policy.tcb_status_not_allowed",
         "no TCB status: no verified TDX quote")]
    # Without a quote there is no TCB to judge: RequireEvidence decides whether one was needed.
    assert _rows(accepted.evaluate(NO_EVIDENCE)) == [
        ("policy.tcb_status", P, None, "no TDX quote: no TCB status to judge")]
    assert _rows(AcceptedTcbStatuses(frozenset()).evaluate(GOOD)) == [
        ("policy.tcb_status", F, "policy.tcb_status_not_allowed",
         "TCB status UpToDate not accepted (accepted: none)")]


def test_advisory_checks() -> None:
    facts = _facts(advisory_ids=("INTEL-SA-00837", "INTEL-SA-00615", "INTEL-SA-00999"))
    assert _rows(ToleratedAdvisories(frozenset({"INTEL-SA-00837"})).evaluate(facts)) == [
        ("policy.advisories", F, "policy.advisory_not_tolerated",
         "advisories not tolerated by policy: INTEL-SA-00615, INTEL-SA-00999")]
    everything = ToleratedAdvisories(frozenset(facts.advisory_ids))
    assert _rows(everything.evaluate(facts)) == [
        ("policy.advisories", P, None,
         "advisories tolerated: INTEL-SA-00837, INTEL-SA-00615, INTEL-SA-00999")]
    assert _rows(ToleratedAdvisories(frozenset()).evaluate(GOOD)) == [
        ("policy.advisories", P, None, "advisories tolerated: none")]


# -- composition ------------------------------------------------------------------------------


def test_empty_composites_name_themselves() -> None:
    assert _rows(AllOf([]).evaluate(GOOD)) == [
        ("policy.all_of", F, "policy.empty", "all-of with no rules")]
    assert _rows(AnyOf([]).evaluate(GOOD)) == [
        ("policy.any_of", F, "policy.empty", "any-of with no alternatives")]


class _Silent:
    """A rule that returns no checks (a rule that judged nothing)."""

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        return ()


def test_an_alternative_that_checks_nothing_never_passes_an_any_of() -> None:
    rule = AnyOf([_Silent(), AllowedValues("mrtd", frozenset({MRTD}))])
    assert _rows(rule.evaluate(GOOD)) == [
        ("policy.any_of", P, None, "alternative 2 of 2 passed"),
        ("policy.mrtd", P, None, f"mrtd {MRTD} is allowed")]
    assert _rows(AnyOf([_Silent()]).evaluate(GOOD)) == [
        ("policy.any_of", F, "policy.any_of_failed",
         "no alternative passed (alternative 1: no checks)")]


def test_a_failed_any_of_names_every_failure_of_every_alternative() -> None:
    old = AllOf([AllowedValues("mrtd", frozenset({"ee" * 48})),
                 AllowedValues("compose_hash", frozenset({"ff" * 32}))])
    other = AllowedValues("app_id", frozenset({"12" * 20}))
    (check,) = AnyOf([old, other]).evaluate(GOOD)
    assert (check.name, check.status, check.code) == ("policy.any_of", F, "policy.any_of_failed")
    assert check.detail == (
        "no alternative passed ("
        f"alternative 1: policy.mrtd_not_allowed: mrtd {MRTD} is not in the policy's allow-list; "
        f"policy.compose_hash_not_allowed: compose_hash {COMPOSE} is not in the policy's "
        "allow-list | "
        f"alternative 2: policy.app_id_not_allowed: app_id {'cc' * 20} is not in the policy's "
        "allow-list)")


def test_a_passing_any_of_returns_its_alternatives_checks_after_its_own() -> None:
    first = AllowedValues("mrtd", frozenset({MRTD}))
    rule = AnyOf([first, AllowedValues("app_id", frozenset({"cc" * 20}))])
    assert _rows(rule.evaluate(GOOD)) == [
        ("policy.any_of", P, None, "alternative 1 of 2 passed"),
        ("policy.mrtd", P, None, f"mrtd {MRTD} is allowed")]


# -- reports --------------------------------------------------------------------------------


def test_a_policy_report_carries_its_entry() -> None:
    entry = build_model_policy("TEE/flagged-*", on_failure="flag")
    report = entry.report(GOOD)
    assert (report.pattern, report.on_failure, report.ok) == ("TEE/flagged-*", "flag", True)
    assert report.checks == entry.evaluate(GOOD)


def test_a_policy_report_without_checks_raises_policy_empty() -> None:
    report = PolicyReport("TEE/x", (), "block")
    assert not report.ok
    with pytest.raises(VerificationFailed) as info:
        report.raise_for_failure()
    assert (info.value.code, info.value.message) == ("policy.empty", "policy returned no checks")


def test_a_failing_policy_report_raises_the_check_detail() -> None:
    report = build_model_policy("TEE/x").report(_facts(tcb_status="OutOfDate"))
    with pytest.raises(VerificationFailed) as info:
        report.raise_for_failure()
    assert (info.value.code, info.value.message) == (
        "policy.tcb_status_not_allowed", "TCB status OutOfDate not accepted (accepted: UpToDate)")


def test_a_compose_manager_quote_is_judged_by_the_entry_tcb_rules() -> None:
    entry = build_model_policy("TEE/x", accepted_tcb_statuses=["UpToDate", "SWHardeningNeeded"],
                               tolerated_advisories=["INTEL-SA-00837"])
    assert _rows(entry.tcb_checks("SWHardeningNeeded", ["INTEL-SA-00837"])) == [
        ("policy.tcb_status", P, None, "TCB status SWHardeningNeeded accepted"),
        ("policy.advisories", P, None, "advisories tolerated: INTEL-SA-00837")]
    assert _rows(entry.tcb_checks(None, ["INTEL-SA-00615"])) == [
        ("policy.tcb_status", F, "policy.tcb_status_not_allowed",
         "no TCB status: no verified TDX quote"),
        ("policy.advisories", F, "policy.advisory_not_tolerated",
         "advisories not tolerated by policy: INTEL-SA-00615")]


# -- build_model_policy -----------------------------------------------------------------------


def test_a_built_policy_has_the_documented_defaults() -> None:
    entry = build_model_policy("TEE/x")
    assert (entry.pattern, entry.attestation_ttl_seconds, entry.on_failure) == (
        "TEE/x", 3600, "block")
    assert (entry.identity, entry.identity_pins, entry.provenance, entry.e2ee) == (
        "tofu", (), None, None)
    assert entry.requires_attestation
    assert [c.name for c in entry.evaluate(GOOD)] == [
        "policy.tdx_evidence", "policy.gpu_evidence", "policy.tcb_status", "policy.advisories"]
    assert [c.code for c in entry.report(NO_EVIDENCE).failures] == [
        "policy.tdx_required", "policy.gpu_required"]


def test_a_built_policy_keeps_every_setting() -> None:
    provenance = ProvenanceRequirement("https://github.com/example/model")
    entry = build_model_policy("TEE/x", attestation_ttl_seconds=60, identity="pinned",
                               identity_pins=[PIN], provenance=provenance, e2ee="required")
    assert (entry.attestation_ttl_seconds, entry.identity, entry.identity_pins) == (
        60, "pinned", (PIN,))
    assert (entry.provenance, entry.e2ee) == (provenance, "required")


@pytest.mark.parametrize(("tdx", "nvidia", "requires", "identity"), [
    (True, True, True, "tofu"),
    (True, False, True, "tofu"),
    (False, True, True, "any"),
    (False, False, False, "any"),
])
def test_what_a_built_policy_requires(tdx: bool, nvidia: bool, requires: bool,
                                      identity: str) -> None:
    entry = build_model_policy("TEE/x", require_tdx=tdx, require_nvidia=nvidia)
    assert entry.requires_attestation is requires
    assert entry.identity == identity  # no quote, no identity to pin
    failures = [c.code for c in entry.report(NO_EVIDENCE).failures]
    assert failures == [code for code, needed in (("policy.tdx_required", tdx),
                                                  ("policy.gpu_required", nvidia)) if needed]


@pytest.mark.parametrize(("settings", "message"), [
    pytest.param({"require_tdx": False, "identity": "tofu"},
                 'identity = "tofu" needs a verified TDX quote, but TDX is not required',
                 id="tofu-without-tdx"),
    pytest.param({"require_tdx": False, "identity": "pinned", "identity_pins": [PIN]},
                 'identity = "pinned" needs a verified TDX quote, but TDX is not required',
                 id="pinned-without-tdx"),
    pytest.param({"identity": "pinned"}, 'identity = "pinned" needs at least one pin',
                 id="pinned-without-pins"),
    pytest.param({"identity": "any", "identity_pins": [PIN]},
                 'identity = "any" ignores pins: list none, or choose "tofu"/"pinned"',
                 id="any-with-pins"),
    pytest.param({"require_tdx": False,
                  "provenance": ProvenanceRequirement("https://github.com/example/model")},
                 "image provenance needs the compose a verified TDX quote binds",
                 id="provenance-without-tdx"),
    pytest.param({"require_tdx": False, "measurement_sets": [{"mrtd": [MRTD]}]},
                 "measurements are pinned but TDX evidence is not required",
                 id="pins-without-tdx"),
    pytest.param({"measurement_sets": [{"mrtd": [MRTD]}, {}]}, "measurement set 1 pins nothing",
                 id="empty-second-set"),
])
def test_build_model_policy_refuses_contradictions(settings: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(ValueError) as info:
        build_model_policy("TEE/x", **settings)
    assert str(info.value) == message


def test_identity_with_pins_is_accepted_where_it_makes_sense() -> None:
    assert build_model_policy("TEE/x", identity="tofu", identity_pins=[PIN]).identity_pins == (
        PIN,)
    assert build_model_policy("TEE/x", identity="any").identity == "any"


# -- who may pass unattested ------------------------------------------------------------------


@pytest.mark.parametrize(("allow", "entry_requires", "may_pass"), [
    (True, False, True),
    (True, True, False),  # allowed in general, but this model's entry requires attestation
    (False, False, False),  # the entry requires nothing, but the set does not allow it
    (False, True, False),
])
def test_may_pass_unattested(allow: bool, entry_requires: bool, may_pass: bool) -> None:
    entry = build_model_policy("open/*", require_tdx=entry_requires,
                               require_nvidia=entry_requires)
    policy_set = PolicySet(models=(entry,), allow_unattested_models=allow)
    assert policy_set.may_pass_unattested("open/llama") is may_pass
    # Another model falls to the default, which requires attestation.
    assert policy_set.may_pass_unattested("TEE/other") is False
