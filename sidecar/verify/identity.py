"""Which code a node runs: its deployment identity, and whether it is one already trusted. Sans-I/O.

A verified attestation says "some enclave with these measurements holds this key". Which
measurements a user should accept is the question this module answers with identities, the way
SSH's ``known_hosts`` answers "is this the host I talked to before": a node's
:class:`DeploymentIdentity` is every verified value that names the code it runs, and nothing
that differs between two instances of the same deployment. Per model and node role:

- ``mrtd``: the TD firmware (TDVF) measurement;
- ``rtmr0``, ``rtmr1``, ``rtmr2``: virtual hardware and firmware configuration, bootloader and
  kernel, kernel command line and initrd (the dstack OS);
- ``mr_config_id`` and ``compose_hash``: the dstack app-compose (provider-api.md §2 "Compose
  binding"), which names the container images;
- ``images``: the image references of that compose (kept apart so a change names the image);
- ``os_image_hash``: the dstack OS image (runtime event ``os-image-hash``);
- ``key_provider``: who derives the node's keys (runtime event ``key-provider``: the KMS and its
  root key), so the same code under another key authority is another deployment.

Left out on purpose: RTMR3 (it also extends the instance id), the ``instance-id`` and
``app-id`` events, ``mr-kms`` (the KMS's own measurement: a KMS upgrade changes it while the
app's code and key root stay), signing keys, nonces, TLS keys, TCB levels and GPU evidence (a
property of the machine, judged by the policy's own rules). So a restart, a new instance or a
key rotation keeps the identity, and a change of compose, image, OS or firmware does not.

Every value comes from verified evidence: registers from the verified quote, the compose only
once ``mr_config_id`` bound it, runtime payloads only from an event log that replayed to RTMR3
(``sidecar.verify.attestation`` fills :class:`DeploymentFacts` under those conditions only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from sidecar.errors import VerificationFailed
from sidecar.verify.checks import Check, Status
from sidecar.verify.compose import compose_images

if TYPE_CHECKING:
    from sidecar.verify.attestation import NodeReport

__all__ = [
    "IDENTITY_FIELDS",
    "IdentityMode",
    "DeploymentFacts",
    "DeploymentIdentity",
    "check_identity",
    "deployment_identity",
    "identity_differences",
]

IdentityMode = Literal["tofu", "pinned", "any"]
IDENTITY_MODES: Final[tuple[IdentityMode, ...]] = get_args(IdentityMode)

# The fields compared, in the order a change is reported (firmware first, the app last).
IDENTITY_FIELDS: Final = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "os_image_hash", "key_provider",
                          "mr_config_id", "compose_hash", "images")

# Hex shown per value in a message; the pin store and `pins show` keep the whole value.
_SHOWN_HEX = 16
# The key-provider payload is a short JSON object (dstack; a real NEAR report's is 190 bytes).
MAX_KEY_PROVIDER_CHARS: Final = 4096


@dataclass(frozen=True, slots=True)
class DeploymentFacts:
    """Deployment facts of one node that only verified evidence provides.

    Attributes:
        app_compose: the app-compose string that ``mr_config_id`` of the verified quote binds.
        compose_hash: hex payload of the verified ``compose-hash`` event.
        os_image_hash: hex payload of the verified ``os-image-hash`` event.
        key_provider: the verified ``key-provider`` payload (UTF-8 text, or hex if not text).
    """

    app_compose: str
    compose_hash: str | None = None
    os_image_hash: str | None = None
    key_provider: str | None = None

    @classmethod
    def from_verified(cls, app_compose: str, runtime_events: Mapping[str, bytes]) -> DeploymentFacts:
        """Build from a bound compose and the runtime events of a verified event log.

        Raises:
            Nothing.
        """
        def text(value: bytes | None) -> str | None:
            if value is None:
                return None
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return value.hex()

        compose = runtime_events.get("compose-hash")
        os_image = runtime_events.get("os-image-hash")
        return cls(app_compose=app_compose,
                   compose_hash=compose.hex() if compose is not None else None,
                   os_image_hash=os_image.hex() if os_image is not None else None,
                   key_provider=text(runtime_events.get("key-provider")))


@dataclass(frozen=True, slots=True)
class DeploymentIdentity:
    """The code a node of one role runs; equal identities mean the same deployment.

    Attributes:
        role: the node's role in the report (``model`` or ``gateway``).
        mrtd, rtmr0, rtmr1, rtmr2, mr_config_id: lower-case hex of the verified registers.
        compose_hash: hex sha256 of the app-compose (``None`` if the log carried no event).
        images: the compose's image references, sorted and without duplicates.
        os_image_hash: hex of the dstack OS image (``None`` if absent).
        key_provider: the key-provider payload (``None`` if absent).
    """

    role: str
    mrtd: str
    rtmr0: str
    rtmr1: str
    rtmr2: str
    mr_config_id: str
    compose_hash: str | None
    images: tuple[str, ...]
    os_image_hash: str | None
    key_provider: str | None

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: a short name for the identity in listings."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The identity as a JSON object (the pin store's and ``pins show``'s form)."""
        return {f.name: list(getattr(self, f.name)) if f.name == "images" else getattr(self, f.name)
                for f in fields(self)}

    @classmethod
    def from_json(cls, obj: object) -> DeploymentIdentity:
        """Read what :meth:`to_json` wrote (or a pin from the policy file).

        Raises:
            ValueError: ``obj`` is not such an object (a missing, extra or mistyped field; a
                register that is not 48 bytes of hex; a hash that is not 32 bytes of hex).
        """
        if not isinstance(obj, Mapping):
            raise ValueError("an identity must be an object")
        names = {f.name for f in fields(cls)}
        if set(obj) != names:
            missing, extra = sorted(names - set(obj)), sorted(set(obj) - names)
            raise ValueError(f"identity fields missing {missing} or unknown {extra}")
        values: dict[str, Any] = {}
        for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mr_config_id"):
            values[name] = _hex(obj[name], 48, name, optional=False)
        for name in ("compose_hash", "os_image_hash"):
            values[name] = _hex(obj[name], 32, name, optional=True)
        role, images, key_provider = obj["role"], obj["images"], obj["key_provider"]
        if not isinstance(role, str) or not role:
            raise ValueError("role must be a non-empty string")
        if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
            raise ValueError("images must be a list of image references")
        if key_provider is not None and (not isinstance(key_provider, str)
                                         or len(key_provider) > MAX_KEY_PROVIDER_CHARS):
            raise ValueError("key_provider must be a string or null")
        return cls(role=role, images=tuple(sorted(set(images))), key_provider=key_provider,
                   **values)


