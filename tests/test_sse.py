"""SSE framing of untrusted streams: byte-exact events, chat id, [DONE], bounds."""

from __future__ import annotations

import json

import pytest

from sidecar.errors import VerificationFailed
from sidecar.verify.sse import MAX_EVENT_BYTES, SseFramer, chat_id_of

STREAM = (b'data: {"id": "chatcmpl-abc", "choices": []}\n\n'
          b'data: {"id": "chatcmpl-abc", "choices": [{"delta": {"content": "hi"}}]}\n\n'
          b"data: [DONE]\n\n")


@pytest.mark.parametrize("split", [1, 2, 3, 7, 50, len(STREAM)])
def test_events_are_byte_exact_however_the_stream_is_split(split: int) -> None:
    framer = SseFramer()
    events = []
    for i in range(0, len(STREAM), split):
        events += framer.feed(STREAM[i:i + split])
    assert b"".join(e.raw for e in events) == STREAM
    assert framer.chat_id == "chatcmpl-abc"
    assert framer.done and events[-1].is_done
    assert framer.pending == b""


@pytest.mark.parametrize("split", [1, 2, 3, 5])
def test_crlf_terminated_events_however_split(split: int) -> None:
    crlf = STREAM.replace(b"\n\n", b"\r\n\r\n")
    framer = SseFramer()
    events = []
    for i in range(0, len(crlf), split):
        events += framer.feed(crlf[i:i + split])
    assert [e.raw for e in events] == [e + b"\r\n\r\n" for e in crlf.split(b"\r\n\r\n")[:-1]]
    assert framer.done and framer.chat_id == "chatcmpl-abc"


def test_a_line_break_inside_an_event_does_not_end_it() -> None:
    framer = SseFramer()
    events = framer.feed(b'event: message\ndata: {"id": "chatcmpl-x"}\n\ndata: [DONE]\r\n\n')
    assert [e.raw for e in events] == [b'event: message\ndata: {"id": "chatcmpl-x"}\n\n',
                                       b"data: [DONE]\r\n\n"]
    assert framer.done and framer.chat_id == "chatcmpl-x"


def test_comments_and_trailing_data_after_done() -> None:
    framer = SseFramer()
    framer.feed(b": keepalive\n\n" + STREAM + b'data: {"id": "x"}\n\n')
    assert framer.chat_id == "chatcmpl-abc"
    assert framer.trailing_after_done == 1


def test_cut_stream_leaves_pending_bytes_and_no_done() -> None:
    framer = SseFramer()
    events = framer.feed(STREAM[:-5])
    assert not framer.done
    # Exactly the unfinished event stays pending: its bytes are the cut, nothing more or less.
    assert framer.pending == b"data: [DO"
    assert b"".join(e.raw for e in events) + framer.pending == STREAM[:-5]
    # The rest arrives: the same bytes leave the buffer as the [DONE] event.
    (done,) = framer.feed(STREAM[-5:])
    assert done.raw == b"data: [DONE]\n\n" and done.is_done and framer.done
    assert framer.pending == b""


def test_oversized_event_is_refused() -> None:
    framer = SseFramer()
    with pytest.raises(VerificationFailed, match="exceeds 1 MiB") as raised:
        framer.feed(b"data: " + b"a" * (MAX_EVENT_BYTES + 1))
    assert raised.value.code == "stream.event_too_large"


@pytest.mark.parametrize("payload, why, code", [
    (b"not json", "not JSON", "response.malformed"),
    (b"[1]", "no usable completion id", "response.no_chat_id"),
    (b'{"id": 5}', "no usable completion id", "response.no_chat_id"),
    (b'{"id": ""}', "no usable completion id", "response.no_chat_id"),
    (json.dumps({"id": "a" * 300}).encode(), "no usable completion id", "response.no_chat_id"),
    (b'{"id": "../../admin"}', "characters outside", "response.no_chat_id"),
    (b'{"id": "chat id"}', "characters outside", "response.no_chat_id"),
])
def test_chat_id_of_refuses_unusable_ids(payload: bytes, why: str, code: str) -> None:
    with pytest.raises(VerificationFailed, match=why) as raised:
        chat_id_of(payload)
    assert raised.value.code == code
