"""The dstack event log: parse it, replay RTMR3, recompute runtime-event digests.

Sans-I/O. A dstack CVM reports the events it measured into its TDX runtime registers as a JSON
list of ``{imr, event_type, digest, event, event_payload}`` (provider-api.md §2 "Event log";
NEAR's gateway sends the list as a JSON *string*, §2 "NEAR AI Cloud's report shape"). The log is
attacker-supplied: it is worth something only once it is tied to the verified quote.

Recipe of :func:`verify_event_log` (each block in the code is tagged ``# (n)``):

1. Parse the log into typed :class:`Event` records within named bounds; anything malformed fails.
2. Replay every ``imr == 3`` digest, ``rtmr = sha384(rtmr || digest)`` from 48 zero bytes, and
   compare with RTMR3 *of the verified quote* (``eventlog.rtmr3_replay``). A mismatch means the
   log is not the one the TD measured: forged, truncated or padded.
3. For every dstack runtime event (``event_type == 0x08000001``) recompute the digest from the
   name and payload and compare with the stored one (``eventlog.event_digests``). Replay alone
   checks only the digests, so without this a payload (compose hash, os image hash, key provider)
   could be swapped under its genuine digest (§2 "Event log").
4. Refuse duplicate dstack system events (``eventlog.unique_system_events``): the name → payload
   view must not depend on which of two ``compose-hash`` events a reader picks.
5. Only if all of that passes, expose the runtime events' payloads by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from sidecar.errors import VerificationFailed
from sidecar.verify.checks import Check, CheckedReport

__all__ = [
    "DSTACK_RUNTIME_EVENT_TYPE",
    "DSTACK_SYSTEM_EVENTS",
    "MAX_EVENTS",
    "MAX_EVENT_LOG_JSON_CHARS",
    "MAX_EVENT_NAME_CHARS",
    "MAX_EVENT_PAYLOAD_BYTES",
    "RTMR_SIZE",
    "Event",
    "EventLogReport",
    "events_to_json",
    "parse_event_log",
    "replay_rtmr",
    "runtime_event_digest",
    "verify_event_log",
]

# dstack's own event type for runtime events; not a TCG type (dstack cc-eventlog,
# ``DSTACK_RUNTIME_EVENT_TYPE``; provider-api.md §2).
DSTACK_RUNTIME_EVENT_TYPE = 0x08000001

# TDX measurement registers are SHA-384: 48 bytes each.
RTMR_SIZE = 48

# Bounds that stop abuse. A real dstack log has a few dozen boot events and ten runtime events
# (§2 lists them); these limits leave wide headroom while keeping a hostile report from making
# the sidecar hash or hold gigabytes before it has decided anything.
MAX_EVENTS = 2048
# Boot events can carry EFI variables (Secure Boot db/dbx run to tens of KiB); 1 MiB each is ample.
MAX_EVENT_PAYLOAD_BYTES = 1 << 20
# Total size of the JSON-string form (NEAR's gateway) before json.loads is even attempted.
MAX_EVENT_LOG_JSON_CHARS = 16 << 20
# dstack event names are short identifiers such as "compose-hash".
MAX_EVENT_NAME_CHARS = 256

# The events dstack itself emits into RTMR3 while booting (§2, checked on a real NEAR report).
# An app may emit further runtime events of its own later; a *second* event with one of these
# names is refused because policy and bindings read exactly these payloads.
DSTACK_SYSTEM_EVENTS = frozenset(
    {
        "system-preparing",
        "app-id",
        "compose-hash",
        "instance-id",
        "boot-mr-done",
        "mr-kms",
        "os-image-hash",
        "key-provider",
        "storage-fs",
        "system-ready",
    }
)

_MALFORMED = "eventlog.malformed"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the dstack event log, decoded.

    Attributes:
        imr: index of the measurement register it extended (0-3 are RTMR0-RTMR3).
        event_type: TCG event type, or ``DSTACK_RUNTIME_EVENT_TYPE`` for dstack runtime events.
        digest: the 48-byte SHA-384 digest extended into the register.
        name: the event name (``"compose-hash"``); empty for most boot events.
        payload: the event data, decoded from hex.
    """

    imr: int
    event_type: int
    digest: bytes
    name: str
    payload: bytes

    @property
    def is_runtime(self) -> bool:
        """True for a dstack runtime event, whose digest is recomputable from name and payload."""
        return self.event_type == DSTACK_RUNTIME_EVENT_TYPE


@dataclass(frozen=True, slots=True)
class EventLogReport(CheckedReport):
    """What :func:`verify_event_log` checked, and the runtime payloads if every check passed.

    Attributes:
        checks: ``eventlog.parse``, ``eventlog.rtmr3_replay``, ``eventlog.event_digests`` and
            ``eventlog.unique_system_events`` (only ``eventlog.parse`` when the log is malformed).
        events: the parsed events (empty when malformed). Not trustworthy unless ``ok``.
        runtime_events: payloads of the RTMR3 runtime events by name, e.g. ``"compose-hash"`` →
            32 bytes. Empty unless every check passed: a reader can never pick up an unverified
            payload by accident. An app-defined name that occurs more than once is left out.
    """

    checks: tuple[Check, ...]
    events: tuple[Event, ...] = ()
    runtime_events: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    empty_code: ClassVar[str] = _MALFORMED

    def failure_message(self, check: Check | None) -> str:
        """The failing check's detail; for no checks, that the log was not checked."""
        return check.detail if check is not None else "event log was not checked"


