"""Settings: a TOML file, overridden by ``TEE_SIDECAR_*`` environment variables, secrets from files.

Precedence (highest first): environment (``TEE_SIDECAR_UPSTREAM__BASE_URL``), the TOML file given
with ``--config``, the defaults below. The upstream API key may come from ``upstream.api_key``,
from the file named by ``upstream.api_key_file``, or from a systemd credential named ``api_key``
(``$CREDENTIALS_DIRECTORY/api_key``, see ``systemd/``). A bad setting stops start-up with one
``ConfigError`` line naming the key.
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import TomlConfigSettingsSource

from sidecar.errors import ConfigError
from sidecar.issuers import INTEL_PCS_URL, NVIDIA_NRAS_ATTEST_URL, NVIDIA_NRAS_JWKS_URL

ENV_PREFIX = "TEE_SIDECAR_"


class Mode(StrEnum):
    """What happens to a completion that cannot be verified."""

    ENFORCE = "enforce"  # never delivered: the app gets a 502 OpenAI error
    FLAG = "flag"  # delivered, with x-tee-* headers saying what failed
    MONITOR = "monitor"  # delivered and logged


class StreamMode(StrEnum):
    """How streamed completions are delivered."""

    BUFFER = "buffer"  # hold the whole stream until it is verified
    RELAY = "relay"  # forward events as they come; the verdict closes the stream


class ProviderKind(StrEnum):
    """Which wire contract the upstream speaks (spec section 0.1 profiles)."""

    NANOGPT = "nanogpt"  # NanoGPT's TEE/... models: /v1/tee/... under /api
    PRIVATE_ML_SDK = "private-ml-sdk"  # the 2025 vllm-proxy contract (sections 1-3)
    NEAR_CLOUD = "near-cloud"  # NEAR AI Cloud's gateway in front of model nodes
    NEAR_DIRECT = "near-direct"  # one NEAR model node (inference-proxy)
    REDPILL = "redpill"  # RedPill / Phala ACI gateway through its legacy endpoints


# Where each profile serves when ``upstream.base_url`` is not set (spec 0.1). A private-ml-sdk
# server and a NEAR model node have no one address: their base URL must be given.
DEFAULT_BASE_URLS: dict[ProviderKind, str] = {
    ProviderKind.NANOGPT: "https://nano-gpt.com/api",
    ProviderKind.NEAR_CLOUD: "https://cloud-api.near.ai",
    ProviderKind.REDPILL: "https://api.redpill.ai",
}


class TrustAnchors(StrEnum):
    """Which roots of trust verify hardware evidence."""

    PRODUCTION = "production"  # Intel SGX root CA, NVIDIA's NRAS JWKS
    SIMULATOR = "simulator"  # the built-in simulator's test roots: never for real traffic


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListenSettings(_Section):
    """Where the OpenAI-compatible proxy listens (loopback by default)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    # On SIGTERM: stop accepting, let in-flight requests and streams finish for at most this long.
    shutdown_timeout: float = Field(default=30.0, gt=0)
    # Host names the proxy answers to beside loopback and ``host`` (DNS rebinding: a web page
    # under a name of its own must not reach it), and browser origins allowed to call it (any
    # request with another ``Origin`` is refused). Both empty by default.
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()


