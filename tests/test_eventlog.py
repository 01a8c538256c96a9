"""dstack event log: parsing bounds, RTMR3 replay, runtime-event digest recomputation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.simulator.dstack import SimulatedNode, build_node_identity
from sidecar.verify.checks import Check, Status
from sidecar.verify.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    DSTACK_SYSTEM_EVENTS,
    MAX_EVENT_LOG_JSON_CHARS,
    MAX_EVENT_NAME_CHARS,
    MAX_EVENT_PAYLOAD_BYTES,
    MAX_EVENTS,
    Event,
    EventLogReport,
    events_to_json,
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
    # The parsed events stay on a failed report (receipts keep what was served).
    assert report.events == parse_event_log(node.event_log)
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
    assert report.checks == (
        Check.failed("eventlog.parse", "eventlog.malformed", info.value.message),)
    assert not report.ok and report.runtime_events == {} and report.events == ()


def test_unknown_extra_keys_are_ignored() -> None:
    node = _node()
    log = [{**entry, "future_field": 1} for entry in node.event_log]
    assert verify_event_log(log, rtmr3=node.rtmr3).ok


def test_rtmr3_of_wrong_length_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="rtmr3 must be 48 bytes, got 32"):
        verify_event_log(_node().event_log, rtmr3=bytes(32))


# -- the report a user reads, pinned exactly ---------------------------------------------------

REAL_REPORT = Path(__file__).parent / "assets" / "identity" / "near_cloud_report.json"


def _real_log() -> list[dict[str, Any]]:
    wire = json.loads(REAL_REPORT.read_text())["model_attestations"][0]
    log = wire["event_log"]
    return json.loads(log) if isinstance(log, str) else log


def test_genuine_report_checks_read_exactly() -> None:
    # The simulated node logs 6 boot events (imr 0-2) and dstack's 10 runtime events (imr 3).
    node = _node()
    report = verify_event_log(node.event_log, rtmr3=node.rtmr3)
    assert report.checks == (
        Check.passed("eventlog.parse", "16 events within bounds"),
        Check.passed("eventlog.rtmr3_replay", "10 imr-3 events replay to the quote's RTMR3"),
        Check.passed("eventlog.event_digests",
                     "10 runtime event digests recomputed from their payloads"),
        Check.passed("eventlog.unique_system_events",
                     "each dstack system event occurs at most once"),
    )
    assert report.events == parse_event_log(node.event_log)
    assert set(report.runtime_events) == set(DSTACK_SYSTEM_EVENTS)


def test_real_near_log_round_trips_through_events_to_json() -> None:
    # Receipts render the parsed log back into dstack's shape: byte-for-byte the served entries.
    log = _real_log()
    events = parse_event_log(log)
    assert events_to_json(events) == log
    assert parse_event_log(events_to_json(events)) == events
    assert [e.is_runtime for e in events].count(True) == sum(
        1 for entry in log if entry["event_type"] == DSTACK_RUNTIME_EVENT_TYPE)


def test_register_replay_per_index_matches_the_quoted_registers() -> None:
    node = _node()
    events = parse_event_log(node.event_log)
    assert replay_rtmr(events) == replay_rtmr(events, imr=3) == node.rtmr3
    assert [replay_rtmr(events, imr=i) for i in range(3)] == [node.rtmr0, node.rtmr1, node.rtmr2]


def test_runtime_events_mapping_is_read_only() -> None:
    node = _node()
    report = verify_event_log(node.event_log, rtmr3=node.rtmr3)
    with pytest.raises(TypeError):
        report.runtime_events["compose-hash"] = b"\x00" * 32  # type: ignore[index]
    failed = verify_event_log(node.event_log, rtmr3=bytes(48))
    with pytest.raises(TypeError):
        failed.runtime_events["compose-hash"] = b"\x00" * 32  # type: ignore[index]


def test_report_with_no_checks_raises_as_not_checked() -> None:
    with pytest.raises(VerificationFailed) as info:
        EventLogReport(checks=()).raise_for_failure()
    assert info.value.message == "event log was not checked"
    assert info.value.code == "eventlog.malformed"


def test_every_mismatched_digest_is_named_in_order() -> None:
    node = _node(swap_payloads={"compose-hash": b"\x01" * 32, "app-id": b"\x02" * 20})
    report = verify_event_log(node.event_log, rtmr3=node.rtmr3)
    names = [entry["event"] for entry in node.event_log]
    app, compose = names.index("app-id"), names.index("compose-hash")
    assert report.failures == (
        Check.failed("eventlog.event_digests", "eventlog.digest_mismatch",
                     "payload does not hash to the stored digest for event "
                     f"#{app} 'app-id', #{compose} 'compose-hash'"),
    )


def test_every_duplicated_system_event_is_named_sorted() -> None:
    log, _ = _with_extra_runtime_event(_node().event_log, "os-image-hash", b"\x00" * 32)
    log, rtmr3 = _with_extra_runtime_event(log, "app-id", b"\x00" * 20)
    report = verify_event_log(log, rtmr3=rtmr3)
    assert report.failures == (
        Check.failed("eventlog.unique_system_events", "eventlog.duplicate_event",
                     "dstack system event(s) occur more than once: app-id, os-image-hash"),
    )


def test_runtime_typed_event_outside_rtmr3_is_not_a_runtime_payload() -> None:
    # A dstack-typed event extended into RTMR0 is digest-checked, but RTMR3 does not hold it:
    # it must neither shadow the verified compose-hash nor count as a duplicate of it.
    node = _node()
    forged = b"\x07" * 32
    extra = {"imr": 0, "event_type": DSTACK_RUNTIME_EVENT_TYPE, "event": "compose-hash",
             "digest": runtime_event_digest(DSTACK_RUNTIME_EVENT_TYPE, "compose-hash",
                                            forged).hex(),
             "event_payload": forged.hex()}
    report = verify_event_log([*node.event_log, extra], rtmr3=node.rtmr3)
    assert report.ok, report.checks
    assert report.runtime_events["compose-hash"] == node.compose_hash
    assert report.checks[2].detail == "11 runtime event digests recomputed from their payloads"
    assert report.checks[1].detail == "10 imr-3 events replay to the quote's RTMR3"


def test_non_runtime_event_in_rtmr3_is_neither_digest_checked_nor_exposed() -> None:
    # A TCG-typed event in imr 3 is replayed (its digest counts) but has no recomputable digest.
    node = _node()
    extra = _entry(event_type=1, event="compose-hash", digest="ab" * 48,
                   event_payload=("00" * 32))
    log = [*node.event_log, extra]
    report = verify_event_log(log, rtmr3=replay_rtmr(parse_event_log(log)))
    assert report.ok, report.checks
    assert report.runtime_events["compose-hash"] == node.compose_hash
    assert report.checks[1].detail == "11 imr-3 events replay to the quote's RTMR3"


# -- parse bounds: the limit itself is accepted, one more is refused -----------------------------


def test_log_json_at_the_size_bound_is_parsed_and_one_char_more_is_refused() -> None:
    at_bound = "[" + " " * (MAX_EVENT_LOG_JSON_CHARS - 2) + "]"
    assert parse_event_log(at_bound) == ()
    with pytest.raises(VerificationFailed) as info:
        parse_event_log(at_bound + " ")
    assert info.value.message == (f"event log JSON is {MAX_EVENT_LOG_JSON_CHARS + 1} long, "
                                  f"above the bound {MAX_EVENT_LOG_JSON_CHARS}")
    assert info.value.code == "eventlog.malformed"


def test_log_as_json_bytes_is_parsed() -> None:
    node = _node()
    raw = json.dumps(node.event_log).encode()
    assert parse_event_log(raw) == parse_event_log(bytearray(raw)) == parse_event_log(
        node.event_log)


def test_exactly_max_events_are_accepted() -> None:
    assert len(parse_event_log([_entry()] * MAX_EVENTS)) == MAX_EVENTS
    with pytest.raises(VerificationFailed) as info:
        parse_event_log([_entry()] * (MAX_EVENTS + 1))
    assert info.value.message == f"event log has {MAX_EVENTS + 1} events, above the bound {MAX_EVENTS}"


def test_entry_fields_at_their_bounds_are_accepted() -> None:
    name = "n" * MAX_EVENT_NAME_CHARS
    entries = [
        _entry(imr=0, event_type=0),
        _entry(imr=3, event_type=0xFFFFFFFF, event=name),
        _entry(digest="0x" + "AB" * 48, event_payload="0X" + "cD" * MAX_EVENT_PAYLOAD_BYTES),
    ]
    events = parse_event_log(entries)
    assert [(e.imr, e.event_type) for e in events] == [(0, 0), (3, 0xFFFFFFFF),
                                                        (3, DSTACK_RUNTIME_EVENT_TYPE)]
    assert events[1].name == name
    assert events[2].digest == b"\xab" * 48
    assert events[2].payload == b"\xcd" * MAX_EVENT_PAYLOAD_BYTES


def test_missing_name_and_payload_default_to_empty() -> None:
    entry = _entry()
    del entry["event"], entry["event_payload"]
    (event,) = parse_event_log([entry])
    assert event == Event(imr=3, event_type=DSTACK_RUNTIME_EVENT_TYPE, digest=bytes(48),
                          name="", payload=b"")
    assert event.is_runtime


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_entry(imr=-1), "event log entry 1: imr -1 is not a TDX runtime register index 0-3"),
        (_entry(event_type=-1), "event log entry 1: event_type -1 does not fit in 32 bits"),
        ({k: v for k, v in _entry().items() if k != "imr"},
         "event log entry 1: 'imr' must be an integer, got NoneType"),
        ({k: v for k, v in _entry().items() if k != "digest"},
         "event log entry 1: 'digest' must be a hex string, got NoneType"),
        (_entry(digest="0x" + "00" * 49), "event log entry 1: 'digest' is longer than 48 bytes"),
        # The bound is on the text: whitespace that bytes.fromhex would skip still counts.
        (_entry(digest="0x" + "00" * 48 + " "),
         "event log entry 1: 'digest' is longer than 48 bytes"),
        (_entry(digest="00" * 49), "event log entry 1: 'digest' is 49 bytes, above the bound 48"),
        (_entry(event="n" * (MAX_EVENT_NAME_CHARS + 1)),
         f"event log entry 1: event name is {MAX_EVENT_NAME_CHARS + 1} chars, above the bound "
         f"{MAX_EVENT_NAME_CHARS}"),
        (_entry(event_payload=7), "event log entry 1: 'event_payload' must be a hex string, got int"),
        (_entry(event_payload="0x" + "00" * (MAX_EVENT_PAYLOAD_BYTES + 1)),
         f"event log entry 1: 'event_payload' is longer than {MAX_EVENT_PAYLOAD_BYTES} bytes"),
    ],
    ids=["imr-negative", "event-type-negative", "imr-missing", "digest-missing",
         "digest-too-long-text", "digest-text-one-over", "digest-49-bytes", "name-too-long", "payload-not-string",
         "payload-too-long-text"],
)
def test_malformed_entry_message_names_the_entry(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(VerificationFailed) as info:
        parse_event_log([_entry(), entry])
    assert info.value.message == message
    assert info.value.code == "eventlog.malformed"