def runtime_event_digest(event_type: int, name: str, payload: bytes) -> bytes:
    """Compute the digest dstack extends into RTMR3 for one runtime event.

    ``sha384(event_type as 4 bytes little-endian || b":" || name UTF-8 || b":" || payload)``
    (dstack cc-eventlog ``RuntimeEvent::digest``; provider-api.md §2, confirmed on a real NEAR
    report).

    Raises:
        OverflowError: if ``event_type`` does not fit in 32 bits.
    """
    return hashlib.sha384(
        event_type.to_bytes(4, "little") + b":" + name.encode("utf-8") + b":" + payload
    ).digest()


def replay_rtmr(events: Iterable[Event], imr: int = 3) -> bytes:
    """Replay the digests of ``events`` with index ``imr`` into a register value.

    TDX extends a runtime register as ``rtmr = sha384(rtmr || digest)``, starting from 48 zero
    bytes (provider-api.md §2). Events for other registers are skipped.

    Raises:
        Nothing: the events are already typed and bounded by :func:`parse_event_log`.
    """
    register = bytes(RTMR_SIZE)
    for event in events:
        if event.imr == imr:
            register = hashlib.sha384(register + event.digest).digest()
    return register


def parse_event_log(raw: object) -> tuple[Event, ...]:
    """Parse a dstack event log: a list of dicts, or a JSON string holding such a list.

    Unknown extra keys in an entry are ignored: they are never read, and the digests (not the
    keys) are what is bound to the quote. Missing or mistyped known keys are refused.

    Raises:
        VerificationFailed: code ``eventlog.malformed`` for anything not shaped like a dstack log
            or beyond the bounds ``MAX_EVENTS``, ``MAX_EVENT_PAYLOAD_BYTES``,
            ``MAX_EVENT_LOG_JSON_CHARS``, ``MAX_EVENT_NAME_CHARS``.
    """
    if isinstance(raw, (str, bytes, bytearray)):
        # NEAR's gateway attestation carries the log as a JSON string (§2 NEAR shape).
        if len(raw) > MAX_EVENT_LOG_JSON_CHARS:
            raise VerificationFailed(
                f"event log JSON is {len(raw)} long, above the bound {MAX_EVENT_LOG_JSON_CHARS}",
                code=_MALFORMED,
            )
        try:
            raw = json.loads(raw)
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; a hostile "[[[[…" nests deep
        # enough to exhaust the recursion limit, which must fail closed like any bad input.
        except (ValueError, RecursionError) as exc:
            raise VerificationFailed(
                f"event log is not valid JSON: {exc}", code=_MALFORMED
            ) from exc
    if not isinstance(raw, list):
        raise VerificationFailed(
            f"event log must be a list, got {type(raw).__name__}", code=_MALFORMED
        )
    if len(raw) > MAX_EVENTS:
        raise VerificationFailed(
            f"event log has {len(raw)} events, above the bound {MAX_EVENTS}", code=_MALFORMED
        )
    return tuple(_parse_event(index, entry) for index, entry in enumerate(raw))


def _parse_event(index: int, entry: object) -> Event:
    """Decode one entry; ``index`` names it in errors.

    Raises:
        VerificationFailed: code ``eventlog.malformed``.
    """

    def bad(why: str) -> VerificationFailed:
        return VerificationFailed(f"event log entry {index}: {why}", code=_MALFORMED)

    if not isinstance(entry, Mapping):
        raise bad(f"must be an object, got {type(entry).__name__}")
    imr = _require_int(entry, "imr", bad)
    if not 0 <= imr <= 3:
        raise bad(f"imr {imr} is not a TDX runtime register index 0-3")
    event_type = _require_int(entry, "event_type", bad)
    if not 0 <= event_type <= 0xFFFFFFFF:
        raise bad(f"event_type {event_type} does not fit in 32 bits")
    digest = _require_hex(entry, "digest", bad, max_bytes=RTMR_SIZE)
    if len(digest) != RTMR_SIZE:
        raise bad(f"digest is {len(digest)} bytes, a SHA-384 digest is {RTMR_SIZE}")
    name = entry.get("event", "")
    if not isinstance(name, str):
        raise bad(f"'event' must be a string, got {type(name).__name__}")
    if len(name) > MAX_EVENT_NAME_CHARS:
        raise bad(f"event name is {len(name)} chars, above the bound {MAX_EVENT_NAME_CHARS}")
    payload = _require_hex(
        entry, "event_payload", bad, max_bytes=MAX_EVENT_PAYLOAD_BYTES, default=""
    )
    return Event(imr=imr, event_type=event_type, digest=digest, name=name, payload=payload)


