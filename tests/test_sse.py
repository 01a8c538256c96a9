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


MIXED = (b'data: {"id": "chatcmpl-abc"}\n\n'  # \n only: the framer's find path
         b"data: a\r\ndata: b\r\rdata: c\n\r"  # then \r in every form: the regex path
         b"data: [DONE]\n\n")


@pytest.mark.parametrize("split", [1, 2, 3, 5, 8, 13, len(MIXED)])
def test_line_ends_mixed_across_chunks_frame_as_byte_by_byte(split: int) -> None:
    def frame(step: int) -> list[tuple[bytes, bytes | None]]:
        framer = SseFramer()
        events = []
        for i in range(0, len(MIXED), step):
            events += framer.feed(MIXED[i:i + step])
        events += framer.finish()
        return [(e.raw, e.data) for e in events]

    assert frame(split) == frame(1)
    assert [data for _, data in frame(split)] == [b'{"id": "chatcmpl-abc"}', b"a\nb", b"c",
                                                  b"[DONE]"]


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
    framer.feed(STREAM[:-5])
    assert not framer.done
    assert framer.pending == b"data: [DO"[: len(framer.pending)] or framer.pending


def test_oversized_event_is_refused() -> None:
    framer = SseFramer()
    with pytest.raises(VerificationFailed, match="exceeds 1 MiB"):
        framer.feed(b"data: " + b"a" * (MAX_EVENT_BYTES + 1))


@pytest.mark.parametrize("payload, why", [
    (b"not json", "not JSON"),
    (b"[1]", "no usable completion id"),
    (b'{"id": 5}', "no usable completion id"),
    (b'{"id": ""}', "no usable completion id"),
    (json.dumps({"id": "a" * 300}).encode(), "no usable completion id"),
    (b'{"id": "../../admin"}', "characters outside"),
    (b'{"id": "chat id"}', "characters outside"),
])
def test_chat_id_of_refuses_unusable_ids(payload: bytes, why: str) -> None:
    with pytest.raises(VerificationFailed, match=why):
        chat_id_of(payload)


# -- parsed as the WHATWG standard and the openai SDK parse it (issue 11, finding 1) -------------


@pytest.mark.parametrize("split", [1, 2, 5, 1000])
def test_lone_cr_ends_lines_and_events_as_in_the_standard(split: int) -> None:
    stream = b'data: {"id": "chatcmpl-a"}\r\rdata: [DONE]\r\r'
    framer = SseFramer()
    events = []
    for i in range(0, len(stream), split):
        events += framer.feed(stream[i:i + split])
    events += framer.finish()
    assert [e.data for e in events] == [b'{"id": "chatcmpl-a"}', b"[DONE]"]
    assert b"".join(e.raw for e in events) == stream
    assert framer.done and framer.pending == b""


def test_a_cr_cr_hidden_inside_an_event_is_an_event_boundary() -> None:
    framer = SseFramer()
    events = framer.feed(b'data: {"id": "chatcmpl-a"}\r\rdata: [DONE]\r\r\n\ndata: {"x": 1}\n\n')
    assert [e.data for e in events][:2] == [b'{"id": "chatcmpl-a"}', b"[DONE]"]
    assert framer.done and framer.trailing_after_done == 2  # the \n and the next data event


def test_data_that_only_starts_with_done_ends_the_stream_as_the_sdk_does() -> None:
    framer = SseFramer()
    events = framer.feed(b'data: {"id": "chatcmpl-a"}\n\ndata: [DONE]x\n\n')
    assert events[-1].is_done and framer.done_data == b"[DONE]x"


def test_fields_comments_and_the_optional_space() -> None:
    framer = SseFramer()
    [event] = framer.feed(b'\xef\xbb\xbf: c1\nevent: x\nid: 7\ndata:{"id": "chatcmpl-a",\n'
                          b'data:  "k": 1}\ndata\n: x-tee-verified true\n\n')
    assert event.data == b'{"id": "chatcmpl-a",\n "k": 1}\n'
    assert event.comments == (b" c1", b" x-tee-verified true")
    assert event.forges_verdict
    assert event.canonical() == b'data: {"id": "chatcmpl-a",\ndata:  "k": 1}\ndata: \n\n'


def test_canonical_framing_of_a_genuine_event_is_byte_identical() -> None:
    events = SseFramer().feed(STREAM)
    assert b"".join(e.canonical() for e in events) == STREAM
    assert SseFramer().feed(b": keep-alive\r\n\r\n")[0].canonical() == b""
