"""Compose bindings: mr_config_id, info vs. runtime events, compose-manager actions, image pins."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.simulator.dstack import (
    DEFAULT_IMAGE_DIGEST,
    SimulatedNode,
    build_node_identity,
    default_app_compose,
)
from sidecar.verify.checks import Check, Status
from sidecar.verify.compose import (
    check_compose_binding,
    check_compose_manager_actions,
    check_images_pinned,
    check_info_events,
    compose_images,
    parse_info,
)
from sidecar.verify.eventlog import verify_event_log

APP_ID = "ab" * 20
INSTANCE_ID = "cd" * 20


def _node(**knobs: Any) -> SimulatedNode:
    return build_node_identity(
        app_id=APP_ID, instance_id=INSTANCE_ID, os_image_hash=b"\x11" * 32, **knobs
    )


def _by_name(checks: tuple[Check, ...]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def _verified_events(node: SimulatedNode) -> Any:
    report = verify_event_log(node.event_log, rtmr3=node.rtmr3)
    assert report.ok
    return report.runtime_events


# -- mr_config_id ------------------------------------------------------------------------------


def test_compose_binding_passes_for_the_measured_compose() -> None:
    node = _node()
    # Written out independently: 0x01 || sha256(compose) || 15 zero bytes (§2).
    assert node.mr_config_id == b"\x01" + hashlib.sha256(
        node.app_compose.encode()
    ).digest() + bytes(15)
    check = check_compose_binding(parse_info(node.info).app_compose, node.mr_config_id)
    assert check.ok, check


def test_wrong_compose_fails_binding() -> None:
    node = _node(served_app_compose=default_app_compose("sha256:" + "ee" * 32))
    check = check_compose_binding(parse_info(node.info).app_compose, node.mr_config_id)
    assert check.status is Status.FAIL
    assert check.code == "binding.compose_mismatch"
    assert check.detail.startswith(
        f"mr_config_id {node.mr_config_id.hex()} != 01||sha256(app_compose)"
    )


def test_compose_hashed_exactly_as_served() -> None:
    # Re-serialising the JSON (here: whitespace) changes the hash; the string is hashed as-is.
    node = _node()
    reformatted = json.dumps(json.loads(node.app_compose))
    assert not check_compose_binding(reformatted, node.mr_config_id).ok


def test_short_mr_config_id_fails() -> None:
    check = check_compose_binding("{}", bytes(32))
    assert check.code == "binding.compose_mismatch"
    assert check.detail == "mr_config_id is 32 bytes, expected 48"


# -- parse_info ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["dict", "tcb_info-string", "info-string"])
def test_parse_info_accepts_both_shapes(shape: str) -> None:
    info: Any = dict(_node().info)
    if shape == "tcb_info-string":
        info["tcb_info"] = json.dumps(info["tcb_info"])  # NEAR sends tcb_info as a JSON string
    elif shape == "info-string":
        info = json.dumps(info)
    parsed = parse_info(info)
    assert parsed.app_compose == _node().app_compose
    assert parsed.app_id == APP_ID
    assert parsed.instance_id == INSTANCE_ID
    assert parsed.tcb_info["mrtd"] == _node().mrtd.hex()


def test_parse_info_normalises_hex() -> None:
    info = {**_node().info, "app_id": "0x" + APP_ID.upper()}
    assert parse_info(info).app_id == APP_ID


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ([], "info must be an object, got list"),
        ({"tcb_info": "{not json"}, "info.tcb_info is not valid JSON"),
        ({"tcb_info": "[" * 100_000}, "info.tcb_info is not valid JSON"),
        ({}, "info.tcb_info must be an object, got NoneType"),
        ({"tcb_info": {"mrtd": "00"}}, "info.tcb_info.app_compose is missing or not a string"),
        ({"tcb_info": {"app_compose": "{}"}, "app_id": 5}, "info.app_id must be a string, got int"),
    ],
    ids=[
        "not-object",
        "tcb-info-bad-json",
        "tcb-info-deeply-nested",
        "no-tcb-info",
        "no-app-compose",
        "app-id-not-string",
    ],
)
def test_parse_info_refuses_malformed(info: object, message: str) -> None:
    with pytest.raises(VerificationFailed, match=message) as raised:
        parse_info(info)
    assert raised.value.code == "info.malformed"


# -- info vs. runtime events ----------------------------------------------------------------


INFO_EVENT_CHECKS = (
    "binding.compose_hash_event",
    "binding.info_compose_hash",
    "binding.app_id_event",
    "binding.instance_id_event",
)


def test_info_events_agree_for_a_genuine_node() -> None:
    node = _node()
    checks = check_info_events(parse_info(node.info), _verified_events(node))
    assert tuple(c.name for c in checks) == INFO_EVENT_CHECKS
    assert all(c.ok for c in checks), checks


@pytest.mark.parametrize(
    ("override", "failing", "code", "message"),
    [
        (
            {"app_id": "ef" * 20},
            "binding.app_id_event",
            "binding.app_id_mismatch",
            f"app-id event {APP_ID} != info value {'ef' * 20}",
        ),
        (
            {"instance_id": "01" * 20},
            "binding.instance_id_event",
            "binding.instance_id_mismatch",
            f"instance-id event {INSTANCE_ID} != info value {'01' * 20}",
        ),
        (
            {"compose_hash": "22" * 32},
            "binding.info_compose_hash",
            "binding.compose_hash_mismatch",
            f"info.compose_hash {'22' * 32} != sha256(app_compose)",
        ),
    ],
    ids=["app-id", "instance-id", "compose-hash"],
)
def test_info_disagreeing_with_event_fails_that_check_only(
    override: dict[str, str], failing: str, code: str, message: str
) -> None:
    node = _node(info_overrides=override)
    checks = _by_name(check_info_events(parse_info(node.info), _verified_events(node)))
    assert {name for name, check in checks.items() if not check.ok} == {failing}
    assert checks[failing].code == code
    assert checks[failing].detail.startswith(message)


def test_served_compose_differing_from_compose_hash_event_fails() -> None:
    node = _node(served_app_compose=default_app_compose("sha256:" + "ee" * 32))
    checks = _by_name(check_info_events(parse_info(node.info), _verified_events(node)))
    event = checks["binding.compose_hash_event"]
    assert event.code == "binding.compose_hash_mismatch"
    assert event.detail.startswith(
        f"compose-hash event {node.compose_hash.hex()} != sha256(app_compose)"
    )


def test_unverified_event_log_fails_every_event_check() -> None:
    node = _node()
    checks = _by_name(check_info_events(parse_info(node.info), {}))
    assert not checks["binding.compose_hash_event"].ok
    assert checks["binding.app_id_event"].detail == "no verified app-id event in the event log"
    assert not checks["binding.instance_id_event"].ok


def test_info_without_copies_passes_on_events_alone() -> None:
    node = _node()
    info = {
        k: v for k, v in node.info.items() if k not in ("app_id", "instance_id", "compose_hash")
    }
    assert all(c.ok for c in check_info_events(parse_info(info), _verified_events(node)))


# -- compose-manager actions ----------------------------------------------------------------


ACTIONS: list[Any] = [
    {"type": "restart", "service": "vllm", "note": "café"},
    {"a": 1, "b": [2, 3]},
]


def _actions_hash(actions: Any) -> str:
    # Spelled out from §2: sort_keys, compact separators, non-ASCII kept as UTF-8.
    text = json.dumps(actions, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_compose_manager_actions_hash_matches() -> None:
    check = check_compose_manager_actions(
        {"actions": ACTIONS, "actions_hash": _actions_hash(ACTIONS)}
    )
    assert check.ok, check


def test_compose_manager_actions_hash_mismatch() -> None:
    tampered = [*ACTIONS, {"type": "exec", "cmd": "sh"}]
    check = check_compose_manager_actions(
        {"actions": tampered, "actions_hash": _actions_hash(ACTIONS)}
    )
    assert check.code == "binding.actions_hash_mismatch"
    assert check.detail.startswith(
        f"actions_hash {_actions_hash(ACTIONS)} is not sha256 of the actions in any accepted form"
    )


# The March-2026 form (spec 0.4): keys in the action type's field order, compact, UTF-8.
MARCH_ACTIONS: list[Any] = [
    {"services": ["glm"], "file": "GLM.yaml", "tag": "v1", "action": "compose_down",
     "timestamp": "2026-03-01T00:00:00Z", "commit": "ab"},
    {"file_sha256": "00" * 32, "container": "café", "action": "compose_up",
     "timestamp": "2026-03-01T00:00:01Z"},
]
_MARCH_ORDER = ("timestamp", "action", "container", "tag", "commit", "file", "file_sha256",
                "services")


def _field_order_hash(actions: list[Any]) -> str:
    ordered = [{k: a[k] for k in _MARCH_ORDER if k in a} for a in actions]
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_compose_manager_actions_march_2026_field_order_accepted() -> None:
    assert _field_order_hash(MARCH_ACTIONS) != _actions_hash(MARCH_ACTIONS)
    check = check_compose_manager_actions(
        {"actions": MARCH_ACTIONS, "actions_hash": _field_order_hash(MARCH_ACTIONS)}
    )
    assert check.ok, check
    assert "field-order" in check.detail


@pytest.mark.parametrize(
    "text",
    [
        # Looser forms: insertion order as served, spaces after separators, ASCII escapes.
        json.dumps(MARCH_ACTIONS, separators=(",", ":"), ensure_ascii=False),
        json.dumps(MARCH_ACTIONS, sort_keys=True, ensure_ascii=False),
        json.dumps([{k: a[k] for k in _MARCH_ORDER if k in a} for a in MARCH_ACTIONS],
                   separators=(",", ":")),
    ],
)
def test_compose_manager_actions_no_looser_form(text: str) -> None:
    claimed = hashlib.sha256(text.encode("utf-8")).hexdigest()
    check = check_compose_manager_actions({"actions": MARCH_ACTIONS, "actions_hash": claimed})
    assert check.code == "binding.actions_hash_mismatch"


def test_compose_manager_field_order_form_needs_known_fields() -> None:
    # An action with a field the March-2026 type did not have has no field-order form.
    actions = [{"timestamp": "t", "action": "x", "extra": 1}]
    ordered = json.dumps(actions, separators=(",", ":"), ensure_ascii=False)
    check = check_compose_manager_actions(
        {"actions": actions, "actions_hash": hashlib.sha256(ordered.encode()).hexdigest()}
    )
    assert check.code == "binding.actions_hash_mismatch"


def test_compose_manager_actions_hash_uses_utf8_not_ascii_escapes() -> None:
    ascii_hash = hashlib.sha256(
        json.dumps(ACTIONS, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert not check_compose_manager_actions({"actions": ACTIONS, "actions_hash": ascii_hash}).ok


@pytest.mark.parametrize(
    ("cma", "message"),
    [
        ({"actions_hash": "00"}, "lacks 'actions'"),
        ({"actions": []}, "lacks 'actions_hash'"),
        ("not an object", "lacks 'actions'"),
    ],
)
def test_compose_manager_actions_malformed(cma: object, message: str) -> None:
    check = check_compose_manager_actions(cma)
    assert check.code == "binding.actions_malformed"
    assert message in check.detail


# -- image pins -----------------------------------------------------------------------------


def test_compose_images_lists_digests() -> None:
    images = compose_images(default_app_compose())
    assert images.digests == (DEFAULT_IMAGE_DIGEST,)
    assert images.unpinned == ()
    assert check_images_pinned(default_app_compose()).ok


def test_image_by_tag_is_not_pinned() -> None:
    compose = json.dumps(
        {
            "runner": "docker-compose",
            "docker_compose_file": (
                "services:\n"
                f"  a:\n    image: ghcr.io/x/a@{DEFAULT_IMAGE_DIGEST}\n"
                '  b:\n    image: "ghcr.io/x/b:latest"\n'
            ),
        }
    )
    check = check_images_pinned(compose)
    assert check.code == "binding.image_not_pinned"
    assert check.detail == "image(s) not pinned by digest: ghcr.io/x/b:latest"
