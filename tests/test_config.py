"""Settings: TOML file, TEE_SIDECAR_* environment overrides, secrets from files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import Mode, ProviderKind, StreamMode, load_settings
from sidecar.errors import ConfigError


def test_defaults_are_safe() -> None:
    settings = load_settings()
    assert settings.listen.host == "127.0.0.1" and settings.listen.port == 8787
    assert settings.admin.host == "127.0.0.1"
    assert settings.verification.mode is Mode.ENFORCE
    assert settings.verification.stream is StreamMode.BUFFER
    assert settings.upstream.provider is ProviderKind.NANOGPT
    assert str(settings.trust.anchors) == "production"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[upstream]\nbase_url = "https://file.example/api"\nprovider = "private-ml-sdk"\n'
                      '[verification]\nmode = "flag"\n')
    monkeypatch.setenv("TEE_SIDECAR_UPSTREAM__BASE_URL", "https://env.example/api/")
    settings = load_settings(config)
    assert settings.upstream.base_url == "https://env.example/api"
    assert settings.upstream.provider is ProviderKind.PRIVATE_ML_SDK
    assert settings.verification.mode is Mode.FLAG


def test_api_key_from_file_and_from_systemd_credential(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    assert load_settings(upstream={"api_key_file": str(key_file)}).upstream.resolved_api_key() \
        == "sk-from-file"
    (tmp_path / "api_key").write_text("sk-from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings().upstream.resolved_api_key() == "sk-from-credential"


def test_the_key_is_never_in_the_settings_repr() -> None:
    settings = load_settings(upstream={"api_key": "sk-very-secret"})
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in str(settings)


@pytest.mark.parametrize("env, key", [
    ({"TEE_SIDECAR_VERIFICATION__MODE": "paranoid"}, "verification.mode"),
    ({"TEE_SIDECAR_VERIFICATION__STREAM": "tee"}, "verification.stream"),
    ({"TEE_SIDECAR_LISTEN__PORT": "70000"}, "listen.port"),
    ({"TEE_SIDECAR_UPSTREAM__BASE_URL": "ftp://x"}, "upstream.base_url"),
    ({"TEE_SIDECAR_TRUST__ANCHORS": "whatever"}, "trust.anchors"),
    ({"TEE_SIDECAR_LIMITS__STREAM_TIMEOUT": "0"}, "limits.stream_timeout"),
])
def test_bad_settings_name_the_key(env: dict[str, str], key: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"invalid setting {key}"):
        load_settings()


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[listen]\nhots = '0.0.0.0'\n")
    with pytest.raises(ConfigError, match="listen.hots"):
        load_settings(config)


@pytest.mark.parametrize("content, message", [("[listen\n", "not valid TOML"), (None, "cannot read")])
def test_bad_files(tmp_path: Path, content: str | None, message: str) -> None:
    config = tmp_path / "c.toml"
    if content is not None:
        config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="upstream.api_key_file"):
        load_settings(upstream={"api_key_file": str(tmp_path / "missing")})