def _hex(value: object, size: int, name: str, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a hex string")
    text = value.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{name} is not hex") from None
    if len(raw) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(raw)}")
    return text


def deployment_identity(node: NodeReport) -> DeploymentIdentity:
    """The identity of an attested node.

    Raises:
        VerificationFailed: code ``policy.identity_unestablished`` when the node did not pass
            every check, or its verified facts do not say which compose it runs (no identity
            can be read from evidence that was not verified).
    """
    def unestablished(why: str) -> VerificationFailed:
        return VerificationFailed(f"deployment identity of node {node.label} not established: "
                                  f"{why}", code="policy.identity_unestablished")

    if node.status is not Status.PASS:
        raise unestablished("the node did not pass every check")
    facts = node.deployment
    measured = node.measurements
    if facts is None or not all(measured.get(name) for name in
                                ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mr_config_id")):
        raise unestablished("no verified registers or compose")
    try:
        images = compose_images(facts.app_compose).references
    except VerificationFailed as exc:
        raise unestablished(exc.message) from None
    return DeploymentIdentity(
        role=node.role, mrtd=measured["mrtd"], rtmr0=measured["rtmr0"], rtmr1=measured["rtmr1"],
        rtmr2=measured["rtmr2"], mr_config_id=measured["mr_config_id"],
        compose_hash=facts.compose_hash, images=tuple(sorted(set(images))),
        os_image_hash=facts.os_image_hash, key_provider=facts.key_provider)


def identity_differences(old: DeploymentIdentity, new: DeploymentIdentity
                         ) -> tuple[tuple[str, object, object], ...]:
    """The fields in which ``new`` differs from ``old``: ``(field, old value, new value)``.

    Raises:
        Nothing.
    """
    return tuple((name, getattr(old, name), getattr(new, name)) for name in IDENTITY_FIELDS
                 if getattr(old, name) != getattr(new, name))


def _shown(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    text = str(value)
    is_hex = all(c in "0123456789abcdef" for c in text)
    return text[:_SHOWN_HEX] + "…" if is_hex and len(text) > _SHOWN_HEX else text


def describe_change(old: DeploymentIdentity, new: DeploymentIdentity) -> str:
    """``field old → new; …`` for people (hex cut to 16 characters; images whole).

    Raises:
        Nothing.
    """
    return "; ".join(f"{name} {_shown(was)} → {_shown(now)}"
                     for name, was, now in identity_differences(old, new)) or "no change"


def check_identity(observed: DeploymentIdentity, accepted: Sequence[DeploymentIdentity], *,
                   model: str, source: str, code: str = "policy.identity_changed") -> Check:
    """Is ``observed`` one of the ``accepted`` identities?

    Args:
        observed: the identity of an attested node.
        accepted: the identities trusted for the model (every role; only the node's role counts).
        model: the model, for the message.
        source: where ``accepted`` comes from ("pinned on first use …", "the policy"), for the
            message.
        code: the failure code: ``policy.identity_changed`` (it differs from what was trusted)
            or ``policy.identity_not_pinned`` (a policy that lists pins does not list it).

    Returns:
        ``policy.identity``; when failing, the detail names what changed against the closest
        accepted identity of the same role, old and new.

    Raises:
        Nothing.
    """
    name = "policy.identity"
    same_role = [identity for identity in accepted if identity.role == observed.role]
    if observed in same_role:
        return Check.passed(name, f"{observed.role} identity {observed.fingerprint[:16]} of "
                                  f"{model} is {source}")
    if not same_role:
        return Check.failed(name, code, f"no {observed.role} identity of {model} is {source}; "
                                        f"this node runs {observed.fingerprint[:16]}")
    closest = min(same_role, key=lambda pin: len(identity_differences(pin, observed)))
    return Check.failed(name, code, f"{observed.role} identity of {model} changed from "
                                    f"{closest.fingerprint[:16]} ({source}): "
                                    f"{describe_change(closest, observed)}")


def distinct(identities: Iterable[DeploymentIdentity]) -> tuple[DeploymentIdentity, ...]:
    """``identities`` without repeats, in first-seen order.

    Raises:
        Nothing.
    """
    return tuple(dict.fromkeys(identities))
