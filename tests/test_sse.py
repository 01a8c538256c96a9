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


# -- exact framing and bounds (each kills a mutant that the tests above let live) ---------------


def test_a_fresh_framer_is_not_done_and_has_nothing_pending() -> None:
    framer = SseFramer()
    assert framer.done is False and framer.chat_id is None
    assert framer.trailing_after_done == 0 and framer.pending == b""


def test_crlf_then_lf_ends_the_event_at_the_lf_pair() -> None:
    stream = b'data: {"id": "chatcmpl-a"}\r\n\ndata: [DONE]\n\n'
    assert [e.raw for e in SseFramer().feed(stream)] == [
        b'data: {"id": "chatcmpl-a"}\r\n\n', b"data: [DONE]\n\n"]


def test_chat_id_of_a_data_line_without_a_space() -> None:
    framer = SseFramer()
    framer.feed(b'data:{"id":"chatcmpl-nospace"}\n\ndata:[DONE]\n\n')
    assert framer.chat_id == "chatcmpl-nospace" and framer.done


@pytest.mark.parametrize("chat_id", ["a" * 256, "chatcmpl_a.b-c", "x", "A-_."])
def test_chat_id_of_accepts_every_allowed_form(chat_id: str) -> None:
    assert chat_id_of(json.dumps({"id": chat_id}).encode()) == chat_id


@pytest.mark.parametrize("payload, message", [
    (b"not json", "response is not JSON"),
    (b"{}", "response carries no usable completion id"),
    (b'{"id": "a b"}', "completion id has characters outside [A-Za-z0-9._-]"),
])
def test_chat_id_of_messages_are_exact(payload: bytes, message: str) -> None:
    with pytest.raises(VerificationFailed) as raised:
        chat_id_of(payload)
    assert raised.value.message == message


def test_every_event_after_done_is_counted() -> None:
    framer = SseFramer()
    framer.feed(STREAM + b'data: {"id": "x"}\n\n' + b": two\n\n")
    assert framer.trailing_after_done == 2


def test_an_event_of_exactly_the_bound_is_accepted_one_byte_more_is_not() -> None:
    framer = SseFramer()
    assert framer.feed(b"d" * MAX_EVENT_BYTES) == []
    assert len(framer.pending) == MAX_EVENT_BYTES
    with pytest.raises(VerificationFailed) as raised:
        framer.feed(b"d")
    assert raised.value.code == "stream.event_too_large"
    assert raised.value.message == "an SSE event exceeds 1 MiB"


def test_the_bound_is_on_the_pending_event_not_the_stream() -> None:
    # Many small events add up to more than the bound: only one event's bytes are held.
    framer = SseFramer()
    event = b'data: {"id": "chatcmpl-a", "pad": "' + b"p" * 1000 + b'"}\n\n'
    count = MAX_EVENT_BYTES // len(event) + 10
    assert len(framer.feed(event * count)) == count


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


# -- the stream-leading BOM, and nothing else, is skipped (WHATWG: "one leading U+FEFF") --------


def test_a_short_first_chunk_that_cannot_start_a_bom_is_framed_at_once() -> None:
    # Only a prefix of the BOM waits for more bytes; a blank keep-alive line is an event now.
    framer = SseFramer()
    assert [e.raw for e in framer.feed(b"\n\n")] == [b"\n", b"\n"]
    assert framer.pending == b""
    waiting = SseFramer()
    assert waiting.feed(b"\xef\xbb") == [] and waiting.pending == b"\xef\xbb"
    assert [e.data for e in waiting.feed(b'\xbfdata: {"id": "chatcmpl-a"}\n\n')] == [
        b'{"id": "chatcmpl-a"}']


def test_a_bom_after_the_first_event_is_not_skipped_so_it_hides_no_done() -> None:
    # A BOM later in the stream is part of the field name ("\ufeffdata"), an unknown field the
    # standard ignores: the event has no data and does not end the stream.
    framer = SseFramer()
    framer.feed(b'data: {"id": "chatcmpl-a"}\n\n')
    [event] = framer.feed(b"\xef\xbb\xbfdata: [DONE]\n\n")
    assert event.data is None and not event.is_done
    assert framer.done is False and framer.done_data is None
