"""The delivery path of ``sidecar/proxy/app.py`` at its edges: the response size bound at exactly
its limit, the stream-shape checks (data after ``[DONE]``, in an event or left unterminated),
verdict lines the upstream must not forge, and what a relay forwards after ``[DONE]``.

Each refusal asserts its failure code; each bound is tested on both sides of its edge, so that
``>`` turned into ``>=`` (or a check removed) fails a test (docs/mutation.md).
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.adversarial.conftest import assert_blocked, assert_no_unverified_delivery, relay_verdict
from tests.adversarial.harness import MESSAGES, TEE_MODEL, AdversarialStack, post
from tests.adversarial.mitm import rewrite_events

MODES = [("plain", "buffer"), ("stream", "buffer"), ("stream", "relay")]
IDS = ["plain", "stream-buffer", "stream-relay"]


def _request(kind: str) -> bytes:
    return json.dumps({"model": TEE_MODEL, "messages": MESSAGES,
                       "stream": kind == "stream"}).encode()


def _genuine_length(adv: AdversarialStack, kind: str) -> int:
    status, _, body = post(adv.sidecar() + "/chat/completions", _request(kind))
    assert status == 200
    return len(body)


@pytest.mark.parametrize("kind, stream_mode", MODES, ids=IDS)
def test_an_answer_of_exactly_max_response_bytes_is_delivered(adv: AdversarialStack, kind: str,
                                                              stream_mode: str) -> None:
    length = _genuine_length(adv, kind)
    assert _genuine_length(adv, kind) == length  # the simulator's answers have one length
    url = adv.sidecar(verification={"stream": stream_mode},
                      limits={"max_response_bytes": length})
    status, headers, body = post(url + "/chat/completions", _request(kind))
    assert status == 200
    if stream_mode == "relay" and kind == "stream":
        assert relay_verdict(body) == "verified"
    else:
        assert headers["x-tee-verified"] == "true"
        assert_no_unverified_delivery(adv, _request(kind), status, headers, body)


@pytest.mark.parametrize("kind, stream_mode", MODES, ids=IDS)
def test_one_byte_over_max_response_bytes_is_refused(adv: AdversarialStack, kind: str,
                                                     stream_mode: str) -> None:
    length = _genuine_length(adv, kind)
    url = adv.sidecar(verification={"stream": stream_mode},
                      limits={"max_response_bytes": length - 1})
    status, headers, body = post(url + "/chat/completions", _request(kind))
    if stream_mode == "relay" and kind == "stream":
        assert status == 200 and headers["x-tee-verified"] == "pending"
        assert relay_verdict(body) == "limits.response_too_large"
    else:
        assert_blocked(status, headers, body, "limits.response_too_large")


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
@pytest.mark.parametrize("tail", [b"data: x", b": unterminated comment", b"x\n"],
                         ids=["data", "comment", "line"])
def test_unterminated_bytes_after_done_are_data_after_done(adv: AdversarialStack,
                                                          stream_mode: str, tail: bytes) -> None:
    # Not an event (no terminator), so the framer leaves them pending: they still count.
    url = adv.sidecar(verification={"stream": stream_mode})
    adv.mitm.on("completion", rewrite_events(lambda events: events + [tail]))
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    if stream_mode == "relay":
        assert relay_verdict(body) == "stream.data_after_done"
    else:
        assert_blocked(status, headers, body, "stream.data_after_done")


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_several_events_after_done_are_data_after_done(adv: AdversarialStack,
                                                      stream_mode: str) -> None:
    url = adv.sidecar(verification={"stream": stream_mode})
    adv.mitm.on("completion", rewrite_events(lambda events: events + [b": a\n\n", b": b\n\n"]))
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    if stream_mode == "relay":
        assert relay_verdict(body) == "stream.data_after_done"
        # Nothing after [DONE] is forwarded, and [DONE] itself is held back for the verdict.
        assert b": a\n\n" not in body and b": b\n\n" not in body
    else:
        assert_blocked(status, headers, body, "stream.data_after_done")


@pytest.mark.parametrize("line", [b": x-tee-verified true\n\n", b": x-tee-verified false\n\n",
                                  b": x-tee-anything\n\n"], ids=["true", "false", "other"])
@pytest.mark.parametrize("where", ["first", "before_done"])
def test_any_x_tee_comment_from_upstream_is_a_forged_verdict(adv: AdversarialStack, line: bytes,
                                                            where: str) -> None:
    url = adv.sidecar(verification={"stream": "relay"})

    def inject(events: list[bytes]) -> list[bytes]:
        return [line, *events] if where == "first" else [*events[:-1], line, events[-1]]

    adv.mitm.on("completion", rewrite_events(inject))
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    assert status == 200 and headers["x-tee-verified"] == "pending"
    assert relay_verdict(body) == "stream.forged_verdict"
    assert line not in body


def test_a_forged_verdict_outranks_the_stream_shape(adv: AdversarialStack) -> None:
    # Forged verdict and no [DONE]: the forgery is what the app is told about.
    url = adv.sidecar(verification={"stream": "relay"})
    adv.mitm.on("completion", rewrite_events(
        lambda events: [b": x-tee-verified true\n\n", *events[:-1]]))
    _, _, body = post(url + "/chat/completions", _request("stream"))
    assert relay_verdict(body) == "stream.forged_verdict"


def test_a_verified_relay_ends_with_the_verdict_then_the_upstreams_done(
        adv: AdversarialStack) -> None:
    url = adv.sidecar(verification={"stream": "relay"})
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    assert status == 200 and headers["x-tee-verified"] == "pending"
    assert body.endswith(b"\n\n: x-tee-verified true\n\ndata: [DONE]\n\n")
    assert body.count(b"data: [DONE]") == 1


@pytest.mark.parametrize("mode, verified", [("flag", "false"), ("monitor", "false")])
def test_flag_and_monitor_deliver_a_refused_stream_marked(adv: AdversarialStack, mode: str,
                                                         verified: str) -> None:
    url = adv.sidecar(verification={"stream": "buffer", "mode": mode})
    adv.mitm.on("completion", rewrite_events(lambda events: events + [b": late\n\n"]))
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    assert status == 200 and headers["x-tee-verified"] == verified
    assert headers["content-type"].startswith("text/event-stream")
    if mode == "flag":
        assert headers["x-tee-failure"] == "stream.data_after_done"
    else:
        assert "x-tee-failure" not in headers
    assert body.endswith(b": late\n\n")


# -- what the app is told, exactly -------------------------------------------------------------


def _error(body: bytes) -> dict[str, str]:
    error: dict[str, str] = json.loads(body)["error"]
    return error


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_a_stream_whose_first_event_is_not_json_is_malformed(adv: AdversarialStack,
                                                            stream_mode: str) -> None:
    url = adv.sidecar(verification={"stream": stream_mode})
    adv.mitm.on("completion", rewrite_events(lambda events: [b"data: {not json\n\n", *events]))
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    if stream_mode == "relay":
        assert relay_verdict(body) == "response.malformed"
    else:
        assert_blocked(status, headers, body, "response.malformed")
        assert _error(body)["message"] == "tee-sidecar: response is not JSON"


def test_a_plain_answer_that_is_not_json_is_malformed(adv: AdversarialStack) -> None:
    from tests.adversarial.mitm import rewrite_response

    url = adv.sidecar()
    adv.mitm.on("completion", rewrite_response(lambda body: b"{" + body))
    status, headers, body = post(url + "/chat/completions", _request("plain"))
    assert_blocked(status, headers, body, "response.malformed")


def test_a_delivered_plain_answer_is_labelled_json_by_the_sidecar(adv: AdversarialStack) -> None:
    status, headers, _ = post(adv.sidecar() + "/chat/completions", _request("plain"))
    assert status == 200 and headers["content-type"] == "application/json"


@pytest.mark.parametrize("edit, code, message", [
    (lambda events: events[:-1], "stream.truncated", "stream ended before data: [DONE]"),
    (lambda events: events + [b": late\n\n"], "stream.data_after_done",
     "stream carries data after [DONE]"),
    # The SDK ends on any data starting with [DONE]; only the exact marker is the contract.
    (lambda events: [*events[:-1], b"data: [DONE] and more\n\n"], "stream.malformed_done",
     "stream ends on a data line that only starts with [DONE]"),
], ids=["truncated", "after_done", "malformed_done"])
def test_stream_shape_messages(adv: AdversarialStack, edit: object, code: str,
                               message: str) -> None:
    url = adv.sidecar(verification={"stream": "buffer"})
    adv.mitm.on("completion", rewrite_events(edit))  # type: ignore[arg-type]
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    assert_blocked(status, headers, body, code)
    assert _error(body)["message"] == f"tee-sidecar: {message}"


def test_a_verifier_that_raises_fails_closed_with_internal_error(
        adv: AdversarialStack, monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.proxy.verdict as verdict

    url = adv.sidecar()
    post(url + "/chat/completions", _request("plain"))  # attested before the fault

    def boom(_: bytes) -> None:
        raise RuntimeError("a bug, not bad evidence")

    monkeypatch.setattr(verdict, "parse_signature_record", boom)
    status, headers, body = post(url + "/chat/completions", _request("plain"))
    assert status == 502 and headers["x-tee-verified"] == "false"
    assert headers["x-tee-failure"] == "verification.internal_error"
    assert _error(body)["message"] == "tee-sidecar: verification raised RuntimeError"
    assert b"a bug, not bad evidence" not in body


def test_signature_verdicts_are_counted_by_result(adv: AdversarialStack) -> None:
    from tests.adversarial.mitm import answer, rewrite_response

    url = adv.sidecar(fresh=True)
    counters = adv.sidecar_state(url).telemetry.snapshot
    post(url + "/chat/completions", _request("plain"))
    before = dict(counters()["counters"])
    adv.mitm.on("signature", answer(503, b"{}"), times=1)
    post(url + "/chat/completions", _request("plain"))
    adv.mitm.on("completion", rewrite_response(lambda body: body.replace(b"enclave", b"Enclave")),
                times=1)
    post(url + "/chat/completions", _request("plain"))
    after = counters()["counters"]
    assert after["signatures_incomplete"] - before["signatures_incomplete"] == 1
    assert after["signatures_failed"] - before["signatures_failed"] == 1
    assert after["signatures_passed"] == before["signatures_passed"]


# -- the relay forwards exactly what it received -------------------------------------------------


def test_a_relayed_stream_is_the_upstream_bytes_with_only_the_verdict_added(
        adv: AdversarialStack) -> None:
    url = adv.sidecar(verification={"stream": "relay"})
    # Chunks of 64 bytes: several events complete in one chunk and leave in one write.
    adv.mitm.on("completion", rewrite_events(lambda events: events, chunk=64))
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    upstream = adv.mitm.exchanges("completion")[-1][1].body
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert body == upstream.removesuffix(b"data: [DONE]\n\n") + \
        b": x-tee-verified true\n\ndata: [DONE]\n\n"


def test_the_relay_size_bound_counts_every_chunk(adv: AdversarialStack) -> None:
    # The whole stream, not its largest chunk, is bounded: 64-byte chunks one byte over in total.
    length = _genuine_length(adv, "stream")
    url = adv.sidecar(verification={"stream": "relay"}, limits={"max_response_bytes": length - 1})
    adv.mitm.on("completion", rewrite_events(lambda events: events, chunk=64))
    status, _, body = post(url + "/chat/completions", _request("stream"))
    assert status == 200 and relay_verdict(body) == "limits.response_too_large"
    error = json.loads(body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: "))["error"]
    assert error["message"] == "tee-sidecar: stream exceeds limits.max_response_bytes"


def test_a_forged_verdict_names_itself(adv: AdversarialStack) -> None:
    url = adv.sidecar(verification={"stream": "relay"})
    adv.mitm.on("completion", rewrite_events(lambda events: [b": x-tee-x\n\n", *events]))
    _, _, body = post(url + "/chat/completions", _request("stream"))
    error = json.loads(body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: "))["error"]
    assert (error["code"], error["message"]) == (
        "stream.forged_verdict", "tee-sidecar: upstream sent an x-tee verdict comment")


def test_monitor_closes_a_truncated_relay_with_its_own_done(adv: AdversarialStack) -> None:
    # The upstream never sent [DONE]; monitor mode still ends the stream the way the SDK expects.
    url = adv.sidecar(verification={"stream": "relay", "mode": "monitor"})
    adv.mitm.on("completion", rewrite_events(lambda events: events[:-1]))
    status, _, body = post(url + "/chat/completions", _request("stream"))
    assert status == 200
    assert body.endswith(b"\n\n: x-tee-verified false\n\ndata: [DONE]\n\n")
    assert body.count(b"data: [DONE]") == 1


def test_monitor_ends_with_the_sidecars_own_done(adv: AdversarialStack) -> None:
    """The upstream's end marker is never forwarded (issue 11, finding 1): monitor mode ends a
    relayed stream with the verdict comment and the sidecar's own canonical ``[DONE]``."""
    url = adv.sidecar(verification={"stream": "relay", "mode": "monitor"})
    adv.mitm.on("completion", rewrite_events(
        lambda events: [*events[:-1], b"data:[DONE]\n\n"]))  # [DONE] as the upstream wrote it
    _, _, body = post(url + "/chat/completions", _request("stream"))
    assert body.endswith(b": x-tee-verified false\n\ndata: [DONE]\n\n")
    assert b"data:[DONE]" not in body


