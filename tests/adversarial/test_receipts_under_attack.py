"""Receipts under attack: every completion the enclave served leaves one receipt line, whatever
the MITM did to it, and the file re-verifies offline (``verify_receipts``)."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from sidecar.receipts import ReceiptsReport, verify_receipts
from tests.adversarial.conftest import assert_blocked, relay_verdict
from tests.adversarial.harness import AdversarialStack, chat
from tests.adversarial.mitm import answer, reset_after, rewrite_events, rewrite_response, stall
from tests.adversarial.test_tamper_bytes import STREAM_ATTACKS


def _flip(body: bytes) -> bytes:
    i = body.find(b"enclave")
    return body[:i] + bytes([body[i] ^ 0x20]) + body[i + 1:]


def _report(adv: AdversarialStack, url: str) -> ReceiptsReport:
    return verify_receipts(adv.sidecar_state(url).settings.receipts_path())


@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_one_receipt_per_judged_completion_and_all_reverify(adv: AdversarialStack,
                                                             stream_mode: str) -> None:
    url = adv.sidecar(fresh=True, verification={"stream": stream_mode})
    outcomes = []
    outcomes.append(chat(url))
    outcomes.append(chat(url, stream=True))
    adv.mitm.on("completion", rewrite_response(_flip), times=1)
    outcomes.append(chat(url))
    adv.mitm.on("completion", rewrite_events(STREAM_ATTACKS["drop_a_middle_event"][0]), times=1)
    outcomes.append(chat(url, stream=True))
    adv.mitm.on("completion", rewrite_events(STREAM_ATTACKS["reorder_two_events"][0]), times=1)
    outcomes.append(chat(url, stream=True))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes += list(pool.map(lambda i: chat(url, stream=bool(i % 2)), range(16)))
    # The three tampered answers were refused for the bytes they changed, in either mode.
    for status, headers, body in outcomes[2:5]:
        if status == 200:
            assert headers["x-tee-verified"] == "pending"
            assert relay_verdict(body) == "signature.response_hash_mismatch"
        else:
            assert_blocked(status, headers, body, "signature.response_hash_mismatch")
    report = _report(adv, url)
    assert report.ok, [r.failure for r in report.invalid_lines]
    assert report.total == len(outcomes) == 21
    assert report.recorded_failed == 3
    assert report.verified == 18


@pytest.mark.parametrize("attack", ["reset_mid_body", "stall_mid_body"])
def test_completion_cut_on_the_path_still_leaves_a_receipt(adv: AdversarialStack,
                                                           attack: str) -> None:
    url = adv.sidecar(fresh=True, upstream={"read_timeout": 0.5})
    assert chat(url)[0] == 200
    adv.mitm.on("completion", reset_after(0.5) if attack == "reset_mid_body"
                else stall(3.0, after=40))
    assert_blocked(*chat(url), "stream.truncated" if attack == "reset_mid_body"
                   else "upstream.timeout")
    report = _report(adv, url)
    assert report.total == 2 and report.recorded_failed == 1


@pytest.mark.parametrize("record", [
    {"text": "a" * 400 + ":b", "signature": "0x00", "signing_address": "0x" + "11" * 20},
    {"text": "", "signature": "", "signing_address": ""},
], ids=["oversized_text", "empty_fields"])
@pytest.mark.parametrize("mode", ["enforce", "flag"])
def test_a_hostile_signature_record_still_leaves_a_receipt(adv: AdversarialStack, mode: str,
                                                           record: dict[str, str]) -> None:
    url = adv.sidecar(fresh=True, verification={"mode": mode})
    adv.mitm.on("signature", answer(200, json.dumps(record).encode()))
    status, headers, _ = chat(url)
    assert status == (502 if mode == "enforce" else 200)
    assert headers["x-tee-failure"] == "signature.record_malformed"
    report = _report(adv, url)
    assert report.ok and (report.total, report.recorded_failed) == (1, 1)