class AdminSettings(_Section):
    """The separate admin listener: /livez, /readyz, /metrics, /status (loopback by default)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8788, ge=0, le=65535)
    # Host names the admin listener answers to beside loopback and ``host`` (bound to every
    # interface, it also answers to any IP literal: kubelet probes use the pod IP).
    allowed_hosts: tuple[str, ...] = ()


class UpstreamSettings(_Section):
    """The TEE provider the sidecar forwards to."""

    provider: ProviderKind = ProviderKind.NANOGPT
    # Default: the profile's public endpoint (``DEFAULT_BASE_URLS``).
    base_url: str = ""
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    # Extra CA bundle trusted for the provider's TLS only (on top of the system store); PCS,
    # NRAS and NVIDIA's JWKS are always checked against the system store alone.
    ca_file: Path | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=300.0, gt=0)
    # A signature not yet stored (404) is fetched again: at most this many retries, the first
    # after signature_retry_delay seconds, doubling, within signature_deadline seconds in all.
    signature_retries: int = Field(default=10, ge=0, le=50)
    signature_retry_delay: float = Field(default=0.05, ge=0)
    signature_deadline: float = Field(default=15.0, gt=0)
    # End-to-end encryption of the prompt and answer fields to the attested model node (spec
    # 0.5, docs/e2ee.md): "off", "preferred" (encrypt when the attested node offers a key) or
    # "required" (no key, no request). Unset: "preferred" on profiles with E2EE (near-cloud,
    # near-direct), "off" elsewhere. A policy entry's ``e2ee`` overrides it per model.
    e2ee: str | None = Field(default=None, pattern="^(off|preferred|required)$")
    # The client key pair answers are sealed to lives in memory only, one per scheme, and is
    # replaced after this many seconds (0: a fresh pair per request, as NEAR's SDK does).
    e2ee_key_max_age: float = Field(default=3600.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _profile_base_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("base_url"):
            try:
                kind = ProviderKind(data.get("provider", ProviderKind.NANOGPT))
            except ValueError:
                return data  # the provider field reports its own error
            if kind not in DEFAULT_BASE_URLS:
                raise ValueError(f"base_url is required for provider {kind}")
            data = {**data, "base_url": DEFAULT_BASE_URLS[kind]}
        return data

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def resolved_api_key(self) -> str | None:
        """The API key: inline, from ``api_key_file``, or from a systemd credential.

        Raises:
            ConfigError: the key file is named but cannot be read.
        """
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        path = self.api_key_file
        if path is None and (cred_dir := os.environ.get("CREDENTIALS_DIRECTORY")):
            candidate = Path(cred_dir) / "api_key"
            path = candidate if candidate.exists() else None
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"upstream.api_key_file: cannot read {path}: {exc.strerror}", code="config.invalid"
            ) from exc


class VerificationSettings(_Section):
    """How completions are verified and what happens when they are not."""

    mode: Mode = Mode.ENFORCE
    stream: StreamMode = StreamMode.BUFFER
    signing_algo: str = Field(default="ecdsa", pattern="^(ecdsa|ed25519)$")
    # A request hash that covers the bytes sent with only the model renamed to the upstream's id
    # (NanoGPT renames TEE/x on the way in, spec 0.1): "profile" accepts it where the provider is
    # known to rename (nanogpt) and refuses it elsewhere; "accept" or "refuse" decide for all.
    model_renamed: str = Field(default="profile", pattern="^(profile|accept|refuse)$")


# A deployment serves from a handful of nodes; the bound caps per-node verification work (the
# ceiling and default of attestation.max_nodes, and the wire contract's ceiling in
# sidecar.providers.wire, which reads it from here: config sits below the providers).
MAX_NODES = 64


class AttestationSettings(_Section):
    """Where hardware evidence is checked and how long a verdict lasts."""

    timeout: float = Field(default=30.0, gt=0)
    pccs_url: str = INTEL_PCS_URL
    collateral_dir: Path | None = None
    nras_url: str = NVIDIA_NRAS_ATTEST_URL
    nvidia_jwks_url: str = NVIDIA_NRAS_JWKS_URL
    warm_models: tuple[str, ...] = ()
    # Attest only model names the provider's /v1/models lists, the policy names exactly, or
    # warm_models names; any other is refused (404 request.unknown_model) before any fetch.
    only_known_models: bool = True
    # A report naming more distinct nodes than this is refused (attestation.too_many_nodes)
    # before any collateral or NRAS call; the wire contract's own ceiling is MAX_NODES.
    max_nodes: int = Field(default=MAX_NODES, ge=1, le=MAX_NODES)


class ProvenanceSettings(_Section):
    """Where image provenance comes from, for policy entries with a ``provenance`` table."""

    # GitHub's attestations API (GET /repos/{owner}/{repo}/attestations/sha256:{digest}).
    api_url: str = "https://api.github.com"
    # A GitHub token raises the API's rate limit; public repositories need none.
    api_token_file: Path | None = None
    # A Sigstore trusted_root.json; default: the public-good root shipped with sigstore-python.
    trusted_root: Path | None = None
    timeout: float = Field(default=10.0, gt=0)


class TrustSettings(_Section):
    """Roots of trust."""

    anchors: TrustAnchors = TrustAnchors.PRODUCTION


class PolicySettings(_Section):
    """Where the measurement policy lives (``config/policy.toml`` is an example)."""

    file: Path | None = None


class LimitsSettings(_Section):
    """Bounds that keep a hostile client or provider from exhausting the sidecar.

    Each limit, when hit, answers with an OpenAI-shaped error naming it.
    """

    max_request_bytes: int = Field(default=8 << 20, gt=0)
    max_response_bytes: int = Field(default=32 << 20, gt=0)
    max_header_bytes: int = Field(default=16 << 10, ge=1024)
    stream_timeout: float = Field(default=600.0, gt=0)
    max_concurrent_per_client: int = Field(default=256, gt=0)
    # Connections are counted per client address from accept, half-sent requests included
    # (slowloris); a connection whose request headers are not complete in header_timeout
    # seconds gets a 408 and is closed, and idle keep-alive connections close after twice that.
    header_timeout: float = Field(default=10.0, gt=0)
    max_connections_per_client: int = Field(default=512, gt=0)


class ReceiptsSettings(_Section):
    """The append-only receipts file (one JSON line per completion)."""

    enabled: bool = True
    path: Path | None = None  # default: <state.dir>/receipts/receipts.jsonl
    max_bytes: int = Field(default=64 << 20, ge=4096)
    backups: int = Field(default=10, ge=0, le=1000)
    # The evidence archive beside the receipts (reports and their verification context): what
    # no live receipt names is deleted once older than evidence_max_age_days, and oldest first
    # while the archive is over evidence_max_bytes. What receipts name is always kept.
    evidence_max_bytes: int = Field(default=512 << 20, ge=1 << 20)
    evidence_max_age_days: float = Field(default=30.0, gt=0)


class LogSettings(_Section):
    """Log format and level."""

    format: str = Field(default="auto", pattern="^(auto|json|console)$")
    level: str = Field(default="info", pattern="^(debug|info|warning|error)$")


class StateSettings(_Section):
    """Where the sidecar keeps its files (collateral cache, receipts)."""

    dir: Path = Path(os.environ.get("STATE_DIRECTORY", "state"))
    # Disposable data (the DCAP collateral cache): systemd's CacheDirectory= when set.
    cache_dir: Path | None = None

    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, else ``$CACHE_DIRECTORY``, else ``<dir>/cache``."""
        if self.cache_dir is not None:
            return self.cache_dir
        from_systemd = os.environ.get("CACHE_DIRECTORY")
        return Path(from_systemd) if from_systemd else self.dir / "cache"


