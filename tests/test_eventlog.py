"""dstack event log: parsing bounds, RTMR3 replay, runtime-event digest recomputation."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.simulator.dstack import SimulatedNode, build_node_identity
from sidecar.verify.checks import Status
from sidecar.verify.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    MAX_EVENT_PAYLOAD_BYTES,
    MAX_EVENTS,
    parse_event_log,
    replay_rtmr,
    runtime_event_digest,
    verify_event_log,
)

APP_ID = "ab" * 20
INSTANCE_ID = "cd" * 20
OS_IMAGE_HASH = bytes.fromhex("11" * 32)


def _node(**knobs: Any) -> SimulatedNode:
    return build_node_identity(
        app_id=APP_ID, instance_id=INSTANCE_ID, os_image_hash=OS_IMAGE_HASH, **knobs
    )


def _statuses(report: Any) -> dict[str, Status]:
    return {check.name: check.status for check in report.checks}


def test_runtime_event_digest_known_answer() -> None:
    # Written out independently of the module: sha384(LE u32 type ":" name ":" payload), §2.
    payload = bytes.fromhex("ab" * 20)
    expected = hashlib.sha384(b"\x01\x00\x00\x08:app-id:" + payload).digest()
    assert runtime_event_digest(DSTACK_RUNTIME_EVENT_TYPE, "app-id", payload) == expected


def test_replay_starts_from_48_zero_bytes() -> None:
    assert replay_rtmr([], imr=3) == bytes(48)
    events = parse_event_log(_node().event_log)
    register = bytes(48)
    for entry in _node().event_log:
        if entry["imr"] == 3:
            register = hashlib.sha384(register + bytes.fromhex(entry["digest"])).digest()
    assert replay_rtmr(events, imr=3) == register


@pytest.mark.parametrize("as_json_string", [False, True], ids=["list", "json-string"])
def test_genuine_log_verifies_and_exposes_runtime_events(as_json_string: bool) -> None:
    node = _node()
    raw: object = json.dumps(node.event_log) if as_json_string else node.event_log
    report = verify_event_log(raw, rtmr3=node.rtmr3)
    assert report.ok, report.checks
    assert set(_statuses(report)) == {
        "eventlog.parse",
        "eventlog.rtmr3_replay",
        "eventlog.event_digests",
        "eventlog.unique_system_events",
    }
    assert report.runtime_events["app-id"] == bytes.fromhex(APP_ID)
    assert report.runtime_events["instance-id"] == bytes.fromhex(INSTANCE_ID)
    assert report.runtime_events["compose-hash"] == node.compose_hash
    assert report.runtime_events["os-image-hash"] == OS_IMAGE_HASH
    assert json.loads(report.runtime_events["key-provider"])["name"] == "kms"
    report.raise_for_failure()


def test_log_that_does_not_replay_fails_rtmr3_only() -> None:
    node = _node(break_replay=True)
    report = verify_event_log(node.event_log, rtmr3=node.rtmr3)
    assert _statuses(report) == {
        "eventlog.parse": Status.PASS,
        "eventlog.rtmr3_replay": Status.FAIL,
        "eventlog.event_digests": Status.PASS,
        "eventlog.unique_system_events": Status.PASS,
    }
    assert report.runtime_events == {}
    with pytest.raises(
        VerificationFailed, match=r"replayed RTMR3 [0-9a-f]{96} != quote RTMR3"
    ) as info:
        report.raise_for_failure()
    assert info.value.code == "measurement.rtmr3_mismatch"


def test_quote_rtmr3_from_another_node_fails_replay() -> None:
    other = _node(storage_fs="ext4")
    report = verify_event_log(_node().event_log, rtmr3=other.rtmr3)
    assert _statuses(report)["eventlog.rtmr3_replay"] is Status.FAIL


def test_payload_swapped_under_genuine_digest_fails_digest_check_only() -> None:
    forged_hash = hashlib.sha256(b"a compose the TD never ran").digest()
    node = _node(swap_payloads={"compose-hash": forged_hash})
    report = verify_event_log(node.event_log, rtmr3=node.rtmr3)
    # Replay still matches: only the digests are extended, which is why §2 asks for step (3).
    assert _statuses(report) == {
        "eventlog.parse": Status.PASS,
        "eventlog.rtmr3_replay": Status.PASS,
        "eventlog.event_digests": Status.FAIL,
        "eventlog.unique_system_events": Status.PASS,
    }
    assert report.runtime_events == {}
    with pytest.raises(
        VerificationFailed,
        match=r"payload does not hash to the stored digest for event #\d+ 'compose-hash'",
    ) as info:
        report.raise_for_failure()
    assert info.value.code == "eventlog.digest_mismatch"


def _with_extra_runtime_event(
    log: list[dict[str, Any]], name: str, payload: bytes
) -> tuple[list[dict[str, Any]], bytes]:
    """Append a well-formed runtime event; return the log and its honestly replayed RTMR3."""
    digest = runtime_event_digest(DSTACK_RUNTIME_EVENT_TYPE, name, payload)
    log = [
        *log,
        {
            "imr": 3,
            "event_type": DSTACK_RUNTIME_EVENT_TYPE,
            "digest": digest.hex(),
            "event": name,
            "event_payload": payload.hex(),
        },
    ]
    return log, replay_rtmr(parse_event_log(log), imr=3)


def test_second_compose_hash_event_is_refused() -> None:
    log, rtmr3 = _with_extra_runtime_event(_node().event_log, "compose-hash", b"\x00" * 32)
    report = verify_event_log(log, rtmr3=rtmr3)
    assert _statuses(report)["eventlog.rtmr3_replay"] is Status.PASS
    assert _statuses(report)["eventlog.unique_system_events"] is Status.FAIL
    assert report.runtime_events == {}
    with pytest.raises(VerificationFailed, match="occur more than once: compose-hash") as info:
        report.raise_for_failure()
    assert info.value.code == "eventlog.duplicate_event"


def test_repeated_app_event_is_left_out_of_the_mapping() -> None:
    log, _ = _with_extra_runtime_event(_node().event_log, "app-custom", b"one")
    log, rtmr3 = _with_extra_runtime_event(log, "app-custom", b"two")
    report = verify_event_log(log, rtmr3=rtmr3)
    assert report.ok
    assert "app-custom" not in report.runtime_events
    assert "compose-hash" in report.runtime_events


def _entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "imr": 3,
        "event_type": DSTACK_RUNTIME_EVENT_TYPE,
        "digest": "00" * 48,
        "event": "x",
        "event_payload": "",
    }
    entry.update(overrides)
    return entry


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"imr": 3}, "event log must be a list, got dict"),
        ("[not json", "event log is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "event log is not valid JSON"),
        ([_entry()] * (MAX_EVENTS + 1), f"above the bound {MAX_EVENTS}"),
        (["entry"], "entry 0: must be an object, got str"),
        ([_entry(imr=4)], "entry 0: imr 4 is not a TDX runtime register"),
        ([_entry(imr=True)], "entry 0: 'imr' must be an integer, got bool"),
        ([_entry(event_type="0x08000001")], "'event_type' must be an integer, got str"),
        ([_entry(event_type=1 << 32)], "does not fit in 32 bits"),
        ([_entry(digest="00" * 32)], "digest is 32 bytes, a SHA-384 digest is 48"),
        ([_entry(digest="zz" * 48)], "'digest' is not hex"),
        ([_entry(event=7)], "'event' must be a string, got int"),
        (
            [_entry(), _entry(event_payload="00" * (MAX_EVENT_PAYLOAD_BYTES + 1))],
            f"entry 1: 'event_payload' is {MAX_EVENT_PAYLOAD_BYTES + 1} bytes, above the bound",
        ),
    ],
    ids=[
        "not-a-list",
        "bad-json",
        "deeply-nested-json",
        "too-many-events",
        "entry-not-object",
        "imr-out-of-range",
        "imr-bool",
        "event-type-string",
        "event-type-overflow",
        "short-digest",
        "digest-not-hex",
        "name-not-string",
        "payload-too-big",
    ],
)
def test_malformed_log_fails_parse(raw: object, message: str) -> None:
    with pytest.raises(VerificationFailed, match=message) as info:
        parse_event_log(raw)
    assert info.value.code == "eventlog.malformed"
    report = verify_event_log(raw, rtmr3=bytes(48))
    assert [(c.name, c.code) for c in report.checks] == [("eventlog.parse", "eventlog.malformed")]
    assert not report.ok and report.runtime_events == {}


def test_unknown_extra_keys_are_ignored() -> None:
    node = _node()
    log = [{**entry, "future_field": 1} for entry in node.event_log]
    assert verify_event_log(log, rtmr3=node.rtmr3).ok


def test_rtmr3_of_wrong_length_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="rtmr3 must be 48 bytes, got 32"):
        verify_event_log(_node().event_log, rtmr3=bytes(32))
