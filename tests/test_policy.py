"""Policy engine (``sidecar.verify.policy``): rules, composition, per-model lookup; and the policy
file loader (``sidecar.policy_file``)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import ConfigError, VerificationFailed
from sidecar.policy_file import load_policy
from sidecar.simulator.dstack import build_node_identity
from sidecar.verify.checks import Check, Status
from sidecar.verify.eventlog import verify_event_log
from sidecar.verify.policy import (
    AcceptedTcbStatuses,
    AllOf,
    AllowedValues,
    AnyOf,
    GpuRequirements,
    NodeFacts,
    PolicySet,
    RequireEvidence,
    ToleratedAdvisories,
    build_model_policy,
)

REPO = Path(__file__).resolve().parent.parent
MRTD = "aa" * 48
COMPOSE = "bb" * 32

GOOD = NodeFacts(
    has_tdx=True,
    has_nvidia=True,
    tdx_ok=True,
    gpu_ok=True,
    mrtd=MRTD,
    rtmr0="01" * 48,
    rtmr1="02" * 48,
    rtmr2="03" * 48,
    compose_hash=COMPOSE,
    app_id="cc" * 20,
    os_image_hash="dd" * 32,
    tcb_status="UpToDate",
)


def _facts(**changes: Any) -> NodeFacts:
    return dataclasses.replace(GOOD, **changes)


def _failures(checks: tuple[Check, ...]) -> list[tuple[str, str | None]]:
    return [(c.name, c.code) for c in checks if not c.ok]


# -- single rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "facts", "failures"),
    [
        (RequireEvidence(), GOOD, []),
        (
            RequireEvidence(),
            _facts(has_nvidia=False, gpu_ok=False),
            [("policy.gpu_evidence", "policy.gpu_required")],
        ),
        (
            RequireEvidence(),
            _facts(has_tdx=False, tdx_ok=False),
            [("policy.tdx_evidence", "policy.tdx_required")],
        ),
        (
            RequireEvidence(),
            _facts(tdx_ok=False),
            [("policy.tdx_evidence", "policy.tdx_not_verified")],
        ),
        (RequireEvidence(nvidia=False), _facts(has_nvidia=False, gpu_ok=False), []),
        # Evidence sent but bad fails even when not required.
        (
            RequireEvidence(nvidia=False),
            _facts(gpu_ok=False),
            [("policy.gpu_evidence", "policy.gpu_not_verified")],
        ),
        (
            RequireEvidence(tdx=False, nvidia=False),
            _facts(has_tdx=False, tdx_ok=False, has_nvidia=False, gpu_ok=False),
            [],
        ),
    ],
    ids=[
        "both-present",
        "gpu-missing",
        "tdx-missing",
        "tdx-bad",
        "gpu-optional-absent",
        "gpu-optional-but-bad",
        "nothing-required",
    ],
)
def test_require_evidence(
    rule: RequireEvidence, facts: NodeFacts, failures: list[tuple[str, str]]
) -> None:
    assert _failures(rule.evaluate(facts)) == failures


def test_allowed_mrtd_passes_case_and_prefix_insensitive() -> None:
    rule = AllowedValues("mrtd", frozenset({"0x" + MRTD.upper()}))
    assert all(c.ok for c in rule.evaluate(GOOD))


def test_wrong_mrtd_fails_pin() -> None:
    rule = AllowedValues("mrtd", frozenset({MRTD}))
    (check,) = rule.evaluate(_facts(mrtd="ee" * 48))
    assert (check.name, check.code) == ("policy.mrtd", "policy.mrtd_not_allowed")
    assert check.detail == f"mrtd {'ee' * 48} is not in the policy's allow-list"


def test_pin_on_unestablished_fact_fails() -> None:
    (check,) = AllowedValues("compose_hash", frozenset({COMPOSE})).evaluate(
        _facts(compose_hash=None)
    )
    assert check.code == "policy.compose_hash_not_allowed"
    assert check.detail == "compose_hash is pinned but was not established"


def test_unknown_fact_cannot_be_pinned() -> None:
    with pytest.raises(ValueError, match="cannot pin unknown fact 'report_data'"):
        AllowedValues("report_data", frozenset())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "ok"), [("UpToDate", True), ("OutOfDate", False), ("Revoked", False), (None, False)]
)
def test_tcb_status(status: str | None, ok: bool) -> None:
    (check,) = AcceptedTcbStatuses(frozenset({"UpToDate"})).evaluate(_facts(tcb_status=status))
    assert check.ok is ok
    if not ok:
        assert check.code == "policy.tcb_status_not_allowed"


def test_tcb_status_not_allowed_message() -> None:
    (check,) = AcceptedTcbStatuses(frozenset({"UpToDate"})).evaluate(_facts(tcb_status="OutOfDate"))
    assert check.detail == "TCB status OutOfDate not accepted (accepted: UpToDate)"


def test_advisories_must_be_tolerated() -> None:
    facts = _facts(
        tcb_status="SWHardeningNeeded", advisory_ids=("INTEL-SA-00837", "INTEL-SA-00615")
    )
    rule = ToleratedAdvisories(frozenset({"INTEL-SA-00615"}))
    (check,) = rule.evaluate(facts)
    assert check.code == "policy.advisory_not_tolerated"
    assert check.detail == "advisories not tolerated by policy: INTEL-SA-00837"
    both = ToleratedAdvisories(frozenset({"INTEL-SA-00615", "INTEL-SA-00837"}))
    assert all(c.ok for c in both.evaluate(facts))


# -- composition ------------------------------------------------------------------------------


@pytest.mark.parametrize("composite", [AllOf([]), AnyOf([])], ids=["all-of", "any-of"])
def test_empty_composite_fails(composite: AllOf | AnyOf) -> None:
    (check,) = composite.evaluate(GOOD)
    assert check.status is Status.FAIL
    assert check.code == "policy.empty"


def test_all_of_returns_every_check() -> None:
    rule = AllOf([RequireEvidence(), AllowedValues("mrtd", frozenset({"ee" * 48}))])
    checks = rule.evaluate(GOOD)
    assert [c.name for c in checks] == ["policy.tdx_evidence", "policy.gpu_evidence", "policy.mrtd"]
    assert _failures(checks) == [("policy.mrtd", "policy.mrtd_not_allowed")]


def test_any_of_passes_on_one_alternative() -> None:
    old = AllOf(
        [
            AllowedValues("mrtd", frozenset({"ee" * 48})),
            AllowedValues("compose_hash", frozenset({"ff" * 32})),
        ]
    )
    new = AllOf(
        [
            AllowedValues("mrtd", frozenset({MRTD})),
            AllowedValues("compose_hash", frozenset({COMPOSE})),
        ]
    )
    checks = AnyOf([old, new]).evaluate(GOOD)
    assert all(c.ok for c in checks)
    assert checks[0].detail == "alternative 2 of 2 passed"


def test_any_of_refuses_mixing_alternatives() -> None:
    # Old MRTD with new compose matches neither release as a whole.
    old = AllOf(
        [
            AllowedValues("mrtd", frozenset({"ee" * 48})),
            AllowedValues("compose_hash", frozenset({"ff" * 32})),
        ]
    )
    new = AllOf(
        [
            AllowedValues("mrtd", frozenset({MRTD})),
            AllowedValues("compose_hash", frozenset({COMPOSE})),
        ]
    )
    (check,) = AnyOf([old, new]).evaluate(_facts(mrtd="ee" * 48))
    assert check.code == "policy.any_of_failed"
    assert check.detail.startswith(
        "no alternative passed (alternative 1: policy.compose_hash_not_allowed"
    )


# -- model policies and the set ---------------------------------------------------------------


def test_pinned_model_policy_rejects_wrong_mrtd() -> None:
    policy = build_model_policy(
        "TEE/pinned", measurement_sets=[{"mrtd": [MRTD], "compose_hash": [COMPOSE]}]
    )
    assert policy.report(GOOD).ok
    report = policy.report(_facts(mrtd="ee" * 48))
    assert not report.ok and report.on_failure == "block"
    with pytest.raises(
        VerificationFailed, match=f"mrtd {'ee' * 48} is not in the policy's allow-list"
    ) as info:
        report.raise_for_failure()
    assert info.value.code == "policy.mrtd_not_allowed"


def test_default_policy_rejects_out_of_date_tcb() -> None:
    report = load_policy(None).for_model("anything").report(_facts(tcb_status="OutOfDate"))
    assert [c.code for c in report.failures] == ["policy.tcb_status_not_allowed"]


def test_builtin_default() -> None:
    policy_set = load_policy(None)
    entry = policy_set.for_model("TEE/whatever")
    assert entry.attestation_ttl_seconds == 3600
    assert entry.on_failure == "block"
    assert entry.accepted_tcb_statuses == frozenset({"UpToDate"})
    assert entry.gpu == GpuRequirements()
    assert entry.report(GOOD).ok
    assert not entry.report(_facts(has_nvidia=False, gpu_ok=False)).ok
    assert not policy_set.allow_unattested_models


def test_first_matching_glob_wins() -> None:
    specific = build_model_policy("TEE/llama-*", on_failure="flag")
    general = build_model_policy("TEE/*")
    policy_set = PolicySet(models=(specific, general))
    assert policy_set.for_model("TEE/llama-3") is specific
    assert policy_set.for_model("TEE/qwen") is general
    assert policy_set.for_model("tee/qwen") is policy_set.default  # case-sensitive


def test_unknown_model_under_strict_policy_is_refused() -> None:
    policy_set = PolicySet(models=(build_model_policy("TEE/*"),), strict=True, source="p.toml")
    with pytest.raises(
        VerificationFailed, match="model 'gpt-4o' matches no entry of the strict policy p.toml"
    ) as info:
        policy_set.for_model("gpt-4o")
    assert info.value.code == "policy.model_not_allowed"


def test_strict_policy_allowing_unattested_models_flags_them() -> None:
    policy_set = PolicySet(strict=True, allow_unattested_models=True)
    entry = policy_set.for_model("gpt-4o")
    assert entry.on_failure == "flag" and not entry.requires_attestation
    assert entry.report(_facts(has_tdx=False, tdx_ok=False, has_nvidia=False, gpu_ok=False)).ok


def test_facts_from_a_simulated_node_meet_a_compose_pin() -> None:
    node = build_node_identity(app_id="ab" * 20, instance_id="cd" * 20, os_image_hash=b"\x11" * 32)
    events = verify_event_log(node.event_log, rtmr3=node.rtmr3)
    facts = NodeFacts(
        has_tdx=True,
        has_nvidia=True,
        tdx_ok=events.ok,
        gpu_ok=True,
        mrtd=node.mrtd.hex(),
        compose_hash=events.runtime_events["compose-hash"].hex(),
        app_id=events.runtime_events["app-id"].hex(),
        os_image_hash=events.runtime_events["os-image-hash"].hex(),
        tcb_status="UpToDate",
    )
    policy = build_model_policy(
        "*",
        measurement_sets=[{"mrtd": [node.mrtd.hex()], "compose_hash": [node.compose_hash.hex()]}],
    )
    assert policy.report(facts).ok


# -- the policy file ------------------------------------------------------------------------


def test_example_policy_file_loads() -> None:
    policy_set = load_policy(REPO / "config" / "policy.toml")
    assert not policy_set.strict and not policy_set.allow_unattested_models
    assert [m.pattern for m in policy_set.models] == [
        "TEE/my-audited-model",
        "TEE/experimental-*",
        "TEE/*",
    ]
    pinned = policy_set.for_model("TEE/my-audited-model")
    assert pinned.attestation_ttl_seconds == 900
    assert pinned.gpu.allowed_driver_versions == frozenset({"550.127.05", "570.124.06"})
    assert pinned.gpu.require_secure_boot  # inherited from [defaults.gpu]
    assert [c.code for c in pinned.report(GOOD).failures] == [
        "policy.mrtd_not_allowed",
        "policy.compose_hash_not_allowed",
        "policy.os_image_hash_not_allowed",
    ]
    assert policy_set.for_model("TEE/experimental-x").on_failure == "flag"
    assert policy_set.for_model("TEE/other").report(GOOD).ok
    assert policy_set.for_model("gpt-4o") is policy_set.default


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_strict_file_with_pins_and_alternatives(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""
        strict = true
        [defaults]
        accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
        tolerated_advisories = ["INTEL-SA-00837"]
        [models."TEE/*"]
        attestation_ttl_seconds = 600
        [[models."TEE/*".measurements]]
        mrtd = ["{"ee" * 48}"]
        compose_hash = ["{"ff" * 32}"]
        [[models."TEE/*".measurements]]
        mrtd = ["{MRTD}"]
        compose_hash = ["{COMPOSE}"]
        """,
    )
    policy_set = load_policy(path)
    entry = policy_set.for_model("TEE/x")
    assert entry.attestation_ttl_seconds == 600
    assert entry.tolerated_advisories == frozenset({"INTEL-SA-00837"})
    assert entry.report(_facts(tcb_status="SWHardeningNeeded", advisory_ids=("INTEL-SA-00837",))).ok
    assert [c.code for c in entry.report(_facts(compose_hash="ff" * 32)).failures] == [
        "policy.any_of_failed"
    ]
    with pytest.raises(VerificationFailed, match="model 'other' matches no entry"):
        policy_set.for_model("other")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 'blue'\n", r"invalid key colour: Extra inputs are not permitted"),
        ("[defaults]\nrequire_sgx = true\n", r"invalid key defaults\.require_sgx: Extra inputs"),
        (
            '[models."TEE/*".gpu]\nsecure_boot = true\n',
            r'invalid key models\."TEE/\*"\.gpu\.secure_boot: Extra inputs',
        ),
        (
            "[defaults]\nattestation_ttl_seconds = '3600'\n",
            r"invalid key defaults\.attestation_ttl_seconds: Input should be a valid integer",
        ),
        (
            "[defaults]\nrequire_tdx = 'yes'\n",
            r"invalid key defaults\.require_tdx: Input should be a valid boolean",
        ),
        (
            "[defaults]\non_failure = 'ignore'\n",
            r"invalid key defaults\.on_failure: Input should be 'block' or 'flag'",
        ),
        (
            "[defaults]\naccepted_tcb_statuses = ['Revoked']\n",
            r"invalid key defaults\.accepted_tcb_statuses\[0\]: Input should be 'UpToDate'",
        ),
        (
            "[defaults]\naccepted_tcb_statuses = []\n",
            r"invalid key defaults\.accepted_tcb_statuses: List should have at least 1 item",
        ),
        (
            "[defaults]\ntolerated_advisories = ['SA-1']\n",
            r"invalid key defaults\.tolerated_advisories\[0\]: String should match",
        ),
        (
            '[[models."m".measurements]]\nmrtd = ["abcd"]\n',
            r'invalid key models\."m"\.measurements\[0\]\.mrtd\[0\]: String should match pattern',
        ),
        (
            '[[models."m".measurements]]\nmrtd = []\n',
            r'invalid key models\."m"\.measurements\[0\]\.mrtd: List should have',
        ),
        ('[[models."m".measurements]]\n', r'models\."m"\.measurements\[0\] pins nothing'),
        (
            '[models."m"]\nrequire_tdx = false\n',
            r'models\."m"\.require_tdx = false lets models pass without TEE attestation',
        ),
        (
            'allow_unattested_models = true\n[models."m"]\nrequire_tdx = false\n'
            f'[[models."m".measurements]]\nmrtd = ["{MRTD}"]\n',
            r'models\."m"\.measurements pin a TDX quote but require_tdx is false',
        ),
        ("strict = \n", r"is not valid TOML"),
    ],
    ids=[
        "unknown-top-key",
        "unknown-defaults-key",
        "unknown-gpu-key",
        "ttl-string",
        "bool-string",
        "bad-on-failure",
        "revoked-status",
        "empty-statuses",
        "bad-advisory-id",
        "short-mrtd",
        "empty-pin-list",
        "empty-measurement-set",
        "unattested-not-allowed",
        "pins-without-tdx",
        "not-toml",
    ],
)
def test_bad_policy_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_policy(_write(tmp_path, text))
    assert info.value.code == "config.invalid"


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy file .*nope.toml"):
        load_policy(tmp_path / "nope.toml")


def test_unattested_entry_allowed_when_file_says_so(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        allow_unattested_models = true
        [models."open/*"]
        require_tdx = false
        require_nvidia = false
        on_failure = "flag"
        """,
    )
    entry = load_policy(path).for_model("open/llama")
    assert not entry.requires_attestation
    assert entry.report(_facts(has_tdx=False, tdx_ok=False, has_nvidia=False, gpu_ok=False)).ok


def test_gpu_integrity_claims_can_be_waived_per_model(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[models."TEE/legacy-*".gpu]\nrequire_integrity_claims = false\n')
    policies = load_policy(path)
    assert policies.for_model("TEE/legacy-1").gpu.require_integrity_claims is False
    assert policies.for_model("TEE/other").gpu.require_integrity_claims is True