class Settings(BaseSettings):
    """All settings of tee-sidecar (``config/tee-sidecar.toml`` documents each)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    listen: ListenSettings = ListenSettings()
    admin: AdminSettings = AdminSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    verification: VerificationSettings = VerificationSettings()
    attestation: AttestationSettings = AttestationSettings()
    trust: TrustSettings = TrustSettings()
    provenance: ProvenanceSettings = ProvenanceSettings()
    policy: PolicySettings = PolicySettings()
    limits: LimitsSettings = LimitsSettings()
    receipts: ReceiptsSettings = ReceiptsSettings()
    log: LogSettings = LogSettings()
    state: StateSettings = StateSettings()

    def receipts_path(self) -> Path:
        """Where receipts go: ``receipts.path`` or ``<state.dir>/receipts/receipts.jsonl``."""
        return self.receipts.path or self.state.dir / "receipts" / "receipts.jsonl"


def _first_error_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"]) or "(settings)"
    return f"invalid setting {key}: {err['msg']}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_file`` (TOML) and the environment.

    Args:
        config_file: optional TOML file; environment variables override it.
        overrides: values that override both (used by tests and the demo).

    Raises:
        ConfigError: the file is missing or not TOML, or a setting is invalid (the message names it).
    """
    if config_file is not None:
        try:
            with config_file.open("rb") as fh:
                tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    try:
        settings = _Sourced(**overrides)
        settings.upstream.resolved_api_key()
    except ValidationError as exc:
        raise ConfigError(_first_error_line(exc)) from None
    return settings
