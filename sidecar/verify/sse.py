"""Server-sent-event parsing of untrusted upstream streams, as every client parses them (spec section 3).

The enclave signs the concatenation of every SSE chunk as sent, through ``data: [DONE]``; the
sidecar hashes those bytes as received and never alters them. To know what the app's SSE parser
will make of them it parses exactly as the WHATWG standard does (HTML, "Interpreting an event
stream", https://html.spec.whatwg.org/multipage/server-sent-events.html): lines end on ``\\r\\n``,
``\\n`` *or a lone* ``\\r``; a blank line ends an event; a line starting with ``:`` is a comment;
``field: value`` drops one space after the colon; ``data`` lines join with ``\\n``; a leading
UTF-8 BOM is skipped. The official openai SDK (``openai/_streaming.py``, ``_SSELineDecoder``)
splits lines the same way and ends a stream on any event whose data *starts with* ``[DONE]``, so
that prefix is what ``is_done`` means here: a framer that only knew ``\\n\\n`` and exact
``data: [DONE]`` let a path attacker end the app's stream before the failing verdict (issue 11,
finding 1). In relay mode the sidecar forwards only ``SseEvent.canonical()``, never raw bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from sidecar.errors import VerificationFailed

# One event larger than this is not a token delta; refusing it bounds the memory a hostile
# stream can pin in the framer.
MAX_EVENT_BYTES = 1 << 20
# Ids are short ("chatcmpl-…"); a long one is an attempt to smuggle data into paths and logs.
MAX_CHAT_ID_LENGTH = 256
# The end-of-stream marker as the OpenAI SDK tests it (``sse.data.startswith("[DONE]")``).
DONE_PREFIX = b"[DONE]"
# The sidecar's own verdict comments; the same text from upstream is a forgery.
OWN_COMMENT_PREFIX = b"x-tee-"

_LINE_END = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class SseEvent:
    """One event as the standard dispatches it (a blank line ends it).

    Attributes:
        raw: the exact bytes received, from the event's first byte through its blank line.
        data: the joined ``data`` field values (``None`` when the event has no data line: a
            comment or keep-alive, which no client dispatches).
        comments: the comment lines (text after the ``:``), in order.
    """

    raw: bytes
    data: bytes | None = None
    comments: tuple[bytes, ...] = field(default=())

    @property
    def is_done(self) -> bool:
        """True when the app's SDK ends the stream here: data that starts with ``[DONE]``."""
        return self.data is not None and self.data.startswith(DONE_PREFIX)

    @property
    def forges_verdict(self) -> bool:
        """True when a comment line imitates the sidecar's own ``: x-tee-…`` verdict."""
        return any(c.lstrip(b" ").startswith(OWN_COMMENT_PREFIX) for c in self.comments)

    def canonical(self) -> bytes:
        """The event re-emitted in the one framing the relay sends: ``data: …\\n`` lines and a
        blank ``\\n`` (empty for an event without data). A genuine provider event comes out
        byte-identical; nothing the upstream framed differently survives."""
        if self.data is None:
            return b""
        return b"".join(b"data: " + line + b"\n" for line in self.data.split(b"\n")) + b"\n"


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
    """Parses an upstream byte stream into events without altering a byte.

    ``feed`` returns the events completed by a chunk and ``finish`` those the end of the stream
    completes; ``chat_id`` is set from the first data event; ``done`` once an end-of-stream
    event arrived (``done_data`` holds its data). Anything after it is kept as an event and
    counted in ``trailing_after_done`` so the caller can refuse it. A ``\\r`` that is the last
    byte so far waits for the next byte (it may be the first half of ``\\r\\n``), so events
    and their raw bytes do not depend on how the stream was chunked.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()  # the current event's bytes, from its first byte
        self._line_start = 0  # where the line being read begins in the buffer
        self._data: list[bytes] | None = None
        self._comments: list[bytes] = []
        self._at_stream_start = True
        self.chat_id: str | None = None
        self.done = False
        self.done_data: bytes | None = None
        self.trailing_after_done = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add ``chunk`` and return the events it completes.

        Raises:
            VerificationFailed: ``stream.event_too_large`` for an event over ``MAX_EVENT_BYTES``;
                ``response.no_chat_id`` when the first data event has no usable id.
        """
        self._buffer += chunk
        if self._at_stream_start:
            if len(self._buffer) < len(_BOM) and _BOM.startswith(bytes(self._buffer)):
                return []
            self._at_stream_start = False
            if self._buffer.startswith(_BOM):
                self._line_start = len(_BOM)
        events = self._lines(final=False)
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise VerificationFailed("an SSE event exceeds 1 MiB", code="stream.event_too_large")
        return events

    def finish(self) -> list[SseEvent]:
        """The events the end of the stream completes (a final lone ``\\r`` ends its line).

        Bytes of an event whose blank line never came stay in ``pending``: no client dispatches
        them.

        Raises:
            VerificationFailed: ``response.no_chat_id`` as for ``feed``.
        """
        return self._lines(final=True)

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete event (a cut stream leaves them here)."""
        return bytes(self._buffer)

    def _lines(self, *, final: bool) -> list[SseEvent]:
        buffer = self._buffer
        events: list[SseEvent] = []
        event_start = 0
        while (match := _LINE_END.search(buffer, self._line_start)) is not None:
            end = match.start()
            if buffer[end] == 0x0D:
                if end + 1 == len(buffer) and not final:
                    break  # \r or \r\n: the next chunk decides
                after = end + 2 if buffer[end + 1:end + 2] == b"\n" else end + 1
            else:
                after = end + 1
            line = bytes(buffer[self._line_start:end])
            self._line_start = after
            if line:
                self._field(line)
                continue
            events.append(self._accept(SseEvent(
                bytes(buffer[event_start:after]),
                b"\n".join(self._data) if self._data is not None else None,
                tuple(self._comments))))
            self._data, self._comments = None, []
            event_start = after
        if event_start:
            del buffer[:event_start]
            self._line_start -= event_start
        return events

    def _field(self, line: bytes) -> None:
        if line.startswith(b":"):
            self._comments.append(line[1:])
            return
        # A line without a colon is a field name with an empty value (so "data" alone counts).
        name, _, value = line.partition(b":")
        if name == b"data":
            if self._data is None:
                self._data = []
            self._data.append(value[1:] if value.startswith(b" ") else value)
        # event, id, retry and unknown fields change nothing the relay forwards or the SDK's
        # end-of-stream test reads; they stay in the hashed bytes.

    def _accept(self, event: SseEvent) -> SseEvent:
        if self.done:
            self.trailing_after_done += 1
        elif event.is_done:
            self.done = True
            self.done_data = event.data
        elif event.data is not None and self.chat_id is None:
            self.chat_id = chat_id_of(event.data)
        return event
