"""The one strict hex decoder (sidecar/encoding.py)."""

from __future__ import annotations

import pytest

from sidecar.encoding import decode_hex, is_hex


@pytest.mark.parametrize(("text", "options", "expected"), [
    ("00ff", {}, b"\x00\xff"),
    ("00FF", {}, b"\x00\xff"),
    ("00FF", {"lower_only": True}, None),
    ("0x00ff", {}, None),
    ("0x00ff", {"allow_0x": True}, b"\x00\xff"),
    ("00 ff", {}, None),  # bytes.fromhex would forgive the space
    ("0f0", {}, None),
    ("00ff", {"size": 2}, b"\x00\xff"),
    ("00ff", {"size": 3}, None),
    ("", {}, b""),
    ("zz", {}, None),
])
def test_decode_hex_takes_only_its_dialect(text: str, options: dict[str, bool | int],
                                           expected: bytes | None) -> None:
    assert decode_hex(text, **options) == expected  # type: ignore[arg-type]


def test_is_hex_checks_the_size() -> None:
    assert is_hex("ab" * 32, size=32)
    assert not is_hex("ab" * 31, size=32)