def _require_int(
    entry: Mapping[Any, Any], key: str, bad: Callable[[str], VerificationFailed]
) -> int:
    value = entry.get(key)
    # bool is an int subclass; `true` is not a register index.
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(f"'{key}' must be an integer, got {type(value).__name__}")
    return value


def _require_hex(
    entry: Mapping[Any, Any],
    key: str,
    bad: Callable[[str], VerificationFailed],
    *,
    max_bytes: int,
    default: str | None = None,
) -> bytes:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise bad(f"'{key}' must be a hex string, got {type(value).__name__}")
    if len(value) > 2 * max_bytes + 2:
        raise bad(f"'{key}' is longer than {max_bytes} bytes")
    text = value[2:] if value[:2] in ("0x", "0X") else value
    try:
        decoded = bytes.fromhex(text)
    except ValueError:
        raise bad(f"'{key}' is not hex") from None
    if len(decoded) > max_bytes:
        raise bad(f"'{key}' is {len(decoded)} bytes, above the bound {max_bytes}")
    return decoded


def verify_event_log(events_raw: object, *, rtmr3: bytes) -> EventLogReport:
    """Verify a dstack event log against RTMR3 of an already verified quote.

    Args:
        events_raw: the ``event_log`` field as received (list of dicts, or JSON string).
        rtmr3: RTMR3 read from the *verified* TDX quote, never from ``info.tcb_info``.

    Returns:
        An :class:`EventLogReport`; its ``runtime_events`` are filled only when ``ok``.

    Raises:
        ValueError: if ``rtmr3`` is not 48 bytes (a caller bug, not bad evidence).
    """
    if len(rtmr3) != RTMR_SIZE:
        raise ValueError(f"rtmr3 must be {RTMR_SIZE} bytes, got {len(rtmr3)}")

    # (1) Parse within bounds; a malformed log decides nothing else.
    try:
        events = parse_event_log(events_raw)
    except VerificationFailed as exc:
        return EventLogReport(checks=(Check.failed("eventlog.parse", exc.code, exc.message),))
    parse_check = Check.passed("eventlog.parse", f"{len(events)} events within bounds")

    # (2) Replay RTMR3 and compare with the quote's.
    replayed = replay_rtmr(events, imr=3)
    imr3_count = sum(1 for event in events if event.imr == 3)
    if replayed == rtmr3:
        replay_check = Check.passed(
            "eventlog.rtmr3_replay", f"{imr3_count} imr-3 events replay to the quote's RTMR3"
        )
    else:
        replay_check = Check.failed(
            "eventlog.rtmr3_replay",
            "measurement.rtmr3_mismatch",
            f"replayed RTMR3 {replayed.hex()} != quote RTMR3 {rtmr3.hex()}",
        )

    # (3) Recompute every runtime event's digest from its name and payload.
    mismatched = [
        (index, event)
        for index, event in enumerate(events)
        if event.is_runtime
        and runtime_event_digest(event.event_type, event.name, event.payload) != event.digest
    ]
    runtime_count = sum(1 for event in events if event.is_runtime)
    if not mismatched:
        digest_check = Check.passed(
            "eventlog.event_digests",
            f"{runtime_count} runtime event digests recomputed from their payloads",
        )
    else:
        listed = ", ".join(f"#{index} {event.name!r}" for index, event in mismatched)
        digest_check = Check.failed(
            "eventlog.event_digests",
            "eventlog.digest_mismatch",
            f"payload does not hash to the stored digest for event {listed}",
        )

    # (4) Runtime events by name; dstack's own names must occur once.
    runtime = [event for event in events if event.is_runtime and event.imr == 3]
    counts: dict[str, int] = {}
    for event in runtime:
        counts[event.name] = counts.get(event.name, 0) + 1
    duplicated_system = sorted(
        name for name, count in counts.items() if count > 1 and name in DSTACK_SYSTEM_EVENTS
    )
    if not duplicated_system:
        unique_check = Check.passed(
            "eventlog.unique_system_events", "each dstack system event occurs at most once"
        )
    else:
        unique_check = Check.failed(
            "eventlog.unique_system_events",
            "eventlog.duplicate_event",
            f"dstack system event(s) occur more than once: {', '.join(duplicated_system)}",
        )

    checks = (parse_check, replay_check, digest_check, unique_check)
    if not all(check.ok for check in checks):
        return EventLogReport(checks=checks, events=events)

    # (5) Everything is bound to the quote: expose the payloads.
    by_name = {event.name: event.payload for event in runtime if counts[event.name] == 1}
    return EventLogReport(checks=checks, events=events, runtime_events=MappingProxyType(by_name))


def events_to_json(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Render events back into dstack's JSON shape (for receipts and the simulator).

    Raises:
        Nothing.
    """
    return [
        {
            "imr": event.imr,
            "event_type": event.event_type,
            "digest": event.digest.hex(),
            "event": event.name,
            "event_payload": event.payload.hex(),
        }
        for event in events
    ]
