"""Bindings between a node's compose file, its ``info`` copy and its verified measurements.

Sans-I/O. The report's ``info`` object (provider-api.md §2) is the provider's own description
of the node: worth nothing until each field is tied to something the TDX quote measured.

- ``mr_config_id`` of the verified quote is ``0x01 || sha256(app_compose)`` zero-padded to 48 bytes,
  with ``app_compose`` hashed exactly as the string served (§2 "Compose binding").
- The ``compose-hash``, ``app-id`` and ``instance-id`` runtime events (read from an event log that
  replayed to the quote's RTMR3, see :mod:`sidecar.verify.eventlog`) must agree with ``info``
  and with the compose that was served.
- NEAR's optional ``compose_manager_attestation`` carries ``actions`` and their hash, in one
  of two canonical forms (spec 0.4); its own quote is verified in ``sidecar.verify.attestation``.
- The compose names container images; a pin by ``@sha256:`` digest is what makes the measured
  compose say which code runs (§2 "Image provenance").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sidecar.errors import VerificationFailed
from sidecar.verify.checks import Check

__all__ = [
    "MAX_APP_COMPOSE_CHARS",
    "MAX_INFO_JSON_CHARS",
    "MR_CONFIG_ID_SIZE",
    "ComposeImages",
    "NodeInfo",
    "check_compose_binding",
    "MARCH_2026_ACTION_FIELDS",
    "actions_canonical_forms",
    "check_compose_manager_actions",
    "check_images_pinned",
    "check_info_events",
    "compose_images",
    "expected_mr_config_id",
    "parse_info",
]

# MRCONFIGID is a 48-byte field of the TD report (Intel TDX module spec, TDREPORT body).
MR_CONFIG_ID_SIZE = 48
# dstack's tag byte for "mr_config_id holds a compose hash" (dstack `show_compose`, §2).
_COMPOSE_HASH_TAG = b"\x01"

# Bounds that stop abuse: a real app-compose is a few KiB; `info` with its tcb_info a few tens.
MAX_APP_COMPOSE_CHARS = 1 << 20
MAX_INFO_JSON_CHARS = 4 << 20

_MALFORMED = "info.malformed"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The report's ``info`` object, decoded. Claims only; nothing here is verified.

    Attributes:
        app_compose: ``info.tcb_info.app_compose`` exactly as served (hashed as-is).
        app_id: ``info.app_id`` as lower-case hex without ``0x``, if present.
        instance_id: ``info.instance_id`` likewise, if present.
        compose_hash: ``info.compose_hash`` likewise, if present.
        tcb_info: the whole decoded ``tcb_info`` (``mrtd``, ``rtmr0``.. copies: never trust them).
    """

    app_compose: str
    app_id: str | None
    instance_id: str | None
    compose_hash: str | None
    tcb_info: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ComposeImages:
    """The image references a compose file names.

    Attributes:
        references: every ``image:`` value, in file order.
    """

    references: tuple[str, ...]

    @property
    def digests(self) -> tuple[str, ...]:
        """Distinct ``sha256:<hex>`` digests the references pin, sorted."""
        found = {
            match.group(1).lower()
            for reference in self.references
            if (match := _DIGEST_PIN.search(reference)) is not None
        }
        return tuple(sorted(found))

    @property
    def unpinned(self) -> tuple[str, ...]:
        """References naming a tag, not a digest (mutable: not bound by the measurement)."""
        return tuple(ref for ref in self.references if _DIGEST_PIN.search(ref) is None)


_DIGEST_PIN = re.compile(r"@(sha256:[0-9a-fA-F]{64})$")
# Matches `image: ref` in block style, optionally quoted; good enough for docker-compose files,
# which name images as scalars. A flow-style or anchored image is missed, and then reported as
# "no images" rather than guessed at.
_IMAGE_LINE = re.compile(r"""^[ \t]*(?:-[ \t]+)?image:[ \t]*["']?([^\s"'#]+)""", re.MULTILINE)


