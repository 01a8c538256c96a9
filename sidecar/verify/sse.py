"""Server-sent-event framing of untrusted upstream streams, byte-exact (spec section 3).

The enclave signs the concatenation of every SSE chunk as sent, through ``data: [DONE]``; the
sidecar therefore keeps each event's raw bytes untouched (terminator included, ``\\n\\n`` or
``\\r\\n\\r\\n``) and only looks inside the few events it must understand: the first JSON event
(its ``id`` is the chat id that names the signature) and the ``[DONE]`` sentinel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from sidecar.errors import VerificationFailed

# One event larger than this is not a token delta; refusing it bounds the memory a hostile
# stream can pin in the framer.
MAX_EVENT_BYTES = 1 << 20
# Ids are short ("chatcmpl-…"); a long one is an attempt to smuggle data into paths and logs.
MAX_CHAT_ID_LENGTH = 256

_UNDECIDED = -1  # the bytes after a newline have not arrived yet


def _event_end(buffer: bytearray, newline: int) -> int:
    """Where the event ends if the newline at ``newline`` starts its terminator.

    Returns the offset just past ``\\n\\n`` or ``\\r\\n\\r\\n``, 0 when this newline ends
    a line but not the event, or ``_UNDECIDED`` when the following bytes are still to come.
    """
    following = buffer[newline + 1:newline + 3]
    if not following:
        return _UNDECIDED
    if following[:1] == b"\n":
        return newline + 2
    if newline > 0 and buffer[newline - 1] == 0x0D and following[:1] == b"\r":
        if len(following) < 2:
            return _UNDECIDED
        if following == b"\r\n":
            return newline + 3
    return 0


@dataclass(frozen=True)
class SseEvent:
    """One complete event as received.

    Attributes:
        raw: the exact bytes, terminator included.
    """

    raw: bytes

    @cached_property
    def data(self) -> bytes | None:
        """The joined ``data:`` field (``None`` for a comment-only event); parsed on first use."""
        return _field_data(self.raw)

    @property
    def is_done(self) -> bool:
        """True for the ``data: [DONE]`` sentinel that ends an OpenAI stream."""
        # The substring test spares parsing every token event just to rule it out.
        return b"[DONE]" in self.raw and self.data is not None and self.data.strip() == b"[DONE]"


def _field_data(raw: bytes) -> bytes | None:
    parts: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def chat_id_of(payload: bytes) -> str:
    """The ``id`` of a completion object or chunk.

    Raises:
        VerificationFailed: code ``response.no_chat_id`` when the JSON has no usable string id.
    """
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
        raise VerificationFailed("response is not JSON", code="response.malformed") from None
    chat_id = obj.get("id") if isinstance(obj, dict) else None
    if not isinstance(chat_id, str) or not chat_id or len(chat_id) > MAX_CHAT_ID_LENGTH:
        raise VerificationFailed("response carries no usable completion id", code="response.no_chat_id")
    if not chat_id.isascii() or not chat_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise VerificationFailed("completion id has characters outside [A-Za-z0-9._-]",
                                 code="response.no_chat_id")
    return chat_id


class SseFramer:
    """Splits an upstream byte stream into events without altering a byte.

    ``feed`` returns the events completed by a chunk; ``chat_id`` is set from the first JSON
    event; ``done`` once ``[DONE]`` arrived. Anything after ``[DONE]`` is kept as an event and
    counted in ``trailing_after_done`` so the caller can refuse it.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # offset in the buffer from which to look for the next newline
        self.chat_id: str | None = None
        self.done = False
        self.trailing_after_done = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add ``chunk`` and return the events it completes.

        Raises:
            VerificationFailed: ``stream.event_too_large`` for an event over ``MAX_EVENT_BYTES``;
                ``response.no_chat_id`` when the first data event has no usable id.
        """
        buffer = self._buffer
        buffer += chunk
        events: list[SseEvent] = []
        start = 0
        # Resume the newline scan where the previous chunk left off: linear in the stream.
        newline = buffer.find(b"\n", max(self._scanned, 0))
        while newline >= 0:
            end = _event_end(buffer, newline)
            if end == _UNDECIDED:
                break
            if end > 0:
                events.append(self._accept(bytes(buffer[start:end])))
                start = end
            newline = buffer.find(b"\n", max(newline + 1, start))
        self._scanned = (newline if newline >= 0 else len(buffer)) - start
        if start:
            del buffer[:start]
        if len(buffer) > MAX_EVENT_BYTES:
            raise VerificationFailed("an SSE event exceeds 1 MiB", code="stream.event_too_large")
        return events

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete event (a cut stream leaves them here)."""
        return bytes(self._buffer)

    def _accept(self, raw: bytes) -> SseEvent:
        event = SseEvent(raw)
        if self.done:
            self.trailing_after_done += 1
        elif event.is_done:
            self.done = True
        elif event.data is not None and self.chat_id is None:
            self.chat_id = chat_id_of(event.data)
        return event
