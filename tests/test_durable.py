"""Files written whole or not at all (``sidecar.durable``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar import durable


def test_replace_writes_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "store.json"
    target.write_bytes(b"old")
    durable.replace_durably(target, b"new" * 10_000)
    assert target.read_bytes() == b"new" * 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["store.json"]
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "store.json"
    target.write_bytes(b"old")

    def full(*_: Any) -> Any:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(durable.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        durable.replace_durably(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["store.json"]
