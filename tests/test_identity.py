"""Deployment identity (sidecar.verify.identity) on a real NEAR report and on synthetic nodes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.verify.attestation import NodeReport
from sidecar.verify.checks import Check
from sidecar.verify.compose import check_compose_binding, parse_info
from sidecar.verify.eventlog import verify_event_log
from sidecar.verify.identity import (
    DeploymentFacts,
    DeploymentIdentity,
    check_identity,
    deployment_identity,
    identity_differences,
)
from sidecar.verify.tdx import parse_quote_measurements

REPORT = json.loads((Path(__file__).parent / "assets" / "identity" /
                     "near_cloud_report.json").read_text())
MODEL = "zai-org/GLM-5.1-FP8"


def _node_from_real(wire: dict[str, Any], role: str, **changes: Any) -> NodeReport:
    """A NodeReport as verify_node builds it, from the real quote, event log and compose.

    The quote is only parsed (its collateral is not checked in): the registers are real, the
    event log replays to its RTMR3 and the compose is bound by its mr_config_id.
    """
    quote = bytes.fromhex(wire["intel_quote"])
    measured = parse_quote_measurements(quote)
    assert measured is not None
    eventlog = verify_event_log(wire["event_log"], rtmr3=measured.rtmr3)
    assert eventlog.ok, eventlog.checks
    info = parse_info(wire["info"])
    assert check_compose_binding(info.app_compose, measured.mr_config_id).ok
    measurements = {"mrtd": measured.mrtd.hex(), "rtmr0": measured.rtmr0.hex(),
                    "rtmr1": measured.rtmr1.hex(), "rtmr2": measured.rtmr2.hex(),
                    "rtmr3": measured.rtmr3.hex(), "mr_config_id": measured.mr_config_id.hex()}
    node = NodeReport(label="node-0", role=role, signing_key=wire["signing_address"].lower(),
                      algo="ecdsa", checks=(Check.passed("all", "verified"),),
                      measurements=measurements,
                      deployment=DeploymentFacts.from_verified(info.app_compose,
                                                               eventlog.runtime_events))
    return dataclasses.replace(node, **changes)


def test_identity_of_a_real_near_model_node() -> None:
    wire = REPORT["model_attestations"][0]
    identity = deployment_identity(_node_from_real(wire, "model"))
    compose = json.loads(wire["info"]["tcb_info"])["app_compose"] \
        if isinstance(wire["info"]["tcb_info"], str) else wire["info"]["tcb_info"]["app_compose"]
    assert identity.compose_hash == hashlib.sha256(compose.encode()).hexdigest() \
        == "c445f29994165e94e85bdfc4824f4bcba89b0a883f45e7912f1bfd7c2634a698"
    assert identity.mr_config_id.startswith("01" + identity.compose_hash)
    assert identity.os_image_hash == \
        "9b69bb1698bacbb6985409a2c272bcb892e09cdcea63d5399c6768b67d3ff677"
    assert identity.key_provider is not None
    assert json.loads(identity.key_provider)["name"] == "kms"
    assert "datadog/agent@sha256:5556fb80b952832719a76b016f905616c76ee0989a239c4680c6220148e865d6" \
        in identity.images
    assert identity.role == "model"
    # The identity round-trips through the store's JSON form unchanged.
    assert DeploymentIdentity.from_json(json.loads(json.dumps(identity.to_json()))) == identity


def test_gateway_and_model_of_one_report_are_different_identities() -> None:
    model = deployment_identity(_node_from_real(REPORT["model_attestations"][0], "model"))
    gateway = deployment_identity(_node_from_real(REPORT["gateway_attestation"], "gateway"))
    assert gateway.role == "gateway" and gateway != model
    check = check_identity(gateway, [model], model=MODEL, source="pinned")
    assert check.code == "policy.identity_changed"
    assert "no gateway identity" in check.detail


def test_per_instance_values_are_not_part_of_the_identity() -> None:
    wire = REPORT["model_attestations"][0]
    node = _node_from_real(wire, "model")
    other = dataclasses.replace(
        node, label="node-7", signing_key="0x" + "11" * 20, algo="ed25519",
        measurements=dict(node.measurements, rtmr3="ab" * 48), model_name="x")
    assert deployment_identity(other) == deployment_identity(node)


@pytest.mark.parametrize("field", ["mrtd", "rtmr0", "rtmr1", "rtmr2", "mr_config_id"])
def test_a_changed_register_is_a_changed_identity(field: str) -> None:
    node = _node_from_real(REPORT["model_attestations"][0], "model")
    pinned = deployment_identity(node)
    changed = deployment_identity(dataclasses.replace(
        node, measurements=dict(node.measurements, **{field: "cd" * 48})))
    assert [name for name, _, _ in identity_differences(pinned, changed)] == [field]
    check = check_identity(changed, [pinned], model=MODEL, source="pinned (first use)")
    assert check.code == "policy.identity_changed"
    assert f"{field} {getattr(pinned, field)[:16]}… → cdcdcdcdcdcdcdcd…" in check.detail


def test_the_closest_pin_is_named_and_a_custom_code_is_used() -> None:
    node = _node_from_real(REPORT["model_attestations"][0], "model")
    pinned = deployment_identity(node)
    far = dataclasses.replace(pinned, mrtd="00" * 48, rtmr0="00" * 48, os_image_hash=None)
    near = dataclasses.replace(pinned, key_provider='{"name":"local"}')
    check = check_identity(near, [far, pinned], model=MODEL, source="listed in the policy",
                           code="policy.identity_not_pinned")
    assert check.code == "policy.identity_not_pinned"
    assert "key_provider" in check.detail and "mrtd" not in check.detail
    assert check_identity(pinned, [far, pinned], model=MODEL, source="x").ok


def test_identity_of_a_node_that_did_not_pass_is_not_established() -> None:
    node = _node_from_real(REPORT["model_attestations"][0], "model",
                           checks=(Check.failed("x", "binding.nonce_mismatch", "no"),))
    with pytest.raises(VerificationFailed, match="did not pass") as info:
        deployment_identity(node)
    assert info.value.code == "policy.identity_unestablished"


def test_identity_without_verified_deployment_facts_is_not_established() -> None:
    node = _node_from_real(REPORT["model_attestations"][0], "model", deployment=None)
    with pytest.raises(VerificationFailed, match="no verified registers or compose") as info:
        deployment_identity(node)
    assert info.value.code == "policy.identity_unestablished"


def test_identity_of_an_unreadable_compose_is_not_established() -> None:
    node = _node_from_real(REPORT["model_attestations"][0], "model")
    assert node.deployment is not None
    broken = dataclasses.replace(node, deployment=dataclasses.replace(node.deployment,
                                                                      app_compose="not json"))
    with pytest.raises(VerificationFailed) as info:
        deployment_identity(broken)
    assert info.value.code == "policy.identity_unestablished"


def test_key_provider_that_is_not_text_is_kept_as_hex() -> None:
    facts = DeploymentFacts.from_verified("{}", {"key-provider": b"\xff\x00"})
    assert facts.key_provider == "ff00" and facts.compose_hash is None


@pytest.mark.parametrize(("change", "why"), [
    ({"mrtd": "ab" * 47}, "48 bytes"),
    ({"rtmr1": "zz" * 48}, "not hex"),
    ({"compose_hash": "ab" * 48}, "32 bytes"),
    ({"images": "one"}, "images"),
    ({"role": ""}, "role"),
    ({"key_provider": 7}, "key_provider"),
    ({"extra": 1}, "unknown"),
])
def test_identity_json_is_refused_when_malformed(change: dict[str, Any], why: str) -> None:
    good = deployment_identity(_node_from_real(REPORT["model_attestations"][0], "model"))
    with pytest.raises(ValueError, match=why):
        DeploymentIdentity.from_json({**good.to_json(), **change})
    missing = good.to_json()
    del missing["mrtd"]
    with pytest.raises(ValueError, match="missing"):
        DeploymentIdentity.from_json(missing)
