"""Simulated dstack identity of one node: event log, ``info`` and the registers a quote carries.

The simulator's provider embeds ``mrtd``, ``rtmr0..3`` and ``mr_config_id`` into the TDX quote it
signs, and serves ``event_log`` and ``info`` beside it, shaped as a real dstack CVM reports them
(provider-api.md §2 and §5). Every digest is computed the way dstack computes it, so the real
verifiers in ``sidecar.verify`` accept an untampered node.

Knobs break exactly one thing each, for negative tests:

- ``swap_payloads``: replace the payload of named runtime events *after* their digests were
  computed (the attack §2 warns of: a payload swapped under its genuine digest; replay still
  matches).
- ``break_replay``: append one well-formed runtime event after RTMR3 was computed, so the log
  no longer replays to the quoted RTMR3 (every digest is still self-consistent).
- ``served_app_compose``: serve a different ``info.tcb_info.app_compose`` than the one measured
  into ``mr_config_id`` and the ``compose-hash`` event (wrong compose).
- ``info_overrides``: overwrite top-level ``info`` fields (``app_id``, ``instance_id``,
  ``compose_hash``) so the report's copy disagrees with the event log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


__all__ = [
    "DEFAULT_IMAGE_DIGEST",
    "SimulatedNode",
    "build_node_identity",
    "default_app_compose",
    "mr_config_id_for",
]

# Nothing here comes from ``sidecar.verify.eventlog``: the event record, the dstack constants and
# the JSON rendering are the simulator's own, so a parsing or formatting bug in the verifier
# cannot be mirrored by the evidence it is tested against.

# dstack's runtime event type (dstack cc-eventlog ``DSTACK_RUNTIME_EVENT_TYPE``; spec §2).
DSTACK_RUNTIME_EVENT_TYPE = 0x08000001
# TDX measurement registers are SHA-384: 48 bytes.
RTMR_SIZE = 48


@dataclass(frozen=True, slots=True)
class Event:
    """One event the simulated node logs (the simulator's own record of it)."""

    imr: int
    event_type: int
    digest: bytes
    name: str
    payload: bytes

    @property
    def is_runtime(self) -> bool:
        """True for a dstack runtime event (digest over type, name and payload)."""
        return self.event_type == DSTACK_RUNTIME_EVENT_TYPE


def events_to_json(events: list[Event]) -> list[dict[str, Any]]:
    """dstack's JSON event-log shape: ``{imr, event_type, digest, event, event_payload}`` (spec §2,
    as in the real NEAR report in ``/work/shared/samples/near``).

    Raises:
        Nothing.
    """
    return [{"imr": e.imr, "event_type": e.event_type, "digest": e.digest.hex(), "event": e.name,
             "event_payload": e.payload.hex()} for e in events]


# A fixed, obviously fake image digest: tests can pin it in policies.
DEFAULT_IMAGE_DIGEST = "sha256:" + hashlib.sha256(b"tee-sidecar simulated vllm-proxy").hexdigest()

# TCG event types used for the simulated boot events in RTMR0-2 (TCG PC Client PFP spec).
_EV_SEPARATOR = 0x00000004
_EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
_EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
_EV_EVENT_TAG = 0x00000006


@dataclass(frozen=True, slots=True)
class SimulatedNode:
    """Everything dstack-shaped about one simulated node.

    Attributes:
        event_log: the JSON-shaped event log (imr 0-3), as served in the report.
        info: the report's ``info`` object (``tcb_info`` as a dict).
        app_compose: the compose string *served* in ``info.tcb_info.app_compose``.
        measured_app_compose: the compose string measured into ``mr_config_id`` and RTMR3.
        mrtd, rtmr0, rtmr1, rtmr2, rtmr3: 48-byte registers to embed in the quote.
        mr_config_id: 48 bytes, ``0x01 || sha256(measured compose)`` zero-padded.
    """

    event_log: list[dict[str, Any]]
    info: dict[str, Any]
    app_compose: str
    measured_app_compose: str
    mrtd: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    mr_config_id: bytes

    @property
    def compose_hash(self) -> bytes:
        """sha256 of the measured compose (the ``compose-hash`` event's genuine payload)."""
        return hashlib.sha256(self.measured_app_compose.encode("utf-8")).digest()


def default_app_compose(image_digest: str = DEFAULT_IMAGE_DIGEST) -> str:
    """A dstack ``app-compose.json`` string running one image pinned by digest.

    Raises:
        Nothing.
    """
    docker_compose = (
        "services:\n"
        "  vllm-proxy:\n"
        f"    image: ghcr.io/example/vllm-proxy@{image_digest}\n"
        "    ports:\n"
        '      - "8000:8000"\n'
    )
    document = {
        "manifest_version": 2,
        "name": "simulated-inference",
        "runner": "docker-compose",
        "docker_compose_file": docker_compose,
        "kms_enabled": True,
        "gateway_enabled": False,
        "public_logs": False,
        "public_sysinfo": True,
        "local_key_provider_enabled": False,
        "no_instance_id": False,
    }
    return json.dumps(document, indent=2)


def mr_config_id_for(app_compose: str) -> bytes:
    """``0x01 || sha256(app_compose)`` zero-padded to 48 bytes (provider-api.md §2).

    Raises:
        Nothing.
    """
    value = b"\x01" + hashlib.sha256(app_compose.encode("utf-8")).digest()
    return value.ljust(RTMR_SIZE, b"\x00")


# The digest and replay formulas are written out again here rather than imported from the
# verifier, so that tests cross-check two implementations of §2 instead of one against itself.
def _runtime(name: str, payload: bytes) -> Event:
    tag = DSTACK_RUNTIME_EVENT_TYPE.to_bytes(4, "little")
    digest = hashlib.sha384(tag + b":" + name.encode("utf-8") + b":" + payload).digest()
    return Event(
        imr=3, event_type=DSTACK_RUNTIME_EVENT_TYPE, digest=digest, name=name, payload=payload
    )


def _extend(events: list[Event], imr: int) -> bytes:
    register = bytes(RTMR_SIZE)
    for event in events:
        if event.imr == imr:
            register = hashlib.sha384(register + event.digest).digest()
    return register


def _boot(imr: int, event_type: int, payload: bytes) -> Event:
    # Boot events are measured by firmware over data the log does not fully carry; a plain sha384
    # of the payload is enough for a simulation (the verifier never recomputes these).
    return Event(
        imr=imr,
        event_type=event_type,
        digest=hashlib.sha384(payload).digest(),
        name="",
        payload=payload,
    )


def build_node_identity(
    *,
    app_compose: str | None = None,
    app_id: str,
    instance_id: str,
    os_image_hash: bytes,
    mrtd: bytes | None = None,
    key_provider: Mapping[str, str] | None = None,
    mr_kms: bytes | None = None,
    storage_fs: str = "zfs",
    swap_payloads: Mapping[str, bytes] | None = None,
    break_replay: bool = False,
    served_app_compose: str | None = None,
    info_overrides: Mapping[str, Any] | None = None,
) -> SimulatedNode:
    """Build a node's dstack evidence; untampered unless a knob says otherwise.

    Args:
        app_compose: the compose measured into the node (default: :func:`default_app_compose`).
        app_id: 40 hex chars (20 bytes), the dstack app id.
        instance_id: hex, the dstack instance id (may be empty, as with ``no_instance_id``).
        os_image_hash: 32 bytes, the OS image measurement dstack records.
        mrtd: 48 bytes of TD firmware measurement (default: a fixed fake value).
        key_provider: the ``key-provider`` event's JSON object (default: a KMS).
        mr_kms: the ``mr-kms`` event payload (default: a fixed fake value).
        storage_fs: the ``storage-fs`` event payload.
        swap_payloads: runtime event name → payload put in place after digests were computed.
        break_replay: append a genuine-looking runtime event the quoted RTMR3 does not include.
        served_app_compose: a different compose string to serve in ``info`` than was measured.
        info_overrides: top-level ``info`` fields to overwrite.

    Raises:
        ValueError: if ``app_id``/``instance_id`` are not hex, a register is not 48 bytes, or
            ``swap_payloads`` names an event that is not in the log.
    """
    measured_compose = app_compose if app_compose is not None else default_app_compose()
    compose_hash = hashlib.sha256(measured_compose.encode("utf-8")).digest()
    app_id_bytes = bytes.fromhex(app_id)
    instance_id_bytes = bytes.fromhex(instance_id)
    if mrtd is None:
        mrtd = hashlib.sha384(b"tee-sidecar simulated TDVF").digest()
    if len(mrtd) != RTMR_SIZE:
        raise ValueError(f"mrtd must be {RTMR_SIZE} bytes")
    if key_provider is None:
        key_provider = {"name": "kms", "id": hashlib.sha256(b"simulated kms").hexdigest()}
    if mr_kms is None:
        mr_kms = hashlib.sha384(b"tee-sidecar simulated KMS").digest()

    runtime = _runtime_events(app_id_bytes, compose_hash, instance_id_bytes, mr_kms,
                              os_image_hash, key_provider, storage_fs)
    events = _boot_events() + runtime
    rtmr0, rtmr1, rtmr2, rtmr3 = (_extend(events, index) for index in range(4))

    # Knobs, applied after the registers were fixed so each breaks only what it names.
    if swap_payloads:
        events = _swapped(events, runtime, swap_payloads)
    if break_replay:
        events.append(_runtime("injected-after-quote", b"not in the quoted RTMR3"))

    served_compose = served_app_compose if served_app_compose is not None else measured_compose
    info: dict[str, Any] = {
        "app_id": app_id,
        "instance_id": instance_id,
        "compose_hash": compose_hash.hex(),
        "app_name": "simulated-inference",
        "tcb_info": {
            "mrtd": mrtd.hex(),
            "rtmr0": rtmr0.hex(),
            "rtmr1": rtmr1.hex(),
            "rtmr2": rtmr2.hex(),
            "rtmr3": rtmr3.hex(),
            "os_image_hash": os_image_hash.hex(),
            "compose_hash": compose_hash.hex(),
            "app_compose": served_compose,
        },
    }
    if info_overrides:
        info.update(info_overrides)

    return SimulatedNode(
        event_log=events_to_json(events),
        info=info,
        app_compose=served_compose,
        measured_app_compose=measured_compose,
        mrtd=mrtd,
        rtmr0=rtmr0,
        rtmr1=rtmr1,
        rtmr2=rtmr2,
        rtmr3=rtmr3,
        mr_config_id=mr_config_id_for(measured_compose),
    )


def _boot_events() -> list[Event]:
    return [
        _boot(0, _EV_EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot\x00"),
        _boot(0, _EV_SEPARATOR, b"\x00\x00\x00\x00"),
        _boot(1, _EV_EFI_BOOT_SERVICES_APPLICATION, b"simulated bootloader"),
        _boot(1, _EV_SEPARATOR, b"\x00\x00\x00\x00"),
        _boot(2, _EV_EVENT_TAG, b"simulated kernel cmdline console=ttyS0"),
        _boot(2, _EV_EVENT_TAG, b"simulated initrd"),
    ]


def _runtime_events(app_id: bytes, compose_hash: bytes, instance_id: bytes, mr_kms: bytes,
                    os_image_hash: bytes, key_provider: Mapping[str, str],
                    storage_fs: str) -> list[Event]:
    # Order as dstack emits them while booting (§2, seen on a real NEAR report).
    return [
        _runtime("system-preparing", b""),
        _runtime("app-id", app_id),
        _runtime("compose-hash", compose_hash),
        _runtime("instance-id", instance_id),
        _runtime("boot-mr-done", b""),
        _runtime("mr-kms", mr_kms),
        _runtime("os-image-hash", os_image_hash),
        _runtime(
            "key-provider",
            json.dumps(dict(key_provider), separators=(",", ":")).encode("utf-8"),
        ),
        _runtime("storage-fs", storage_fs.encode("utf-8")),
        _runtime("system-ready", b""),
    ]


def _swapped(events: list[Event], runtime: list[Event],
             swap_payloads: Mapping[str, bytes]) -> list[Event]:
    """``events`` with the named runtime payloads replaced (digests kept: a tampered log).

    Raises:
        ValueError: ``swap_payloads`` names an event that is not in the log.
    """
    names = {event.name for event in runtime}
    unknown = set(swap_payloads) - names
    if unknown:
        raise ValueError(f"swap_payloads names unknown events: {sorted(unknown)}")
    return [
        Event(e.imr, e.event_type, e.digest, e.name, swap_payloads[e.name])
        if e.is_runtime and e.name in swap_payloads
        else e
        for e in events
    ]
