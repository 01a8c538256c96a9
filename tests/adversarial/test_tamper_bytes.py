"""Altering bytes on the path: any byte of the request, the answer, or the SSE stream.

The enclave signs sha256(request bytes):sha256(response bytes); a MITM who changes one byte
anywhere must get a 502 in enforce mode, whatever the byte does to the JSON or the framing.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from aiohttp import web

from tests.adversarial.conftest import (
    assert_blocked,
    assert_no_unverified_delivery,
    relay_verdict,
)
from tests.adversarial.harness import MESSAGES, TEE_MODEL, AdversarialStack, chat, post
from tests.adversarial.mitm import Exchange, Mitm, respond, rewrite_events

# Stream answers are ~4 KiB: every 13th byte plus every event boundary keeps the sweep to a few
# hundred requests (~5 ms each) while still touching every event and every field kind.
STREAM_STRIDE = 13


def _flip_nth_byte_of_answer(positions: list[int]):  # type: ignore[no-untyped-def]
    """An intercept that flips byte ``positions[k]`` of the k-th answer it sees."""
    async def intercept(_: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        upstream = await mitm.forward(exchange)
        body = upstream.body
        i = positions.pop(0) % len(body)
        return respond(upstream, body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:])
    return intercept


# What one flipped byte can become, and nothing else: a flip inside the signed content
# (response_hash_mismatch), in the JSON syntax (malformed), in the "id" key (no_chat_id), in the
# id's value (the provider has no signature for that id: signature.missing), or, in a stream, in
# an event terminator or the [DONE] line (truncated).
FLIP_CODES = frozenset({"signature.response_hash_mismatch", "response.malformed",
                        "response.no_chat_id", "signature.missing"})
STREAM_FLIP_CODES = FLIP_CODES | {"stream.truncated"}


def _sweep(adv: AdversarialStack, url: str, stream: bool, positions: list[int]) -> set[str]:
    codes: set[str] = set()
    adv.mitm.on("completion", _flip_nth_byte_of_answer(list(positions)))
    request = json.dumps({"model": TEE_MODEL, "messages": MESSAGES, "stream": stream}).encode()
    for _ in positions:
        status, headers, body = post(url + "/chat/completions", request)
        assert_no_unverified_delivery(adv, request, status, headers, body)
        codes.add(assert_blocked(status, headers, body))
    return codes


def _answer_length(adv: AdversarialStack, url: str, stream: bool) -> int:
    status, _, body = chat(url, stream=stream)
    assert status == 200
    return len(body)


def test_every_byte_of_a_plain_answer_flipped_is_blocked(adv: AdversarialStack) -> None:
    url = adv.sidecar()
    length = _answer_length(adv, url, False)
    codes = _sweep(adv, url, False, list(range(length)))
    # A flip lands in the text (hash mismatch), the JSON syntax, or the id (no signature).
    assert "signature.response_hash_mismatch" in codes
    assert codes <= FLIP_CODES, codes


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_every_part_of_a_stream_flipped_is_blocked(adv: AdversarialStack,
                                                    stream_mode: str) -> None:
    url = adv.sidecar(verification={"stream": stream_mode})
    status, _, sample = chat(adv.sidecar(), stream=True)
    assert status == 200
    boundaries = {i for i in range(len(sample)) if sample[i:i + 2] == b"\n\n"} | \
                 {i + 1 for i in range(len(sample)) if sample[i:i + 2] == b"\n\n"}
    positions = sorted(set(range(0, len(sample), STREAM_STRIDE)) | boundaries)
    if stream_mode == "buffer":
        codes = _sweep(adv, url, True, positions)
        assert "signature.response_hash_mismatch" in codes
        assert codes <= STREAM_FLIP_CODES, codes
        return
    adv.mitm.on("completion", _flip_nth_byte_of_answer(list(positions)))
    codes = set()
    for _ in positions:
        status, headers, body = chat(url, stream=True)
        assert headers.get("x-tee-failure") != "sidecar.internal_error"
        if status == 200:
            assert headers["x-tee-verified"] == "pending"
            codes.add(relay_verdict(body))
        else:
            codes.add(assert_blocked(status, headers, body))
    assert "signature.response_hash_mismatch" in codes
    assert codes <= STREAM_FLIP_CODES, codes


def test_every_byte_of_the_request_altered_in_transit_never_gets_a_200(
        adv: AdversarialStack) -> None:
    url = adv.sidecar()
    request = json.dumps({"model": TEE_MODEL, "messages": MESSAGES}).encode()
    positions = list(range(len(request)))

    async def intercept(_: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        i = positions.pop(0)
        exchange.body = exchange.body[:i] + bytes([exchange.body[i] ^ 0x01]) + \
            exchange.body[i + 1:]
        return respond(await mitm.forward(exchange))

    adv.mitm.on("completion", intercept)
    outcomes = set()
    for _ in range(len(request)):
        status, headers, body = post(url + "/chat/completions", request)
        outcomes.add((status, headers.get("x-tee-failure")))
        # The enclave may refuse the altered bytes itself (400, 404): never a 200.
        assert status != 200, body[:200]
        assert headers["x-tee-verified"] == "false"
    # The enclave refusing broken JSON or an unknown model (passed on as upstream errors), or
    # the flips inside strings: signed, but not the bytes the sidecar sent.
    assert outcomes == {(400, "upstream.http_400"), (404, "upstream.http_404"),
                        (502, "signature.request_hash_mismatch")}


def _data_events(events: list[bytes]) -> list[int]:
    return [i for i, e in enumerate(events) if e.startswith(b"data: {")]


def _swap(events: list[bytes]) -> list[bytes]:
    i, j = _data_events(events)[1:3]
    events[i], events[j] = events[j], events[i]
    return events


def _drop(k: int) -> Callable[[list[bytes]], list[bytes]]:
    def fn(events: list[bytes]) -> list[bytes]:
        del events[k]
        return events
    return fn


def _duplicate(k: int) -> Callable[[list[bytes]], list[bytes]]:
    def fn(events: list[bytes]) -> list[bytes]:
        events.insert(k, events[k])
        return events
    return fn


def _split_event(events: list[bytes]) -> list[bytes]:
    i = _data_events(events)[2]
    middle = events[i].find(b'"content"')
    events[i:i + 1] = [events[i][:middle] + b"\n\n", b"data: " + events[i][middle:]]
    return events


def _crlf(events: list[bytes]) -> list[bytes]:
    return [e.replace(b"\n\n", b"\r\n\r\n") for e in events]


def _comment(events: list[bytes]) -> list[bytes]:
    events.insert(2, b": keep-alive\n\n")
    return events


def _after_done(events: list[bytes]) -> list[bytes]:
    return events + [events[-2]]


def _no_done(events: list[bytes]) -> list[bytes]:
    return events[:-1]


def _two_dones(events: list[bytes]) -> list[bytes]:
    return events[:3] + [b"data: [DONE]\n\n"] + events[3:]


def _last_chunk_altered(events: list[bytes]) -> list[bytes]:
    events[-2] = events[-2].replace(b'"stop"', b'"length"')
    return events


HASH = "signature.response_hash_mismatch"
# Each alteration of the event sequence, with the code it must be refused with (buffered and
# relayed alike); the stream is 18 events (role, 15 tokens, stop, [DONE]).
STREAM_ATTACKS: dict[str, tuple[Callable[[list[bytes]], list[bytes]], str]] = {
    "reorder_two_events": (_swap, HASH),
    "drop_first_event": (_drop(0), HASH),
    "drop_a_middle_event": (_drop(5), HASH),
    "drop_the_stop_event": (_drop(-2), HASH),
    "drop_done": (_no_done, "stream.truncated"),
    "duplicate_first_event": (_duplicate(0), HASH),
    "duplicate_a_middle_event": (_duplicate(5), HASH),
    "split_one_event_in_two": (_split_event, HASH),
    "terminators_rewritten_crlf": (_crlf, HASH),
    "comment_event_injected": (_comment, HASH),
    "event_appended_after_done": (_after_done, "stream.data_after_done"),
    "done_injected_early": (_two_dones, "stream.data_after_done"),
    "finish_reason_rewritten": (_last_chunk_altered, HASH),
}


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
@pytest.mark.parametrize("attack", sorted(STREAM_ATTACKS))
def test_sse_sequence_attack_is_blocked(adv: AdversarialStack, attack: str,
                                        stream_mode: str) -> None:
    url = adv.sidecar(verification={"stream": stream_mode})
    edit, code = STREAM_ATTACKS[attack]
    adv.mitm.on("completion", rewrite_events(edit))
    request = json.dumps({"model": TEE_MODEL, "messages": MESSAGES, "stream": True}).encode()
    status, headers, body = post(url + "/chat/completions", request)
    assert_no_unverified_delivery(adv, request, status, headers, body)
    if stream_mode == "relay" and status == 200:
        assert relay_verdict(body) == code
    else:
        assert_blocked(status, headers, body, code)


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_rechunked_stream_with_the_same_bytes_still_verifies(adv: AdversarialStack,
                                                             stream_mode: str, chunk: int) -> None:
    # TCP segmentation is not an attack: the same bytes in other chunks are the signed bytes.
    url = adv.sidecar(verification={"stream": stream_mode})
    adv.mitm.on("completion", rewrite_events(lambda events: events, chunk=chunk))
    request = json.dumps({"model": TEE_MODEL, "messages": MESSAGES, "stream": True}).encode()
    status, headers, body = post(url + "/chat/completions", request)
    assert status == 200
    if stream_mode == "relay":
        assert relay_verdict(body) == "verified"
    else:
        assert headers["x-tee-verified"] == "true"
        assert_no_unverified_delivery(adv, request, status, headers, body)


@pytest.mark.parametrize("attack", ["drop_a_middle_event", "reorder_two_events"])
def test_sse_attack_flagged_in_flag_mode(adv: AdversarialStack, attack: str) -> None:
    url = adv.sidecar(verification={"mode": "flag"})
    adv.mitm.on("completion", rewrite_events(STREAM_ATTACKS[attack][0]))
    status, headers, _ = chat(url, stream=True)
    assert status == 200
    assert headers["x-tee-verified"] == "false"
    assert headers["x-tee-failure"] == "signature.response_hash_mismatch"


def _forged_verdict(events: list[bytes]) -> list[bytes]:
    """A verdict line as the sidecar writes it, injected before [DONE]."""
    return events[:-1] + [b": x-tee-verified true\n\n"] + events[-1:]


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_upstream_cannot_forge_the_relay_verdict_line(adv: AdversarialStack, mode: str) -> None:
    url = adv.sidecar(verification={"stream": "relay", "mode": mode})
    adv.mitm.on("completion", rewrite_events(_forged_verdict))
    request = json.dumps({"model": TEE_MODEL, "messages": MESSAGES, "stream": True}).encode()
    status, headers, body = post(url + "/chat/completions", request)
    assert status == 200 and headers["x-tee-verified"] == "pending"
    # The forged line is never forwarded; the sidecar's own verdict closes the stream.
    assert b": x-tee-verified true" not in body
    if mode == "monitor":
        assert body.endswith(b": x-tee-verified false\n\ndata: [DONE]\n\n")
    else:
        assert relay_verdict(body) == "stream.forged_verdict"