@pytest.mark.parametrize("kind, stream_mode", MODES, ids=IDS)
def test_a_cut_answer_says_the_connection_broke(adv: AdversarialStack, kind: str,
                                                stream_mode: str) -> None:
    from tests.adversarial.mitm import reset_after

    url = adv.sidecar(verification={"stream": stream_mode})
    post(url + "/chat/completions", _request(kind))
    adv.mitm.on("completion", reset_after(0.5))
    status, headers, body = post(url + "/chat/completions", _request(kind))
    if stream_mode == "relay" and kind == "stream":
        assert relay_verdict(body) == "stream.truncated"
        last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: ")
        message = json.loads(last)["error"]["message"]
        assert message.startswith("tee-sidecar: upstream stream broke: ")
        # The detail names the transport error (aiohttp's class, which varies by version).
        broke = getattr(aiohttp, message.rsplit(": ", 1)[1], None)
        assert isinstance(broke, type) and issubclass(broke, aiohttp.ClientError), message
    else:
        assert_blocked(status, headers, body, "stream.truncated")
        message = _error(body)["message"]
        assert message.startswith("tee-sidecar: upstream connection broke mid-body: ")
        broke = getattr(aiohttp, message.rsplit(": ", 1)[1], None)
        assert isinstance(broke, type) and issubclass(broke, aiohttp.ClientError), message