def _normalize_hex(value: object, *, what: str) -> str | None:
    """Lower-case hex without ``0x``; ``None`` stays ``None``.

    Raises:
        VerificationFailed: code ``info.malformed`` when ``value`` is not a string.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise VerificationFailed(
            f"{what} must be a string, got {type(value).__name__}", code=_MALFORMED
        )
    text = value.strip().lower()
    return text[2:] if text.startswith("0x") else text


def _load_json_object(value: object, *, what: str) -> Mapping[str, Any]:
    """Accept a dict, or a JSON string holding one (providers send both shapes, §2).

    Raises:
        VerificationFailed: code ``info.malformed``.
    """
    if isinstance(value, str):
        if len(value) > MAX_INFO_JSON_CHARS:
            raise VerificationFailed(
                f"{what} JSON is above {MAX_INFO_JSON_CHARS} chars", code=_MALFORMED
            )
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:  # deep nesting must fail closed too
            raise VerificationFailed(f"{what} is not valid JSON: {exc}", code=_MALFORMED) from exc
    if not isinstance(value, Mapping):
        raise VerificationFailed(
            f"{what} must be an object, got {type(value).__name__}", code=_MALFORMED
        )
    return value


def parse_info(info: object) -> NodeInfo:
    """Decode a report's ``info``; ``info.tcb_info`` may be an object or a JSON string.

    Raises:
        VerificationFailed: code ``info.malformed`` when ``info`` or ``tcb_info`` is not an
            object, or ``tcb_info.app_compose`` is missing, not a string or too long. The compose
            binding is mandatory (§2), so a report without ``app_compose`` cannot be verified.
    """
    outer = _load_json_object(info, what="info")
    tcb_info = _load_json_object(outer.get("tcb_info"), what="info.tcb_info")
    app_compose = tcb_info.get("app_compose")
    if not isinstance(app_compose, str):
        raise VerificationFailed(
            "info.tcb_info.app_compose is missing or not a string", code=_MALFORMED
        )
    if len(app_compose) > MAX_APP_COMPOSE_CHARS:
        raise VerificationFailed(
            f"info.tcb_info.app_compose is above {MAX_APP_COMPOSE_CHARS} chars", code=_MALFORMED
        )
    return NodeInfo(
        app_compose=app_compose,
        app_id=_normalize_hex(outer.get("app_id"), what="info.app_id"),
        instance_id=_normalize_hex(outer.get("instance_id"), what="info.instance_id"),
        compose_hash=_normalize_hex(outer.get("compose_hash"), what="info.compose_hash"),
        tcb_info=MappingProxyType(dict(tcb_info)),
    )


def expected_mr_config_id(app_compose: str) -> bytes:
    """``0x01 || sha256(app_compose as UTF-8)`` zero-padded to 48 bytes (§2 "Compose binding").

    Raises:
        Nothing.
    """
    value = _COMPOSE_HASH_TAG + hashlib.sha256(app_compose.encode("utf-8")).digest()
    return value.ljust(MR_CONFIG_ID_SIZE, b"\x00")


def check_compose_binding(app_compose: str, mr_config_id: bytes) -> Check:
    """Check that the verified quote's ``mr_config_id`` measures the served compose.

    Args:
        app_compose: ``info.tcb_info.app_compose`` exactly as served.
        mr_config_id: MRCONFIGID from the *verified* quote.

    Returns:
        ``binding.compose``; on failure code ``binding.compose_mismatch``.

    Raises:
        Nothing: a wrong-length ``mr_config_id`` is a failing check.
    """
    name = "binding.compose"
    expected = expected_mr_config_id(app_compose)
    if len(mr_config_id) != MR_CONFIG_ID_SIZE:
        return Check.failed(
            name,
            "binding.compose_mismatch",
            f"mr_config_id is {len(mr_config_id)} bytes, expected {MR_CONFIG_ID_SIZE}",
        )
    if mr_config_id != expected:
        return Check.failed(
            name,
            "binding.compose_mismatch",
            f"mr_config_id {mr_config_id.hex()} != 01||sha256(app_compose) {expected.hex()}",
        )
    return Check.passed(name, f"mr_config_id binds app_compose sha256 {expected[1:33].hex()}")


def check_info_events(info: NodeInfo, runtime_events: Mapping[str, bytes]) -> tuple[Check, ...]:
    """Check that the event log's identity events agree with ``info`` and the served compose.

    ``runtime_events`` must come from a verified :class:`~sidecar.verify.eventlog.EventLogReport`
    (empty when the log failed, and then every check here fails).

    Returns:
        ``binding.compose_hash_event`` (the event's payload == sha256(app_compose)),
        ``binding.info_compose_hash`` (``info.compose_hash`` == sha256(app_compose)),
        ``binding.app_id_event`` (event == ``info.app_id``),
        ``binding.instance_id_event`` (event == ``info.instance_id``).
        The event must be present; an ``info`` field that is absent has nothing to disagree
        with, because every later decision reads the event, never the copy.

    Raises:
        Nothing.
    """
    served_hash = hashlib.sha256(info.app_compose.encode("utf-8")).hexdigest()
    checks: list[Check] = []

    event = runtime_events.get("compose-hash")
    if event is None:
        checks.append(
            Check.failed(
                "binding.compose_hash_event",
                "binding.compose_hash_mismatch",
                "no verified compose-hash event in the event log",
            )
        )
    elif event.hex() != served_hash:
        checks.append(
            Check.failed(
                "binding.compose_hash_event",
                "binding.compose_hash_mismatch",
                f"compose-hash event {event.hex()} != sha256(app_compose) {served_hash}",
            )
        )
    else:
        checks.append(
            Check.passed("binding.compose_hash_event", f"compose-hash event = {served_hash}")
        )

    if info.compose_hash is None:
        checks.append(
            Check.passed("binding.info_compose_hash", "info carries no compose_hash copy")
        )
    elif info.compose_hash != served_hash:
        checks.append(
            Check.failed(
                "binding.info_compose_hash",
                "binding.compose_hash_mismatch",
                f"info.compose_hash {info.compose_hash} != sha256(app_compose) {served_hash}",
            )
        )
    else:
        checks.append(
            Check.passed("binding.info_compose_hash", "info.compose_hash = sha256(app_compose)")
        )

    checks.append(
        _event_matches_info(
            runtime_events, "app-id", info.app_id, "binding.app_id_event", "binding.app_id_mismatch"
        )
    )
    checks.append(
        _event_matches_info(
            runtime_events,
            "instance-id",
            info.instance_id,
            "binding.instance_id_event",
            "binding.instance_id_mismatch",
        )
    )
    return tuple(checks)


def _event_matches_info(
    runtime_events: Mapping[str, bytes],
    event_name: str,
    claimed: str | None,
    check_name: str,
    code: str,
) -> Check:
    event = runtime_events.get(event_name)
    if event is None:
        return Check.failed(check_name, code, f"no verified {event_name} event in the event log")
    if claimed is None:
        return Check.passed(check_name, f"{event_name} event {event.hex()}; info carries no copy")
    if event.hex() != claimed:
        return Check.failed(
            check_name, code, f"{event_name} event {event.hex()} != info value {claimed}"
        )
    return Check.passed(check_name, f"{event_name} event = info value {claimed}")


# The March-2026 compose-manager hashed each action with its keys in the action type's field
# order (spec 0.4, seen on a real capture); current servers sort the keys. Nothing else is a form.
MARCH_2026_ACTION_FIELDS = ("timestamp", "action", "container", "tag", "commit", "file",
                            "file_sha256", "services")


def actions_canonical_forms(actions: object) -> dict[str, str]:
    """The deterministic serialisations of ``actions`` that spec 0.4 accepts, by name.

    ``sorted``: compact JSON, keys sorted, ``ensure_ascii=False`` (current servers).
    ``field-order``: compact JSON, each action's keys in ``MARCH_2026_ACTION_FIELDS`` order;
    only when ``actions`` is a list of objects using no other key.

    Raises:
        Nothing.
    """
    forms = {"sorted": json.dumps(actions, sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False)}
    if isinstance(actions, list) and all(
        isinstance(a, dict) and set(a) <= set(MARCH_2026_ACTION_FIELDS) for a in actions
    ):
        ordered = [{k: a[k] for k in MARCH_2026_ACTION_FIELDS if k in a} for a in actions]
        forms["field-order"] = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)
    return forms


def check_compose_manager_actions(cma: object) -> Check:
    """Check NEAR's ``compose_manager_attestation``: ``actions_hash`` hashes ``actions``.

    ``actions_hash`` must be sha256 of one of :func:`actions_canonical_forms` (spec 0.4). The
    hash authenticates anything only once the compose-manager quote that binds it verified
    (``sidecar.verify.attestation``); this check is the last step of that.

    Returns:
        ``binding.compose_manager_actions``; code ``binding.actions_malformed`` when the object
        lacks ``actions`` or a string ``actions_hash``, ``binding.actions_hash_mismatch`` when
        no accepted form hashes to it.

    Raises:
        Nothing.
    """
    name = "binding.compose_manager_actions"
    if not isinstance(cma, Mapping) or "actions" not in cma:
        return Check.failed(
            name, "binding.actions_malformed", "compose_manager_attestation lacks 'actions'"
        )
    claimed = cma.get("actions_hash")
    if not isinstance(claimed, str):
        return Check.failed(
            name, "binding.actions_malformed", "compose_manager_attestation lacks 'actions_hash'"
        )
    claimed_hex = claimed.strip().lower().removeprefix("0x")
    computed = {form: hashlib.sha256(text.encode("utf-8")).hexdigest()
                for form, text in actions_canonical_forms(cma["actions"]).items()}
    for form, digest in computed.items():
        if hmac.compare_digest(claimed_hex, digest):
            return Check.passed(name, f"actions_hash = sha256({form} actions) {digest}")
    shown = ", ".join(f"{form} {digest}" for form, digest in computed.items())
    return Check.failed(
        name,
        "binding.actions_hash_mismatch",
        f"actions_hash {claimed_hex[:64]} is not sha256 of the actions in any accepted form "
        f"({shown})",
    )


def compose_images(app_compose: str) -> ComposeImages:
    """List the images named by the docker-compose file inside a dstack ``app_compose``.

    Raises:
        VerificationFailed: code ``info.malformed`` when ``app_compose`` is not a JSON object or
            its ``docker_compose_file`` is not a string. A compose without one (dstack's
            ``bash`` runner) names no images.
    """
    document = _load_json_object(app_compose, what="app_compose")
    docker_compose = document.get("docker_compose_file", "")
    if not isinstance(docker_compose, str):
        raise VerificationFailed(
            "app_compose.docker_compose_file must be a string", code=_MALFORMED
        )
    return ComposeImages(references=tuple(_IMAGE_LINE.findall(docker_compose)))


def check_images_pinned(app_compose: str) -> Check:
    """Check that every image the compose names is pinned by ``@sha256:`` digest.

    A tag (``:latest``) can be re-pointed after the measurement, so the measured compose would no
    longer say which code runs (§2 "Image provenance").

    Returns:
        ``binding.images_pinned``; code ``binding.image_not_pinned`` naming the unpinned images,
        or ``info.malformed`` when the compose cannot be read.

    Raises:
        Nothing.
    """
    name = "binding.images_pinned"
    try:
        images = compose_images(app_compose)
    except VerificationFailed as exc:
        return Check.failed(name, exc.code, exc.message)
    if images.unpinned:
        return Check.failed(
            name,
            "binding.image_not_pinned",
            f"image(s) not pinned by digest: {', '.join(images.unpinned)}",
        )
    return Check.passed(
        name, f"{len(images.references)} image(s) pinned: {', '.join(images.digests) or 'none'}"
    )
