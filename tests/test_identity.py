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
from sidecar.verify.checks import Check, Status
from sidecar.verify.compose import check_compose_binding, parse_info
from sidecar.verify.eventlog import verify_event_log
from sidecar.verify.identity import (
    IDENTITY_FIELDS,
    MAX_KEY_PROVIDER_CHARS,
    DeploymentFacts,
    DeploymentIdentity,
    check_identity,
    describe_change,
    deployment_identity,
    distinct,
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
    with pytest.raises(VerificationFailed) as info:
        deployment_identity(node)
    assert info.value.code == "policy.identity_unestablished"
    assert info.value.message == ("deployment identity of node node-0 not established: "
                                  "the node did not pass every check")


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


# -- what a user reads, pinned exactly ----------------------------------------------------------


def _real_identity() -> DeploymentIdentity:
    return deployment_identity(_node_from_real(REPORT["model_attestations"][0], "model"))


def test_fingerprint_is_sha256_of_the_sorted_compact_json() -> None:
    identity = _real_identity()
    as_json = identity.to_json()
    assert as_json["images"] == list(identity.images) and isinstance(as_json["images"], list)
    assert set(as_json) == {"role", *IDENTITY_FIELDS}
    canonical = json.dumps(as_json, sort_keys=True, separators=(",", ":"))
    assert identity.fingerprint == hashlib.sha256(canonical.encode()).hexdigest()
    assert dataclasses.replace(identity, role="gateway").fingerprint != identity.fingerprint


def test_passing_identity_check_names_role_fingerprint_model_and_source() -> None:
    identity = _real_identity()
    check = check_identity(identity, [identity], model=MODEL, source="pinned on first use")
    assert check == Check.passed(
        "policy.identity",
        f"model identity {identity.fingerprint[:16]} of {MODEL} is pinned on first use")


def test_identity_check_with_no_pin_of_the_role_reads_exactly() -> None:
    identity = _real_identity()
    check = check_identity(identity, [], model=MODEL, source="listed in the policy",
                           code="policy.identity_not_pinned")
    assert check == Check.failed(
        "policy.identity", "policy.identity_not_pinned",
        f"no model identity of {MODEL} is listed in the policy; "
        f"this node runs {identity.fingerprint[:16]}")


def test_changed_identity_check_reads_exactly_with_every_kind_of_value() -> None:
    pinned = _real_identity()
    changed = dataclasses.replace(
        pinned, os_image_hash=None, images=("a@sha256:" + "1" * 64, "b:latest"),
        key_provider='{"name":"local"}')
    check = check_identity(changed, [pinned], model=MODEL, source="pinned on first use")
    assert check.name == "policy.identity"
    assert check.status is Status.FAIL and check.code == "policy.identity_changed"
    old_images = "[" + ", ".join(pinned.images) + "]"
    assert check.detail == (
        f"model identity of {MODEL} changed from {pinned.fingerprint[:16]} (pinned on first use): "
        f"os_image_hash {pinned.os_image_hash[:16]}… → (none); "  # type: ignore[index]
        f"key_provider {pinned.key_provider} → {{\"name\":\"local\"}}; "
        f"images {old_images} → [a@sha256:{'1' * 64}, b:latest]")


def test_describe_change_cuts_only_hex_longer_than_16() -> None:
    pinned = _real_identity()
    # 16 hex characters are shown whole; a 17-character non-hex text is not cut either.
    exact = dataclasses.replace(pinned, key_provider="0123456789abcdef")
    text = dataclasses.replace(pinned, key_provider="0123456789abcdefg")
    longer = dataclasses.replace(pinned, key_provider="0123456789abcdef0")
    assert describe_change(exact, text) == \
        "key_provider 0123456789abcdef → 0123456789abcdefg"
    assert describe_change(text, longer) == \
        "key_provider 0123456789abcdefg → 0123456789abcdef…"
    assert describe_change(pinned, pinned) == "no change"
    # Only lower-case hex digits count as hex: an upper-case "0X" spelling is text, shown whole.
    spelled = dataclasses.replace(pinned, key_provider="0X0123456789abcdef")
    assert describe_change(exact, spelled) == \
        "key_provider 0123456789abcdef → 0X0123456789abcdef"


def test_differences_are_listed_firmware_first() -> None:
    pinned = _real_identity()
    changed = dataclasses.replace(pinned, images=(), compose_hash="00" * 32, rtmr2="00" * 48,
                                  mrtd="11" * 48)
    assert [name for name, _, _ in identity_differences(pinned, changed)] == \
        ["mrtd", "rtmr2", "compose_hash", "images"]
    assert identity_differences(pinned, changed)[0] == ("mrtd", pinned.mrtd, "11" * 48)


def test_an_identity_of_another_role_is_not_the_closest_pin() -> None:
    pinned = _real_identity()
    gateway_twin = dataclasses.replace(pinned, role="gateway", os_image_hash=None)
    far = dataclasses.replace(pinned, mrtd="00" * 48, rtmr0="00" * 48)
    observed = dataclasses.replace(pinned, os_image_hash=None)
    check = check_identity(observed, [gateway_twin, far], model=MODEL, source="pinned")
    assert check.detail.startswith(f"model identity of {MODEL} changed from {far.fingerprint[:16]}")
    assert not check_identity(observed, [gateway_twin], model=MODEL, source="pinned").detail \
        .startswith("model identity")


def test_distinct_keeps_first_seen_order() -> None:
    first = _real_identity()
    second = dataclasses.replace(first, mrtd="00" * 48)
    assert distinct([second, first, second, first]) == (second, first)
    assert distinct([]) == ()


def test_identity_json_is_normalised_on_read() -> None:
    identity = _real_identity()
    written = identity.to_json()
    written["mrtd"] = " 0X" + identity.mrtd.upper() + " "
    written["compose_hash"] = "0x" + str(identity.compose_hash)
    written["os_image_hash"] = None
    written["images"] = [*reversed(identity.images), identity.images[0]]
    read = DeploymentIdentity.from_json(written)
    assert read == dataclasses.replace(identity, os_image_hash=None)


@pytest.mark.parametrize(("change", "message"), [
    ({"mrtd": 5}, "mrtd must be a hex string"),
    ({"mrtd": None}, "mrtd must be a hex string"),
    ({"rtmr0": "0x" + "ab" * 47 + "a"}, "rtmr0 is not hex"),
    ({"rtmr2": "ab" * 49}, "rtmr2 must be 48 bytes, not 49"),
    ({"os_image_hash": "ab" * 31}, "os_image_hash must be 32 bytes, not 31"),
    ({"compose_hash": 1}, "compose_hash must be a hex string"),
    ({"role": 1}, "role must be a non-empty string"),
    ({"images": ["a", ""]}, "images must be a list of image references"),
    ({"images": ["a", 1]}, "images must be a list of image references"),
    ({"key_provider": "k" * (MAX_KEY_PROVIDER_CHARS + 1)}, "key_provider must be a string or null"),
    ({"extra": 1}, "identity fields missing [] or unknown ['extra']"),
])
def test_identity_json_refusal_reads_exactly(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        DeploymentIdentity.from_json({**_real_identity().to_json(), **change})
    assert str(info.value) == message


def test_identity_json_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="^an identity must be an object$"):
        DeploymentIdentity.from_json([])
    fields_only = _real_identity().to_json()
    del fields_only["role"], fields_only["images"]
    with pytest.raises(ValueError) as info:
        DeploymentIdentity.from_json(fields_only)
    assert str(info.value) == "identity fields missing ['images', 'role'] or unknown []"


def test_key_provider_at_its_bound_is_kept() -> None:
    payload = "k" * MAX_KEY_PROVIDER_CHARS
    read = DeploymentIdentity.from_json({**_real_identity().to_json(), "key_provider": payload})
    assert read.key_provider == payload
    read = DeploymentIdentity.from_json({**_real_identity().to_json(), "key_provider": None})
    assert read.key_provider is None


def test_facts_from_verified_events_read_each_payload() -> None:
    events = {"compose-hash": b"\x01" * 32, "os-image-hash": b"\x02" * 32,
              "key-provider": b'{"name":"kms"}', "app-id": b"\x03" * 20}
    assert DeploymentFacts.from_verified("compose", events) == DeploymentFacts(
        app_compose="compose", compose_hash="01" * 32, os_image_hash="02" * 32,
        key_provider='{"name":"kms"}')
    assert DeploymentFacts.from_verified("compose", {}) == DeploymentFacts("compose")


@pytest.mark.parametrize("register", ["mrtd", "rtmr0", "rtmr1", "rtmr2", "mr_config_id"])
def test_identity_without_a_verified_register_is_not_established(register: str) -> None:
    node = _node_from_real(REPORT["model_attestations"][0], "model")
    measurements = {k: v for k, v in node.measurements.items() if k != register}
    with pytest.raises(VerificationFailed) as info:
        deployment_identity(dataclasses.replace(node, measurements=measurements))
    assert info.value.message == ("deployment identity of node node-0 not established: "
                                  "no verified registers or compose")
    assert info.value.code == "policy.identity_unestablished"


def test_unreadable_compose_names_why_in_the_message() -> None:
    node = _node_from_real(REPORT["model_attestations"][0], "model")
    assert node.deployment is not None
    broken = dataclasses.replace(node, deployment=dataclasses.replace(
        node.deployment, app_compose='{"docker_compose_file": 1}'))
    with pytest.raises(VerificationFailed) as info:
        deployment_identity(broken)
    assert info.value.message == ("deployment identity of node node-0 not established: "
                                  "app_compose.docker_compose_file must be a string")


def test_images_are_sorted_and_distinct() -> None:
    # The real compose names certbot/dns-cloudflare twice.
    identity = _real_identity()
    assert identity.images == tuple(sorted(set(identity.images)))
    assert len(identity.images) == 4
    assert identity.images[0].startswith("${COMPOSE_MANAGER_IMAGE")
