"""The JSON log line: one object per event, secrets redacted, any value rendered."""

from __future__ import annotations

import json

import pytest
import structlog

from sidecar.logs import configure_logging


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class _Custom:
    def __structlog__(self) -> str:
        return "custom"


def test_a_json_line_redacts_secrets_and_renders_any_value(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    structlog.get_logger("t").info("request", api_key="sk-secret", status=200,
                                   thing=_Opaque(), other=_Custom())
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "request" and event["status"] == 200
    assert event["api_key"] == "[redacted]" and "sk-secret" not in line
    assert event["thing"] == "<opaque>" and event["other"] == "custom"
    assert event["level"] == "info" and event["timestamp"].endswith("Z")


def test_a_filtered_level_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "warning")
    try:
        structlog.get_logger("t").info("request", status=200)
        assert capsys.readouterr().err == ""
    finally:
        configure_logging("json", "info")  # as conftest sets it for every other test