@pytest.mark.parametrize("kind, stream_mode", MODES, ids=IDS)
def test_a_stalled_answer_says_the_provider_stopped(adv: AdversarialStack, kind: str,
                                                    stream_mode: str) -> None:
    from tests.adversarial.mitm import stall

    url = adv.sidecar(upstream={"read_timeout": 0.3}, verification={"stream": stream_mode})
    post(url + "/chat/completions", _request(kind))
    adv.mitm.on("completion", stall(3.0, after=40))
    status, headers, body = post(url + "/chat/completions", _request(kind))
    if stream_mode == "relay" and kind == "stream":
        assert relay_verdict(body) == "upstream.timeout"
        last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: ")
        assert json.loads(last)["error"]["message"] == "tee-sidecar: the provider stopped sending"
    else:
        assert_blocked(status, headers, body, "upstream.timeout")
        assert _error(body)["message"] == "tee-sidecar: the provider stopped sending"


# -- the verdict's facts reach the headers and the receipt ---------------------------------------


def test_a_verified_answer_names_its_signer(adv: AdversarialStack) -> None:
    url = adv.sidecar(verification={"mode": "flag"})
    status, headers, _ = post(url + "/chat/completions", _request("plain"))
    entry = adv.sidecar_state(url).cache.peek(TEE_MODEL)
    assert status == 200 and entry is not None
    assert headers["x-tee-signing-address"] in entry.report.attested_keys
    assert headers["x-tee-evidence-sha256"] == entry.report.evidence_sha256


