"""The policy file: its TOML schema, and :func:`load_policy`, which reads it into a policy set.

The user's policy file (TOML; see ``config/policy.toml``) is read once by :func:`load_policy`:
pydantic models with ``extra="forbid"`` at the file edge, then the frozen dataclasses of
:mod:`sidecar.verify.policy` inside (STYLE.md "Data"). The file lives here, beside
``config.py``, because the verification core reads no files and knows no config (issue 10): it
only judges the :class:`~sidecar.verify.policy.PolicySet` this module builds.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from sidecar.errors import ConfigError
from sidecar.verify.identity import DeploymentIdentity, IdentityMode
from sidecar.verify.policy import (
    FACT_FIELDS,
    E2EESetting,
    FactField,
    GpuRequirements,
    ModelPolicy,
    OnFailure,
    PolicySet,
    TcbStatus,
    build_model_policy,
)
from sidecar.verify.provenance import GITHUB_ACTIONS_ISSUER, ProvenanceRequirement

__all__ = ["load_policy"]


class _FileModel(BaseModel):
    # strict: TOML has native types, so "true" or "3600" as strings are mistakes, not input.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# Pins are checked for shape here so a truncated or mistyped hash is a start-up error, not a
# policy that silently never matches. TDX registers are SHA-384 (48 bytes), compose and os image
# hashes SHA-256 (32 bytes), a dstack app id 20 bytes.
_Sha384Hexes = Annotated[
    list[Annotated[str, StringConstraints(pattern=r"^(0[xX])?[0-9a-fA-F]{96}$")]],
    Field(min_length=1),
]
_Sha256Hexes = Annotated[
    list[Annotated[str, StringConstraints(pattern=r"^(0[xX])?[0-9a-fA-F]{64}$")]],
    Field(min_length=1),
]
_AppIdHexes = Annotated[
    list[Annotated[str, StringConstraints(pattern=r"^(0[xX])?[0-9a-fA-F]{40}$")]],
    Field(min_length=1),
]


_NonEmptyStrings = Annotated[
    list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)
]
_AdvisoryId = Annotated[str, StringConstraints(pattern=r"^INTEL-SA-\d{5}$")]


class _GpuFile(_FileModel):
    require_measres_success: bool | None = None
    require_secure_boot: bool | None = None
    require_debug_disabled: bool | None = None
    require_integrity_claims: bool | None = None
    allowed_driver_versions: _NonEmptyStrings | None = None
    allowed_vbios_versions: _NonEmptyStrings | None = None


class _MeasurementsFile(_FileModel):
    mrtd: _Sha384Hexes | None = None
    rtmr0: _Sha384Hexes | None = None
    rtmr1: _Sha384Hexes | None = None
    rtmr2: _Sha384Hexes | None = None
    compose_hash: _Sha256Hexes | None = None
    app_id: _AppIdHexes | None = None
    os_image_hash: _Sha256Hexes | None = None


_Sha384Hex = Annotated[str, StringConstraints(pattern=r"^(0[xX])?[0-9a-fA-F]{96}$")]
_Sha256Hex = Annotated[str, StringConstraints(pattern=r"^(0[xX])?[0-9a-fA-F]{64}$")]


class _PinFile(_FileModel):
    # One deployment identity (sidecar.verify.identity), as `tee-sidecar pins export` prints it.
    role: Literal["model", "gateway"] = "model"
    mrtd: _Sha384Hex
    rtmr0: _Sha384Hex
    rtmr1: _Sha384Hex
    rtmr2: _Sha384Hex
    mr_config_id: _Sha384Hex
    compose_hash: _Sha256Hex | None = None
    images: list[Annotated[str, StringConstraints(min_length=1)]] = []
    os_image_hash: _Sha256Hex | None = None
    key_provider: str | None = None


class _ProvenanceFile(_FileModel):
    # Who must have built every image (sidecar.verify.provenance.ProvenanceRequirement).
    repository: Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+/[^\s]+[^/\s]$")]
    workflow: Annotated[str, StringConstraints(pattern=r"^[^\s@]+$")] | None = None
    ref: Annotated[str, StringConstraints(pattern=r"^refs/[^\s]+$")] | None = None
    issuer: Annotated[str, StringConstraints(pattern=r"^https://[^\s]+$")] = GITHUB_ACTIONS_ISSUER


class _EntryFile(_FileModel):
    e2ee: E2EESetting | None = None
    require_tdx: bool | None = None
    require_nvidia: bool | None = None
    accepted_tcb_statuses: Annotated[list[TcbStatus], Field(min_length=1)] | None = None
    tolerated_advisories: list[_AdvisoryId] | None = None
    attestation_ttl_seconds: Annotated[int, Field(gt=0, le=7 * 24 * 3600)] | None = None
    on_failure: OnFailure | None = None
    gpu: _GpuFile | None = None
    measurements: Annotated[list[_MeasurementsFile], Field(min_length=1)] | None = None
    identity: IdentityMode | None = None
    pins: Annotated[list[_PinFile], Field(min_length=1)] | None = None
    provenance: _ProvenanceFile | None = None


class _GatewayFile(_FileModel):
    # A gateway runs no GPU and is always TDX-attested: only the TCB and pin keys apply.
    accepted_tcb_statuses: Annotated[list[TcbStatus], Field(min_length=1)] | None = None
    tolerated_advisories: list[_AdvisoryId] | None = None
    measurements: Annotated[list[_MeasurementsFile], Field(min_length=1)] | None = None


class _PolicyFile(_FileModel):
    strict: bool = False
    allow_unattested_models: bool = False
    defaults: _EntryFile = _EntryFile()
    gateway: _GatewayFile = _GatewayFile()
    models: dict[Annotated[str, StringConstraints(min_length=1)], _EntryFile] = {}


def _key_path(loc: Iterable[int | str]) -> str:
    """Render a pydantic location as the TOML key a user would look for: ``models."TEE/*".gpu``.

    Raises:
        Nothing.
    """
    parts: list[str] = []
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif previous == "models" and len(parts) == 1:
            # A model glob is a quoted TOML key ("TEE/*"); always show it quoted.
            parts.append(f'."{part}"')
        else:
            parts.append(f".{part}" if parts else part)
        previous = part
    return "".join(parts) or "(top level)"


_T = TypeVar("_T")


def _pick(*values: _T | None, fallback: _T) -> _T:
    for value in values:
        if value is not None:
            return value
    return fallback


def _merge_gpu(entry: _GpuFile | None, defaults: _GpuFile | None) -> GpuRequirements:
    base = GpuRequirements()
    e = entry or _GpuFile()
    d = defaults or _GpuFile()
    drivers = _pick(e.allowed_driver_versions, d.allowed_driver_versions, fallback=None)
    vbios = _pick(e.allowed_vbios_versions, d.allowed_vbios_versions, fallback=None)
    return GpuRequirements(
        require_measres_success=_pick(
            e.require_measres_success,
            d.require_measres_success,
            fallback=base.require_measres_success,
        ),
        require_secure_boot=_pick(
            e.require_secure_boot, d.require_secure_boot, fallback=base.require_secure_boot
        ),
        require_debug_disabled=_pick(
            e.require_debug_disabled,
            d.require_debug_disabled,
            fallback=base.require_debug_disabled,
        ),
        require_integrity_claims=_pick(
            e.require_integrity_claims,
            d.require_integrity_claims,
            fallback=base.require_integrity_claims,
        ),
        allowed_driver_versions=frozenset(drivers) if drivers is not None else None,
        allowed_vbios_versions=frozenset(vbios) if vbios is not None else None,
    )


def _build_entry(
    pattern: str,
    key: str,
    entry: _EntryFile,
    defaults: _EntryFile,
    *,
    allow_unattested: bool,
    source: str,
) -> ModelPolicy:
    """Merge ``entry`` over ``defaults`` over the built-in values.

    Raises:
        ConfigError: naming the key, for combinations a single field cannot reject.
    """
    require_tdx = _pick(entry.require_tdx, defaults.require_tdx, fallback=True)
    require_nvidia = _pick(entry.require_nvidia, defaults.require_nvidia, fallback=True)
    if not require_tdx and not allow_unattested:
        raise ConfigError(
            f"policy file {source}: {key}.require_tdx = false lets models pass without TEE "
            "attestation; set allow_unattested_models = true to allow that"
        )
    measurements = _pick(entry.measurements, defaults.measurements, fallback=[])
    if measurements and not require_tdx:
        raise ConfigError(
            f"policy file {source}: {key}.measurements pin a TDX quote but require_tdx is false"
        )
    sets: list[dict[FactField, list[str]]] = []
    for index, pins in enumerate(measurements):
        chosen = {name: getattr(pins, name) for name in FACT_FIELDS if getattr(pins, name)}
        if not chosen:
            raise ConfigError(f"policy file {source}: {key}.measurements[{index}] pins nothing")
        sets.append(chosen)
    identity: IdentityMode | None = _pick(entry.identity, defaults.identity, fallback=None)
    pin_files = _pick(entry.pins, defaults.pins, fallback=[])
    identity_pins = tuple(DeploymentIdentity.from_json(pin.model_dump()) for pin in pin_files)
    if identity == "pinned" and not identity_pins:
        raise ConfigError(f'policy file {source}: {key}.identity = "pinned" lists no pins')
    if identity == "any" and identity_pins:
        raise ConfigError(f'policy file {source}: {key}.identity = "any" ignores its pins')
    if (identity in ("tofu", "pinned") or identity_pins) and not require_tdx:
        raise ConfigError(f"policy file {source}: {key}.identity pins a deployment by its TDX "
                          "quote, but require_tdx is false")
    provenance_file = _pick(entry.provenance, defaults.provenance, fallback=None)
    if provenance_file is not None and not require_tdx:
        raise ConfigError(f"policy file {source}: {key}.provenance needs a TDX quote (it binds "
                          "the compose), but require_tdx is false")
    return build_model_policy(
        pattern,
        provenance=(ProvenanceRequirement(**provenance_file.model_dump())
                    if provenance_file is not None else None),
        identity=identity,
        identity_pins=identity_pins,
        require_tdx=require_tdx,
        require_nvidia=require_nvidia,
        accepted_tcb_statuses=_pick(
            entry.accepted_tcb_statuses, defaults.accepted_tcb_statuses, fallback=["UpToDate"]
        ),
        tolerated_advisories=_pick(
            entry.tolerated_advisories, defaults.tolerated_advisories, fallback=[]
        ),
        measurement_sets=sets,
        attestation_ttl_seconds=_pick(
            entry.attestation_ttl_seconds, defaults.attestation_ttl_seconds, fallback=3600
        ),
        on_failure=_pick(entry.on_failure, defaults.on_failure, fallback="block"),
        gpu=_merge_gpu(entry.gpu, defaults.gpu),
        e2ee=_pick(entry.e2ee, defaults.e2ee, fallback=None),
    )


def load_policy(path: str | Path | None) -> PolicySet:
    """Load a policy file, or the built-in default for ``None``.

    The built-in default requires TDX and NVIDIA evidence, accepts TCB status ``UpToDate``
    only, pins no measurements, reuses verdicts for 3600 s and blocks on failure.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or has an unknown key, a value of the
            wrong type, or a contradictory setting; the message names the key.
    """
    if path is None:
        return PolicySet()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {source}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"policy file {source} is not UTF-8: {exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy file {source} is not valid TOML: {exc}") from exc
    try:
        parsed = _PolicyFile.model_validate(document)
    except ValidationError as exc:
        lines = [f"{_key_path(err['loc'])}: {err['msg']}" for err in exc.errors()[:5]]
        raise ConfigError(f"policy file {source}: invalid key " + "; ".join(lines)) from None

    default = _build_entry(
        "*",
        "defaults",
        parsed.defaults,
        _EntryFile(),
        allow_unattested=parsed.allow_unattested_models,
        source=source,
    )
    models = tuple(
        _build_entry(
            pattern,
            _key_path(("models", pattern)),
            entry,
            parsed.defaults,
            allow_unattested=parsed.allow_unattested_models,
            source=source,
        )
        for pattern, entry in parsed.models.items()
    )
    # [gateway] takes [defaults]' TCB statuses and advisories, but never their measurement pins.
    gateway_file = parsed.gateway
    gateway = _build_entry(
        "(gateway)",
        "gateway",
        _EntryFile(
            require_tdx=True,
            require_nvidia=False,
            accepted_tcb_statuses=gateway_file.accepted_tcb_statuses,
            tolerated_advisories=gateway_file.tolerated_advisories,
            measurements=gateway_file.measurements,
        ),
        parsed.defaults.model_copy(update={"measurements": None}),
        allow_unattested=parsed.allow_unattested_models,
        source=source,
    )
    return PolicySet(
        models=models,
        default=default,
        strict=parsed.strict,
        allow_unattested_models=parsed.allow_unattested_models,
        source=source,
        gateway=gateway,
    )
