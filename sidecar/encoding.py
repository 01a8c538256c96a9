"""The one strict hex decoder: what the wire calls hex, exactly, or nothing.

``bytes.fromhex`` forgives spaces between bytes, and a regex beside each call site drifted into
several dialects (case, ``0x``, length). Evidence and envelopes must be hex as the spec writes it,
so every decoder states its dialect here, once.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["decode_hex", "is_hex"]

_LOWER: Final = re.compile(r"(?:[0-9a-f]{2})*")
_ANY_CASE: Final = re.compile(r"(?:[0-9a-fA-F]{2})*")


def decode_hex(text: str, *, size: int | None = None, allow_0x: bool = False,
               lower_only: bool = False) -> bytes | None:
    """The bytes ``text`` spells in hex, or ``None`` when it is not exactly that.

    Args:
        size: the number of bytes required (``None``: any, including none).
        allow_0x: accept (and drop) one leading ``0x``.
        lower_only: refuse upper-case digits (envelopes and digests are lower case on the wire).

    Raises:
        Nothing: anything that is not hex of that dialect gives ``None``.
    """
    if allow_0x:
        text = text.removeprefix("0x")
    pattern = _LOWER if lower_only else _ANY_CASE
    if not pattern.fullmatch(text) or (size is not None and len(text) != 2 * size):
        return None
    return bytes.fromhex(text)


def is_hex(text: str, *, size: int | None = None, lower_only: bool = False) -> bool:
    """Whether ``text`` is hex of that dialect (see :func:`decode_hex`)."""
    return decode_hex(text, size=size, lower_only=lower_only) is not None
