"""Trust on first use: the pin store of deployment identities, and the gate that consults it.

Like SSH's ``known_hosts``: the first successful attestation of a model records the deployment
identity of each of its nodes (``sidecar.verify.identity``) in ``<state.dir>/pins/pins.json``;
a later attestation whose identity differs fails with ``policy.identity_changed`` (blocked in
enforce mode, flagged in flag mode) and is recorded as *pending* until an operator runs
``tee-sidecar pins accept MODEL``. The policy chooses per model (``identity`` in the policy
file): ``tofu`` (default), ``pinned`` (only the identities the policy lists) or ``any``.

The store is small JSON, written atomically: a temporary file in the same directory, fsync,
rename over the old file, fsync of the directory (a crash leaves the old or the new file,
never a mix). Writers (the sidecar pinning on first use or recording a pending change, the
``pins`` command) serialise on an ``flock`` of ``pins.lock`` and re-read under it. A running
sidecar re-reads the file when its inode, size or mtime changed, so ``pins accept`` takes
effect without a restart. A store that cannot be read stops start-up with a ``ConfigError``;
if it becomes unreadable while running, attestations fail closed (``pins.store_corrupt``):
a model is never silently pinned again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import structlog

from sidecar.durable import replace_durably
from sidecar.errors import ConfigError, SidecarError, VerificationFailed
from sidecar.providers.wire import parse_attestation_document
from sidecar.archive import decode_context
from sidecar.verify.attestation import (
    AttestationReport,
    NodeEvidence,
    NodeReport,
    TrustRoots,
    verify_attestation,
)
from sidecar.verify.checks import Check, Status
from sidecar.verify.identity import (
    DeploymentIdentity,
    check_identity,
    deployment_identity,
    distinct,
)
from sidecar.verify.policy import ModelPolicy, PolicySet

__all__ = [
    "PINS_FORMAT",
    "IdentityGate",
    "ModelPins",
    "PendingChange",
    "PinStore",
    "PinStoreError",
    "describe_pins",
    "identities_from_saved_report",
    "identity_modes",
    "pins_command",
    "pins_dir",
    "provenance_required",
    "policy_toml",
]

log = structlog.get_logger("tee_sidecar.pins")

PINS_FORMAT: Final = "tee-sidecar-pins/1"
PINS_FILE: Final = Path("pins.json")
LOCK_FILE: Final = Path("pins.lock")
# A store holds a few identities per model (about 1 KiB each); anything near this is not ours.
MAX_PINS_FILE_BYTES: Final = 16 << 20
CORRUPT: Final = "pins.store_corrupt"
UNWRITABLE: Final = "pins.store_unwritable"


class PinStoreError(SidecarError):
    """The pin store cannot be read or written, or a ``pins`` command cannot be done."""

    default_code = CORRUPT


def pins_dir(state_dir: Path) -> Path:
    """Where the pin store of a sidecar with ``state.dir = state_dir`` lives."""
    return state_dir / "pins"


@dataclass(frozen=True, slots=True)
class PendingChange:
    """Identities that were refused because they differ from the pins, for ``pins accept``.

    Attributes:
        identities: the refused identities (one per distinct node identity).
        seen_at: unix seconds of the latest attestation that showed them.
        evidence_sha256: the archived report that showed them.
        detail: what changed, old and new, as the failing check said.
    """

    identities: tuple[DeploymentIdentity, ...]
    seen_at: float
    evidence_sha256: str
    detail: str


@dataclass(frozen=True, slots=True)
class ModelPins:
    """The trusted identities of one model.

    Attributes:
        model: the model name as apps send it.
        identities: the trusted identities (per role).
        pinned_at: unix seconds when they were pinned.
        how: ``first use`` or ``accepted`` (``pins accept``).
        evidence_sha256: the report they were pinned from.
        pending: a refused change waiting for ``pins accept``, if any.
    """

    model: str
    identities: tuple[DeploymentIdentity, ...]
    pinned_at: float
    how: str
    evidence_sha256: str = ""
    pending: PendingChange | None = None

    def to_json(self) -> dict[str, Any]:
        """The store's form of the entry (also ``pins show --json``)."""
        pending = self.pending
        return {
            "identities": [identity.to_json() for identity in self.identities],
            "pinned_at": self.pinned_at, "how": self.how,
            "evidence_sha256": self.evidence_sha256,
            "pending": None if pending is None else {
                "identities": [identity.to_json() for identity in pending.identities],
                "seen_at": pending.seen_at, "evidence_sha256": pending.evidence_sha256,
                "detail": pending.detail},
        }

    @classmethod
    def from_json(cls, model: str, obj: object) -> ModelPins:
        """Read one entry of the store.

        Raises:
            ValueError: the entry is not what :meth:`to_json` writes.
        """
        if not isinstance(obj, Mapping):
            raise ValueError("entry is not an object")
        identities = tuple(DeploymentIdentity.from_json(i) for i in _list(obj.get("identities")))
        if not identities:
            raise ValueError("entry pins no identity")
        pending_obj = obj.get("pending")
        pending = None
        if pending_obj is not None:
            if not isinstance(pending_obj, Mapping):
                raise ValueError("pending is not an object")
            pending = PendingChange(
                identities=tuple(DeploymentIdentity.from_json(i)
                                 for i in _list(pending_obj.get("identities"))),
                seen_at=_number(pending_obj.get("seen_at")),
                evidence_sha256=_string(pending_obj.get("evidence_sha256")),
                detail=_string(pending_obj.get("detail")))
        return cls(model=model, identities=identities, pinned_at=_number(obj.get("pinned_at")),
                   how=_string(obj.get("how")), evidence_sha256=_string(obj.get("evidence_sha256")),
                   pending=pending)


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    return float(value)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _decode(data: bytes, source: Path) -> dict[str, ModelPins]:
    """Parse the store's bytes.

    Raises:
        PinStoreError: anything but a store this module wrote.
    """
    def bad(why: str) -> PinStoreError:
        return PinStoreError(f"pin store {source} is corrupt ({why}); it is not re-pinned "
                             "silently: restore it from a backup, or move it away to trust on "
                             "first use again")

    if len(data) > MAX_PINS_FILE_BYTES:
        raise bad(f"larger than {MAX_PINS_FILE_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(document, dict) or document.get("format") != PINS_FORMAT:
        raise bad(f"not of format {PINS_FORMAT}")
    models = document.get("models")
    if not isinstance(models, dict):
        raise bad("no models object")
    entries: dict[str, ModelPins] = {}
    for model, obj in models.items():
        try:
            entries[model] = ModelPins.from_json(model, obj)
        except ValueError as exc:
            raise bad(f"model {model!r}: {exc}") from None
    return entries


def _encode(entries: Mapping[str, ModelPins]) -> bytes:
    document = {"format": PINS_FORMAT,
                "models": {model: entries[model].to_json() for model in sorted(entries)}}
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


_Stamp = tuple[int, int, int]


class PinStore:
    """The pin store in one directory (``pins_dir(state.dir)``)."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        """Open (and read) the store; a missing store is an empty one.

        Raises:
            ConfigError: code ``pins.store_corrupt`` when the store exists but cannot be read
                or is not one this module wrote; the message says what to do.
        """
        self.directory = directory
        self.path = directory / PINS_FILE
        self._clock = clock
        self._entries: dict[str, ModelPins] = {}
        self._stamp: _Stamp | None = None
        try:
            self._reload()
        except PinStoreError as exc:
            raise ConfigError(exc.message, code=CORRUPT) from None

    # -- reading -----------------------------------------------------------------------------

    def _stat(self) -> _Stamp | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PinStoreError(f"cannot read pin store {self.path}: {exc.strerror}") from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> tuple[dict[str, ModelPins], _Stamp | None]:
        stamp = self._stat()
        if stamp is None:
            return {}, None
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            raise PinStoreError(f"cannot read pin store {self.path}: {exc.strerror}") from None
        return _decode(data, self.path), stamp

    def _reload(self) -> None:
        self._entries, self._stamp = self._read()

    def entries(self) -> dict[str, ModelPins]:
        """Every model's pins, re-read first if the file changed (``pins accept`` ran).

        Raises:
            PinStoreError: the store became unreadable or corrupt (callers fail closed).
        """
        if self._stat() != self._stamp:
            self._reload()
        return dict(self._entries)

    def get(self, model: str) -> ModelPins | None:
        """The pins of ``model``, if any (re-read first if the file changed).

        Raises:
            PinStoreError: the store became unreadable or corrupt.
        """
        return self.entries().get(model)

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ModelPins]]:
        """Hold the store's lock; yield its entries as on disk now; write them back on exit.

        Raises:
            PinStoreError: the directory cannot be created or the store read or written.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise PinStoreError(f"cannot open pin store {self.directory}: {exc.strerror}",
                                code=UNWRITABLE) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries, _ = self._read()
            before = dict(entries)
            yield entries
            if entries != before:
                self._write(entries)
            self._reload()
        finally:
            os.close(lock)  # closing releases the flock

    def _write(self, entries: Mapping[str, ModelPins]) -> None:
        try:
            replace_durably(self.path, _encode(entries))
        except OSError as exc:
            raise PinStoreError(f"cannot write pin store {self.path}: {exc.strerror}",
                                code=UNWRITABLE) from None

    def pin_first_use(self, model: str, identities: tuple[DeploymentIdentity, ...],
                      evidence_sha256: str) -> ModelPins:
        """Pin ``identities`` for ``model`` unless it is pinned already (then return that).

        Raises:
            PinStoreError: the store cannot be read or written.
        """
        with self._locked() as entries:
            existing = entries.get(model)
            if existing is not None:  # another writer pinned it first: that one stands
                return existing
            entries[model] = ModelPins(model, identities, self._clock(), "first use",
                                       evidence_sha256)
            return entries[model]

    def record_pending(self, model: str, identities: tuple[DeploymentIdentity, ...],
                       evidence_sha256: str, detail: str) -> None:
        """Remember a refused change of ``model`` for ``pins accept`` (no write if unchanged).

        Raises:
            PinStoreError: the store cannot be read or written.
        """
        current = self.get(model)
        if (current is not None and current.pending is not None
                and current.pending.identities == identities):
            return  # already recorded: a failing model re-attests every few seconds
        with self._locked() as entries:
            entry = entries.get(model)
            if entry is None:
                return  # forgotten meanwhile: the next attestation pins on first use
            entries[model] = replace(entry, pending=PendingChange(
                identities, self._clock(), evidence_sha256, detail))

    def accept(self, model: str, *, keep_old: bool = False,
               identities: tuple[DeploymentIdentity, ...] | None = None) -> ModelPins:
        """Trust the pending identities of ``model`` (or ``identities``) from now on.

        For each role the pending change names, its identities replace the pinned ones (with
        ``keep_old``, they are added: both releases during a roll-out).

        Raises:
            PinStoreError: nothing is pending and no ``identities`` were given, or the store
                cannot be read or written.
        """
        with self._locked() as entries:
            entry = entries.get(model)
            new = identities if identities is not None else (
                entry.pending.identities if entry is not None and entry.pending else None)
            if not new:
                raise PinStoreError(f"no pending identity change of {model!r} to accept",
                                    code="pins.nothing_pending")
            roles = {identity.role for identity in new}
            kept = () if entry is None else tuple(
                identity for identity in entry.identities
                if keep_old or identity.role not in roles)
            entries[model] = ModelPins(model, distinct(kept + new), self._clock(), "accepted",
                                       entry.pending.evidence_sha256
                                       if entry is not None and entry.pending else "")
            return entries[model]

    def forget(self, model: str) -> bool:
        """Drop every pin of ``model`` (its next attestation pins on first use again).

        Returns:
            Whether the model had pins.

        Raises:
            PinStoreError: the store cannot be read or written.
        """
        with self._locked() as entries:
            return entries.pop(model, None) is not None


# ---------------------------------------------------------------------------------------------
# The gate the attestation cache calls


class IdentityGate:
    """Judges the deployment identity of every attested node against the policy and the store.

    Recipe of :meth:`enforce` (each block in the code is tagged ``# (n)``):

      (1) ``identity = "any"``: nothing to judge;
      (2) read the identity of every node that passed every check (a node whose identity
          cannot be established fails: ``policy.identity_unestablished``);
      (3) the trusted identities: the policy's pins, plus the store's under ``tofu``;
      (4) none at all under ``tofu``: first use, pin what this attestation showed;
      (5) otherwise each node's identity must be trusted (``policy.identity_changed``, or
          ``policy.identity_not_pinned`` under ``pinned``); a refused change is recorded as
          pending and counted;
      (6) a report left without an attested model key fails with the first such code.
    """

    def __init__(self, store: PinStore, policies: PolicySet, *,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.policies = policies
        self._on_change = on_change

    def enforce(self, model: str, report: AttestationReport) -> AttestationReport:
        """The report with a ``policy.identity`` check added to every attested node.

        Raises:
            VerificationFailed: no model node of the report is still attested; the code is
                the identity check's (or ``pins.store_corrupt`` / ``pins.store_unwritable``
                when the store cannot be read or a first-use pin cannot be written).
        """
        policy = self.policies.for_model(model)
        # (1)
        if policy.identity == "any":
            return report
        # (2)
        attested = [n for n in report.nodes if n.status is Status.PASS]
        identities: dict[str, DeploymentIdentity] = {}
        checks: dict[str, Check] = {}
        for node in attested:
            try:
                identities[node.label] = deployment_identity(node)
            except VerificationFailed as exc:
                checks[node.label] = Check.failed("policy.identity", exc.code, exc.message)
        # (3)
        try:
            stored = self.store.get(model) if policy.identity == "tofu" else None
        except PinStoreError as exc:
            raise VerificationFailed(exc.message, code=exc.code) from None
        trusted = policy.identity_pins + (stored.identities if stored is not None else ())
        seen = distinct(identities.values())
        if not trusted and policy.identity == "tofu" and seen:
            # (4)
            try:
                stored = self.store.pin_first_use(model, seen, report.evidence_sha256)
            except PinStoreError as exc:
                raise VerificationFailed(exc.message, code=exc.code) from None
            if stored.how == "first use" and stored.evidence_sha256 == report.evidence_sha256:
                log.info("identity_pinned_on_first_use", model=model,
                         identities=[i.fingerprint for i in seen])
            trusted = stored.identities
        # (5)
        source = (_when(stored) if stored is not None and not policy.identity_pins
                  else "listed in the policy" if policy.identity == "pinned"
                  else "trusted (policy pins and the pin store)")
        code = ("policy.identity_not_pinned" if policy.identity == "pinned"
                else "policy.identity_changed")
        refused: list[DeploymentIdentity] = []
        details: list[str] = []
        for label, identity in identities.items():
            check = check_identity(identity, trusted, model=model, source=source, code=code)
            checks[label] = check
            if not check.ok:
                refused.append(identity)
                details.append(check.detail)
        if refused:
            log.warning("identity_changed", model=model, code=code, detail=details[0])
            if self._on_change is not None:
                self._on_change(model)
            if policy.identity == "tofu" and stored is not None:
                try:
                    self.store.record_pending(model, distinct(refused), report.evidence_sha256,
                                              details[0])
                except PinStoreError as exc:
                    log.error("pending_identity_not_recorded", model=model, error=exc.message)
        nodes = tuple(_with_check(node, checks.get(node.label)) for node in report.nodes)
        judged = replace(report, nodes=nodes)
        # (6)
        if not judged.attested_keys:
            failure = next((checks[n.label] for n in attested if not checks[n.label].ok), None)
            if failure is not None:
                raise VerificationFailed(f"attestation of {model} failed: {failure.detail}",
                                         code=failure.code)
        return judged

    def status(self) -> dict[str, Any]:
        """Per model in the store: its pins, when pinned and any pending change (JSON-ready).

        Raises:
            Nothing: an unreadable store is reported as such.
        """
        try:
            entries = self.store.entries()
        except PinStoreError as exc:
            return {"error": exc.message, "models": {}}
        return {"error": None, "models": {
            model: {"mode": _mode_of(self.policies, model), **_summary(entry)}
            for model, entry in sorted(entries.items())}}


def _when(entry: ModelPins) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(entry.pinned_at))
    return f"pinned ({entry.how}) {stamp}"


def _with_check(node: NodeReport, check: Check | None) -> NodeReport:
    return node if check is None else replace(node, checks=node.checks + (check,))


def _mode_of(policies: PolicySet, model: str) -> str:
    try:
        return policies.for_model(model).identity
    except VerificationFailed:
        return "refused"


def _summary(entry: ModelPins) -> dict[str, Any]:
    pending = entry.pending
    return {
        "pinned_at": entry.pinned_at, "how": entry.how, "evidence_sha256": entry.evidence_sha256,
        "identities": [dict(identity.to_json(), fingerprint=identity.fingerprint)
                       for identity in entry.identities],
        "pending": None if pending is None else {
            "seen_at": pending.seen_at, "evidence_sha256": pending.evidence_sha256,
            "detail": pending.detail,
            "identities": [dict(identity.to_json(), fingerprint=identity.fingerprint)
                           for identity in pending.identities]},
    }


def identity_modes(policies: PolicySet) -> dict[str, list[str]]:
    """Which policy entries (model globs) run on ``tofu``, ``pinned`` and ``any``.

    Raises:
        Nothing.
    """
    modes: dict[str, list[str]] = {"tofu": [], "pinned": [], "any": []}
    entries: list[ModelPolicy] = [*policies.models]
    if not policies.strict:
        entries.append(policies.default)
    for entry in entries:
        label = entry.pattern if entry is not policies.default else "(default) *"
        modes[entry.identity].append(label)
    return modes


def _toml_string(value: str) -> str:
    # A TOML basic string is JSON-compatible for the characters json.dumps escapes.
    return json.dumps(value, ensure_ascii=False)


def policy_toml(entries: Mapping[str, ModelPins]) -> str:
    """The pins of ``entries`` in policy-file syntax (``tee-sidecar pins export``).

    Each model becomes a ``[models."…"]`` table with ``identity = "pinned"`` and one
    ``[[models."…".pins]]`` block per identity. Put the tables before any broader glob of
    your policy file: the first matching table wins.

    Raises:
        Nothing.
    """
    lines = ["# Deployment identities exported by `tee-sidecar pins export`.",
             "# Paste these tables before any broader glob in your policy file."]
    for model in sorted(entries):
        entry = entries[model]
        key = f"models.{_toml_string(model)}"
        lines += ["", f"[{key}]", 'identity = "pinned"']
        for identity in entry.identities:
            lines += ["", f"[[{key}.pins]]",
                      f"# {identity.fingerprint[:16]}, {entry.how} "
                      f"{time.strftime('%Y-%m-%d', time.gmtime(entry.pinned_at))}"]
            for name, value in identity.to_json().items():
                if value is None:
                    continue
                if isinstance(value, list):
                    items = ", ".join(_toml_string(v) for v in value)
                    lines.append(f"{name} = [{items}]")
                else:
                    lines.append(f"{name} = {_toml_string(str(value))}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# `tee-sidecar pins list|show|accept|forget|export`


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _identity_lines(identity: DeploymentIdentity, indent: str) -> list[str]:
    lines = [f"{indent}{identity.role} identity {identity.fingerprint}"]
    for name, value in identity.to_json().items():
        if name == "role":
            continue
        shown = ", ".join(value) if isinstance(value, list) else value
        lines.append(f"{indent}  {name:<14}{shown if shown not in (None, '') else '(none)'}")
    return lines


def describe_pins(entry: ModelPins) -> str:
    """``pins show``: every pinned identity in full, and the pending change.

    Raises:
        Nothing.
    """
    lines = [f"{entry.model}: pinned ({entry.how}) {_utc(entry.pinned_at)}"
             + (f" from evidence {entry.evidence_sha256}" if entry.evidence_sha256 else "")]
    for identity in entry.identities:
        lines += _identity_lines(identity, "  ")
    pending = entry.pending
    if pending is None:
        lines.append("  no pending change")
    else:
        lines += [f"  PENDING change seen {_utc(pending.seen_at)} (evidence "
                  f"{pending.evidence_sha256}):", f"    {pending.detail}",
                  f"    accept with: tee-sidecar pins accept {entry.model!r}"]
        for identity in pending.identities:
            lines += _identity_lines(identity, "    ")
    return "\n".join(lines)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def pins_command(command: str, store: PinStore, *, model: str | None = None,
                 keep_old: bool = False, as_json: bool = False,
                 out: Callable[[str], None] = print, err: Callable[[str], None] = _stderr) -> int:
    """Run one ``tee-sidecar pins`` sub-command against ``store``; returns the exit status.

    ``list`` (one line per model), ``show MODEL``, ``accept MODEL`` (trust the pending change),
    ``forget MODEL`` (trust on first use again), ``export [MODEL]`` (policy-file syntax).

    Raises:
        PinStoreError: the store cannot be read or written, or ``accept`` finds nothing
            pending (code ``pins.nothing_pending``).
    """
    entries = store.entries()
    if command == "list":
        if as_json:
            out(json.dumps({m: _summary(e) for m, e in sorted(entries.items())}, indent=2))
        elif not entries:
            out(f"no pins in {store.path}")
        for name, entry in sorted(entries.items()) if not as_json else ():
            prints = ", ".join(f"{i.role} {i.fingerprint[:16]}" for i in entry.identities)
            pending = "  PENDING CHANGE" if entry.pending is not None else ""
            out(f"{name}  {entry.how} {_utc(entry.pinned_at)}  {prints}{pending}")
        return 0
    if command == "export":
        chosen = {m: e for m, e in entries.items() if model is None or m == model}
        if model is not None and not chosen:
            err(f"tee-sidecar pins: no pins for {model!r}")
            return 1
        out(policy_toml(chosen).rstrip("\n"))
        return 0
    if model is None:
        raise ValueError(f"pins {command} needs a model")  # argparse requires it
    if command == "show":
        shown = entries.get(model)
        if shown is None:
            err(f"tee-sidecar pins: no pins for {model!r}")
            return 1
        out(json.dumps(_summary(shown), indent=2) if as_json else describe_pins(shown))
        return 0
    if command == "accept":
        accepted = store.accept(model, keep_old=keep_old)
        out(f"accepted for {model}: " + ", ".join(
            f"{i.role} {i.fingerprint[:16]}" for i in accepted.identities)
            + " (a running sidecar uses them at its next attestation of the model)")
        return 0
    if command == "forget":
        if not store.forget(model):
            err(f"tee-sidecar pins: no pins for {model!r}")
            return 1
        out(f"forgot the pins of {model}: its next attestation pins on first use")
        return 0
    raise ValueError(f"unknown pins command {command!r}")


ANY_WARNING: Final = ('identity = "any" for {globs}: whatever deployment attests is accepted, so '
                      "a gateway may route these models to code of its own (still genuine TEE "
                      "hardware); pin them with the default \"tofu\" or \"pinned\"")


def provenance_required(policies: PolicySet) -> list[str]:
    """The policy entries (model globs) that require image provenance.

    Raises:
        Nothing.
    """
    entries: list[ModelPolicy] = [*policies.models]
    if not policies.strict:
        entries.append(policies.default)
    return [entry.pattern if entry is not policies.default else "(default) *"
            for entry in entries if entry.provenance is not None]


def log_identity_modes(policies: PolicySet) -> dict[str, list[str]]:
    """Say at start-up which entries run on tofu, pinned or any, and which require image
    provenance; warn about ``any``.

    Raises:
        Nothing.
    """
    modes = identity_modes(policies)
    log.info("identity_modes", **modes, provenance_required=provenance_required(policies))
    if modes["any"]:
        log.warning("identity_any", warning=ANY_WARNING.format(globs=", ".join(modes["any"])))
    return modes


def identities_from_saved_report(model: str, report_body: bytes, context_body: bytes, *,
                                 roots: TrustRoots, pinned_jwks: Mapping[str, Any] | None,
                                 policy: ModelPolicy) -> tuple[DeploymentIdentity, ...]:
    """The identities of a saved report, verified again offline with its archived context.

    For ``pins accept MODEL --report evidence/<sha256>.json --context
    evidence/<sha256>.context.json``: the report is verified exactly as ``attest --context``
    does, as of its own time, and only nodes that pass every check give an identity.

    Raises:
        PinStoreError: the context is for another model, or no node of the report verified
            (code ``pins.report_not_verified``).
    """
    try:
        context = decode_context(context_body)
        document = parse_attestation_document(report_body)
    except SidecarError as exc:
        raise PinStoreError(exc.message, code="pins.report_not_verified") from None
    if context.model != model:
        raise PinStoreError(f"the saved report is of {context.model!r}, not {model!r}",
                            code="pins.report_not_verified")
    evidence = {claim.label: dataclasses.replace(
        context.evidence.get(claim.label, NodeEvidence()),
        jwks=(context.evidence.get(claim.label, NodeEvidence()).jwks or pinned_jwks))
        for claim in document.nodes}
    report = verify_attestation(document, model=model, nonce=context.nonce, evidence=evidence,
                                roots=roots, policy=policy, now=context.verified_at)
    identities: list[DeploymentIdentity] = []
    for node in report.nodes:
        if node.status is Status.PASS:
            identities.append(deployment_identity(node))
    if not identities or not any(i.role == "model" for i in identities):
        failure = report.failure
        why = f"{failure.code}: {failure.detail}" if failure else "no node"
        raise PinStoreError(f"the saved report of {model} does not verify offline ({why})",
                            code="pins.report_not_verified")
    return distinct(identities)