def test_the_receipt_of_a_refused_answer_keeps_its_id_and_record(adv: AdversarialStack) -> None:
    from tests.adversarial.mitm import rewrite_response

    url = adv.sidecar(fresh=True)
    adv.mitm.on("completion", rewrite_response(lambda body: body.replace(b"enclave", b"Enclave")))
    status, _, body = post(url + "/chat/completions", _request("plain"))
    assert status == 502
    path = adv.sidecar_state(url).settings.receipts_path()
    receipt = json.loads(path.read_text().splitlines()[-1])
    signed = adv.mitm.exchanges("signature")[-1][1].body
    assert receipt["verdict"] == "failed"
    assert receipt["failure_code"] == "signature.response_hash_mismatch"
    answered = adv.mitm.exchanges("completion")[-1][1].body
    assert receipt["chat_id"] == json.loads(answered)["id"]
    assert receipt["text"] == json.loads(signed)["text"]
    assert receipt["signature"] == json.loads(signed)["signature"]


def test_a_relay_whose_judge_raises_ends_in_an_internal_error_event(
        adv: AdversarialStack, monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.proxy.app as app

    url = adv.sidecar(verification={"stream": "relay"})
    post(url + "/chat/completions", _request("stream"))

    async def boom(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app._Completion, "judge", boom)
    with capture_logs() as logs:
        status, headers, body = post(url + "/chat/completions", _request("stream"))
    # The operator reads the bug in the log, with its traceback; the app only its code.
    assert [e for e in logs if e["event"] == "relay_judge_failed"] == [
        {"event": "relay_judge_failed", "log_level": "error", "exc_info": True}]
    assert status == 200 and headers["x-tee-verified"] == "pending"
    assert relay_verdict(body) == "sidecar.internal_error"
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: ")
    assert json.loads(last)["error"]["message"] == "tee-sidecar: internal error in tee-sidecar"
    assert b"a bug" not in body


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_data_events_after_done_are_never_relayed(adv: AdversarialStack, mode: str) -> None:
    # Events after [DONE] are judged (data after [DONE]) but never forwarded, in any mode: the
    # relay holds [DONE] and stops forwarding there, so the app never reads what follows it.
    url = adv.sidecar(verification={"stream": "relay", "mode": mode})
    injected = [b'data: {"id":"x","choices":[{"delta":{"content":"injected"}}]}\n\n',
                b"data: [DONE]\n\n"]
    adv.mitm.on("completion", rewrite_events(lambda events: events + injected))
    status, headers, body = post(url + "/chat/completions", _request("stream"))
    assert status == 200 and headers["x-tee-verified"] == "pending"
    assert b"injected" not in body
    assert body.count(b"data: [DONE]") == (1 if mode == "monitor" else 0)
    if mode == "monitor":
        assert body.endswith(b"\n\n: x-tee-verified false\n\ndata: [DONE]\n\n")
    else:
        assert relay_verdict(body) == "stream.data_after_done"


@pytest.mark.parametrize("kind, stream_mode", MODES, ids=IDS)
def test_a_stream_timeout_names_the_limit(adv: AdversarialStack, kind: str,
                                          stream_mode: str) -> None:
    from tests.adversarial.mitm import drip

    # One byte every 50 ms: the read timeout never trips, the total bound does.
    url = adv.sidecar(upstream={"read_timeout": 0.5}, verification={"stream": stream_mode},
                      limits={"stream_timeout": 1.0})
    post(url + "/chat/completions", _request(kind))
    adv.mitm.on("completion", drip(0.05))
    status, headers, body = post(url + "/chat/completions", _request(kind))
    message = "tee-sidecar: the response took longer than limits.stream_timeout (1.0 s)"
    if stream_mode == "relay" and kind == "stream":
        assert relay_verdict(body) == "limits.stream_timeout"
        last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: ")
        assert json.loads(last)["error"]["message"] == message
    else:
        assert_blocked(status, headers, body, "limits.stream_timeout")
        assert _error(body)["message"] == message


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_an_e2ee_stream_that_does_not_frame_is_malformed_not_an_internal_error(
        adv: AdversarialStack, stream_mode: str) -> None:
    # End-to-end encrypted (NEAR Cloud): the answer is opened only from the events the framer
    # read; a stream it refuses at its first event opens nothing and fails with the framer's code.
    from sidecar.simulator.provider import CANONICAL_MODEL

    url = adv.sidecar(profile="near-cloud", verification={"stream": stream_mode},
                      attestation={"only_known_models": False})
    adv.mitm.on("completion", rewrite_events(lambda events: [b"data: {not json\n\n", *events]))
    request = json.dumps({"model": CANONICAL_MODEL, "messages": MESSAGES, "stream": True})
    status, headers, body = post(url + "/chat/completions", request.encode())
    assert headers["x-tee-e2ee"] == "true"
    if stream_mode == "relay":
        assert relay_verdict(body) == "response.malformed"
    else:
        assert_blocked(status, headers, body, "response.malformed")


def test_monitor_never_delivers_an_e2ee_relay_whose_event_does_not_open(
        adv: AdversarialStack) -> None:
    # Monitor mode ends a refused relay with [DONE]; not one whose sealed fields did not open:
    # what would follow is ciphertext or text a gateway injected (docs/e2ee.md).
    from sidecar.simulator.provider import CANONICAL_MODEL

    url = adv.sidecar(profile="near-cloud", verification={"stream": "relay", "mode": "monitor"},
                      attestation={"only_known_models": False})
    adv.simulator.faults.e2ee_tamper_field = True
    request = json.dumps({"model": CANONICAL_MODEL, "messages": MESSAGES, "stream": True})
    status, headers, body = post(url + "/chat/completions", request.encode())
    assert status == 200 and headers["x-tee-e2ee"] == "true"
    assert b"x-tee-verified false" not in body
    assert relay_verdict(body) == "e2ee.decrypt_failed"


@pytest.mark.parametrize("kind", ["plain", "stream"])
@pytest.mark.parametrize("edit, code, binding", [
    # NanoGPT (the default profile) renames the model on the way in: model_renamed.
    (lambda body: body.replace(b"enclave", b"Enclave"), "signature.response_hash_mismatch",
     "model_renamed"),
    (None, "signature.request_hash_mismatch", "signature.request_hash_mismatch"),
], ids=["response-tampered", "request-altered"])
def test_a_blocked_answer_says_how_the_request_was_bound(adv: AdversarialStack, kind: str,
                                                         edit: object, code: str,
                                                         binding: str) -> None:
    # Spec 0.1: every verdict says how the signed request hash covered the bytes sent, the
    # refused ones too (a tampered answer to a bound request, or the request itself unbound).
    from tests.adversarial.mitm import rewrite_response

    url = adv.sidecar(verification={"stream": "buffer"})
    if edit is None:
        adv.simulator.faults.alter_request = True
    else:
        adv.mitm.on("completion", rewrite_response(edit))  # type: ignore[arg-type]
    status, headers, body = post(url + "/chat/completions", _request(kind))
    assert_blocked(status, headers, body, code)
    assert headers["x-tee-request-binding"] == binding


@pytest.mark.parametrize("kind, stream_mode", MODES[:2], ids=IDS[:2])
def test_the_request_log_line_of_a_refused_answer(adv: AdversarialStack, kind: str,
                                                  stream_mode: str) -> None:
    # The log line is fed by the same verdict as the headers: "false", never another spelling.
    from tests.adversarial.mitm import rewrite_response

    url = adv.sidecar(verification={"stream": stream_mode})
    post(url + "/chat/completions", _request(kind))
    adv.mitm.on("completion", rewrite_response(lambda body: body.replace(b"enclave", b"Enclave")))
    with capture_logs() as logs:
        post(url + "/chat/completions", _request(kind))
    [line] = [e for e in logs if e["event"] == "request"]
    assert (line["verified"], line["failure"], line["request_binding"]) == (
        "false", "signature.response_hash_mismatch", "model_renamed")
