"""Compose bindings: mr_config_id, info vs. runtime events, compose-manager actions, image pins."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
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
    MAX_APP_COMPOSE_CHARS,
    MAX_INFO_JSON_CHARS,
    ComposeImages,
    actions_canonical_forms,
    check_compose_binding,
    check_compose_manager_actions,
    check_images_pinned,
    check_info_events,
    compose_images,
    expected_mr_config_id,
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


# -- what a user reads, pinned exactly ---------------------------------------------------------

REAL_REPORT = json.loads(
    (Path(__file__).parent / "assets" / "identity" / "near_cloud_report.json").read_text())


def test_compose_binding_check_reads_exactly() -> None:
    node = _node()
    compose_sha = hashlib.sha256(node.app_compose.encode()).hexdigest()
    assert check_compose_binding(node.app_compose, node.mr_config_id) == Check.passed(
        "binding.compose", f"mr_config_id binds app_compose sha256 {compose_sha}")
    other = bytes(48)
    assert check_compose_binding(node.app_compose, other) == Check.failed(
        "binding.compose", "binding.compose_mismatch",
        f"mr_config_id {other.hex()} != 01||sha256(app_compose) 01{compose_sha}{'00' * 15}")
    assert check_compose_binding("{}", node.mr_config_id + b"\x00") == Check.failed(
        "binding.compose", "binding.compose_mismatch", "mr_config_id is 49 bytes, expected 48")
    assert expected_mr_config_id(node.app_compose) == node.mr_config_id


def test_info_event_checks_of_a_genuine_node_read_exactly() -> None:
    node = _node()
    served = node.compose_hash.hex()
    assert check_info_events(parse_info(node.info), _verified_events(node)) == (
        Check.passed("binding.compose_hash_event", f"compose-hash event = {served}"),
        Check.passed("binding.info_compose_hash", "info.compose_hash = sha256(app_compose)"),
        Check.passed("binding.app_id_event", f"app-id event = info value {APP_ID}"),
        Check.passed("binding.instance_id_event", f"instance-id event = info value {INSTANCE_ID}"),
    )


def test_info_event_checks_without_copies_or_events_read_exactly() -> None:
    node = _node()
    bare = parse_info({"tcb_info": {"app_compose": node.app_compose}})
    assert check_info_events(bare, _verified_events(node))[1:] == (
        Check.passed("binding.info_compose_hash", "info carries no compose_hash copy"),
        Check.passed("binding.app_id_event", f"app-id event {APP_ID}; info carries no copy"),
        Check.passed("binding.instance_id_event",
                     f"instance-id event {INSTANCE_ID}; info carries no copy"),
    )
    assert check_info_events(bare, {}) == (
        Check.failed("binding.compose_hash_event", "binding.compose_hash_mismatch",
                     "no verified compose-hash event in the event log"),
        Check.passed("binding.info_compose_hash", "info carries no compose_hash copy"),
        Check.failed("binding.app_id_event", "binding.app_id_mismatch",
                     "no verified app-id event in the event log"),
        Check.failed("binding.instance_id_event", "binding.instance_id_mismatch",
                     "no verified instance-id event in the event log"),
    )


def test_info_disagreeing_everywhere_reads_exactly() -> None:
    node = _node(served_app_compose=default_app_compose("sha256:" + "ee" * 32),
                 info_overrides={"app_id": "ef" * 20, "instance_id": "01" * 20,
                                 "compose_hash": "22" * 32})
    served = hashlib.sha256(node.app_compose.encode()).hexdigest()
    assert check_info_events(parse_info(node.info), _verified_events(node)) == (
        Check.failed("binding.compose_hash_event", "binding.compose_hash_mismatch",
                     f"compose-hash event {node.compose_hash.hex()} != sha256(app_compose) "
                     f"{served}"),
        Check.failed("binding.info_compose_hash", "binding.compose_hash_mismatch",
                     f"info.compose_hash {'22' * 32} != sha256(app_compose) {served}"),
        Check.failed("binding.app_id_event", "binding.app_id_mismatch",
                     f"app-id event {APP_ID} != info value {'ef' * 20}"),
        Check.failed("binding.instance_id_event", "binding.instance_id_mismatch",
                     f"instance-id event {INSTANCE_ID} != info value {'01' * 20}"),
    )


def test_real_near_node_info_agrees_with_its_events() -> None:
    wire = REAL_REPORT["model_attestations"][0]
    info = parse_info(wire["info"])
    assert info.compose_hash == wire["info"]["compose_hash"]
    events = {"compose-hash": bytes.fromhex(info.compose_hash),
              "app-id": bytes.fromhex(wire["info"]["app_id"]),
              "instance-id": bytes.fromhex(wire["info"]["instance_id"])}
    assert all(check.ok for check in check_info_events(info, events))


# -- parse_info: normalised copies, bounds, messages ----------------------------------------


def test_parse_info_normalises_every_hex_copy() -> None:
    info = {**_node().info, "app_id": " 0X" + APP_ID.upper() + "\n",
            "instance_id": "0x" + INSTANCE_ID, "compose_hash": "0X" + "AB" * 32}
    parsed = parse_info(info)
    assert (parsed.app_id, parsed.instance_id, parsed.compose_hash) == \
        (APP_ID, INSTANCE_ID, "ab" * 32)
    bare = parse_info({"tcb_info": {"app_compose": "{}"}})
    assert (bare.app_id, bare.instance_id, bare.compose_hash) == (None, None, None)


def test_parse_info_tcb_info_is_a_read_only_copy() -> None:
    tcb_info = {"app_compose": "{}", "mrtd": "00"}
    parsed = parse_info({"tcb_info": tcb_info})
    assert dict(parsed.tcb_info) == tcb_info
    with pytest.raises(TypeError):
        parsed.tcb_info["mrtd"] = "11"  # type: ignore[index]
    tcb_info["mrtd"] = "22"
    assert parsed.tcb_info["mrtd"] == "00"


def test_app_compose_at_its_bound_is_accepted_and_one_more_char_refused() -> None:
    at_bound = "x" * MAX_APP_COMPOSE_CHARS
    assert parse_info({"tcb_info": {"app_compose": at_bound}}).app_compose == at_bound
    with pytest.raises(VerificationFailed) as raised:
        parse_info({"tcb_info": {"app_compose": at_bound + "x"}})
    assert raised.value.message == f"info.tcb_info.app_compose is above {MAX_APP_COMPOSE_CHARS} chars"
    assert raised.value.code == "info.malformed"


def test_info_json_at_its_bound_is_parsed_and_one_more_char_refused() -> None:
    text = json.dumps({"tcb_info": {"app_compose": "{}"}})
    at_bound = text + " " * (MAX_INFO_JSON_CHARS - len(text))
    assert parse_info(at_bound).app_compose == "{}"
    with pytest.raises(VerificationFailed) as raised:
        parse_info(at_bound + " ")
    assert raised.value.message == f"info JSON is above {MAX_INFO_JSON_CHARS} chars"
    assert raised.value.code == "info.malformed"


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"tcb_info": []}, "info.tcb_info must be an object, got list"),
        ({"tcb_info": "[]"}, "info.tcb_info must be an object, got list"),
        ({"tcb_info": {"app_compose": 1}}, "info.tcb_info.app_compose is missing or not a string"),
        ({"tcb_info": {"app_compose": "{}"}, "instance_id": 1},
         "info.instance_id must be a string, got int"),
        ({"tcb_info": {"app_compose": "{}"}, "compose_hash": []},
         "info.compose_hash must be a string, got list"),
    ],
)
def test_parse_info_refusal_reads_exactly(info: object, message: str) -> None:
    with pytest.raises(VerificationFailed) as raised:
        parse_info(info)
    assert raised.value.message == message
    assert raised.value.code == "info.malformed"


def test_parse_info_bad_json_names_the_decoder_error() -> None:
    with pytest.raises(VerificationFailed) as raised:
        parse_info("{oops")
    assert raised.value.message.startswith("info is not valid JSON: Expecting property name")


# -- compose-manager actions: forms, hash spelling, details ---------------------------------


def test_canonical_forms_of_march_actions_are_exactly_two() -> None:
    forms = actions_canonical_forms(MARCH_ACTIONS)
    assert forms == {
        "sorted": json.dumps(MARCH_ACTIONS, sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False),
        "field-order": json.dumps([{k: a[k] for k in _MARCH_ORDER if k in a}
                                   for a in MARCH_ACTIONS],
                                  separators=(",", ":"), ensure_ascii=False),
    }
    assert "café" in forms["sorted"] and "café" in forms["field-order"]


def test_an_action_using_every_march_field_has_a_field_order_form() -> None:
    full = [{k: k for k in reversed(_MARCH_ORDER)}]
    assert actions_canonical_forms(full)["field-order"] == json.dumps(
        [{k: k for k in _MARCH_ORDER}], separators=(",", ":"))


@pytest.mark.parametrize(
    "actions",
    [{"timestamp": "t"}, [{"timestamp": "t"}, "restart"], [{"timestamp": "t", "extra": 1}], "x"],
    ids=["object", "non-object-action", "unknown-field", "string"],
)
def test_only_a_list_of_march_shaped_actions_has_a_field_order_form(actions: object) -> None:
    assert set(actions_canonical_forms(actions)) == {"sorted"}


def test_real_near_compose_manager_actions_verify_in_the_sorted_form() -> None:
    cma = REAL_REPORT["model_attestations"][0]["compose_manager_attestation"]
    assert check_compose_manager_actions(cma) == Check.passed(
        "binding.compose_manager_actions",
        f"actions_hash = sha256(sorted actions) {cma['actions_hash']}")


@pytest.mark.parametrize("spelling", [
    lambda h: "0x" + h, lambda h: "0X" + h.upper(), lambda h: f" {h}\n"])
def test_actions_hash_spelling_is_normalised(spelling: Any) -> None:
    digest = _field_order_hash(MARCH_ACTIONS)
    check = check_compose_manager_actions({"actions": MARCH_ACTIONS,
                                           "actions_hash": spelling(digest)})
    assert check == Check.passed("binding.compose_manager_actions",
                                 f"actions_hash = sha256(field-order actions) {digest}")


def test_actions_hash_ending_in_0x_is_not_trimmed() -> None:
    digest = _actions_hash(ACTIONS)
    check = check_compose_manager_actions({"actions": ACTIONS, "actions_hash": digest + "0x"})
    assert check.code == "binding.actions_hash_mismatch"


def test_actions_hash_mismatch_reads_exactly() -> None:
    claimed = "AB" * 40
    check = check_compose_manager_actions({"actions": MARCH_ACTIONS, "actions_hash": claimed})
    assert check == Check.failed(
        "binding.compose_manager_actions", "binding.actions_hash_mismatch",
        f"actions_hash {'ab' * 32} is not sha256 of the actions in any accepted form "
        f"(sorted {_actions_hash(MARCH_ACTIONS)}, field-order {_field_order_hash(MARCH_ACTIONS)})")


@pytest.mark.parametrize(
    ("cma", "detail"),
    [
        ({"actions_hash": "00"}, "compose_manager_attestation lacks 'actions'"),
        ({"actions": [], "actions_hash": None}, "compose_manager_attestation lacks 'actions_hash'"),
    ],
)
def test_compose_manager_actions_malformed_reads_exactly(cma: object, detail: str) -> None:
    assert check_compose_manager_actions(cma) == Check.failed(
        "binding.compose_manager_actions", "binding.actions_malformed", detail)


# -- image pins -------------------------------------------------------------------------------


def _compose_with(docker_compose_file: object) -> str:
    return json.dumps({"runner": "docker-compose", "docker_compose_file": docker_compose_file})


def test_images_pinned_check_reads_exactly() -> None:
    assert check_images_pinned(default_app_compose()) == Check.passed(
        "binding.images_pinned", f"1 image(s) pinned: {DEFAULT_IMAGE_DIGEST}")
    assert check_images_pinned(json.dumps({"runner": "bash"})) == Check.passed(
        "binding.images_pinned", "0 image(s) pinned: none")


def test_real_near_gateway_images_are_all_pinned() -> None:
    info = parse_info(REAL_REPORT["gateway_attestation"]["info"])
    digests = sorted(ref.rsplit("@", 1)[1] for ref in compose_images(info.app_compose).references)
    assert len(digests) == 7 and digests[0].startswith("sha256:1653c232")
    assert check_images_pinned(info.app_compose) == Check.passed(
        "binding.images_pinned", f"7 image(s) pinned: {', '.join(digests)}")


def test_an_image_chosen_by_a_variable_is_not_pinned() -> None:
    # The real model node names its compose-manager image through ${VAR:-default}: whoever sets
    # the variable chooses the image, so the default's digest pins nothing.
    info = parse_info(REAL_REPORT["model_attestations"][0]["info"])
    check = check_images_pinned(info.app_compose)
    assert check.code == "binding.image_not_pinned"
    assert check.detail.startswith("image(s) not pinned by digest: ${COMPOSE_MANAGER_IMAGE:-")


def test_unpinned_images_are_all_named_in_file_order() -> None:
    compose = _compose_with("services:\n  a:\n    image: b:1\n  c:\n    image: a:2\n")
    assert check_images_pinned(compose) == Check.failed(
        "binding.images_pinned", "binding.image_not_pinned",
        "image(s) not pinned by digest: b:1, a:2")


@pytest.mark.parametrize(
    ("compose", "detail"),
    [
        ("not json", "app_compose is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("[]", "app_compose must be an object, got list"),
        (_compose_with(["image: x"]), "app_compose.docker_compose_file must be a string"),
    ],
)
def test_unreadable_compose_fails_the_pin_check(compose: str, detail: str) -> None:
    assert check_images_pinned(compose) == Check.failed(
        "binding.images_pinned", "info.malformed", detail)
    with pytest.raises(VerificationFailed) as raised:
        compose_images(compose)
    assert raised.value.code == "info.malformed"


def test_image_lines_are_read_in_every_block_style() -> None:
    digest = "sha256:" + "Ab" * 32
    compose = _compose_with(
        "services:\n"
        f"  a:\n    image: one@{digest}\n"
        f"  b:\n    image:   'two@{digest}'  # pinned\n"
        "  c:\n\timage:\t\"three:latest\"\n"
        "  d:\n    - image: four:1\n"
        "  e:\n    x-image: not-an-image\n"
        "  f:\n    image: five@sha256:" + "00" * 32 + "-suffix\n"
    )
    images = compose_images(compose)
    assert images.references == (f"one@{digest}", f"two@{digest}", "three:latest", "four:1",
                                 "five@sha256:" + "00" * 32 + "-suffix")
    assert images.digests == ("sha256:" + "ab" * 32,)
    assert images.unpinned == ("three:latest", "four:1", "five@sha256:" + "00" * 32 + "-suffix")


def test_digests_are_distinct_and_sorted() -> None:
    images = ComposeImages(references=("b@sha256:" + "bb" * 32, "a@sha256:" + "BB" * 32,
                                       "c@sha256:" + "aa" * 32, "d:tag"))
    assert images.digests == ("sha256:" + "aa" * 32, "sha256:" + "bb" * 32)
    assert images.unpinned == ("d:tag",)
    assert ComposeImages(references=("x@sha256:" + "a" * 63,)).unpinned == \
        ("x@sha256:" + "a" * 63,)
