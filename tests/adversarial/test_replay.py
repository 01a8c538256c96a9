"""Whole-completion replay (issue 11, finding 7): a gateway answers a byte-identical request
with an earlier answer; its genuine signature verifies again. The repeat must fail."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from tests.adversarial.conftest import assert_blocked
from tests.adversarial.harness import MESSAGES, TEE_MODEL, AdversarialStack, post
from tests.adversarial.mitm import Exchange, Mitm, Upstream, respond


def _replay_the_first_answer() -> object:
    kept: list[Upstream] = []

    async def intercept(_: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
        if not kept:
            kept.append(await mitm.forward(exchange))
        return respond(kept[0])
    return intercept


@pytest.mark.parametrize("stream", [False, True])
def test_a_replayed_whole_completion_is_refused(adv: AdversarialStack, stream: bool) -> None:
    url = adv.sidecar(fresh=True)
    adv.mitm.on("completion", _replay_the_first_answer())  # type: ignore[arg-type]
    request = json.dumps({"model": TEE_MODEL, "messages": MESSAGES, "stream": stream}).encode()
    status, headers, first = post(url + "/chat/completions", request)
    assert status == 200 and headers["x-tee-verified"] == "true"
    status, headers, body = post(url + "/chat/completions", request)
    assert_blocked(status, headers, body, "response.replayed")
    receipts = [json.loads(line) for line in
                adv.sidecar_state(url).receipts.path.read_bytes().splitlines()]  # type: ignore[union-attr]
    assert [r["verdict"] for r in receipts[-2:]] == ["verified", "failed"]
    assert receipts[-1]["failure_code"] == "response.replayed"
