"""Fixtures: one simulator + MITM + sidecars stack for the adversarial suite; honest path per test."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.simulator.provider import NANOGPT_UPSTREAM_MODEL, TEE_MODEL
from tests.adversarial.harness import EXPECTED_TEXT, AdversarialStack
from tests.adversarial.mitm import split_events


@pytest.fixture(scope="session")
def adv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdversarialStack]:
    """Simulator, tampering MITM and sidecars on loopback, in a background event loop."""
    s = AdversarialStack(Path(tmp_path_factory.mktemp("adversarial")))
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _honest_path_after_each_test(adv: AdversarialStack) -> Iterator[None]:
    yield
    adv.call(adv.mitm.reset)
    adv.call(adv.simulator.faults.reset)


def signed_text(adv: AdversarialStack, chat_id: str) -> str | None:
    """The text the simulator signed for ``chat_id`` (read in-process, not through the MITM)."""
    record = adv.call(lambda: adv.simulator.signature(chat_id, "ecdsa"))
    return record["text"] if record else None


def chat_id_of(body: bytes) -> str | None:
    """The completion id of a delivered plain answer or stream."""
    payload = body.split(b"\n\n", 1)[0].removeprefix(b"data: ") if body.startswith(b"data:") \
        else body
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value.get("id") if isinstance(value, dict) else None


def assert_no_unverified_delivery(adv: AdversarialStack, request_body: bytes, status: int,
                                  headers: dict[str, str], body: bytes) -> None:
    """The invariant of enforce mode: a 200 carries exactly the bytes the enclave signed."""
    assert headers.get("x-tee-failure") != "sidecar.internal_error", body[:300]
    if status != 200:
        return
    assert headers.get("x-tee-verified") in ("true", "pending"), headers
    if headers.get("x-tee-verified") == "pending":
        return  # relay: checked by the caller (the stream's last events carry the verdict)
    chat_id = chat_id_of(body)
    assert chat_id is not None, body[:300]
    # NanoGPT renames the model on the way in (spec 0.1): the upstream node signs the renamed
    # request bytes and names its model in a 3-part text. Computed here with plain byte
    # replacement, independently of the verifier's span walker.
    renamed = request_body.replace(json.dumps(TEE_MODEL).encode(),
                                   json.dumps(NANOGPT_UPSTREAM_MODEL).encode(), 1)
    response = hashlib.sha256(body).hexdigest()
    expected = {f"{hashlib.sha256(request_body).hexdigest()}:{response}",
                f"{NANOGPT_UPSTREAM_MODEL}:{hashlib.sha256(renamed).hexdigest()}:{response}"}
    assert signed_text(adv, chat_id) in expected, "a 200 whose bytes the enclave did not sign"


def assert_blocked(status: int, headers: dict[str, str], body: bytes,
                   code: str | tuple[str, ...] | None = None) -> str:
    """Enforce mode refused the answer with an OpenAI-shaped error; returns the failure code."""
    assert status in (502, 504), (status, body[:300])
    assert headers.get("x-tee-verified") == "false", headers
    failure = headers.get("x-tee-failure", "")
    assert failure != "sidecar.internal_error", body[:300]
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["code"] == failure
    assert EXPECTED_TEXT.encode() not in body
    if code is not None:
        assert failure in ((code,) if isinstance(code, str) else code), failure
    return failure


def relay_verdict(body: bytes) -> str:
    """How a relayed stream ended: ``verified``, or the error event's code."""
    if body.endswith(b": x-tee-verified true\n\ndata: [DONE]\n\n"):
        return "verified"
    events = split_events(body)
    assert b"data: [DONE]\n\n" not in events, "an unverified relayed stream must not end in [DONE]"
    assert b": x-tee-verified true\n\n" not in events
    return str(json.loads(events[-1].removeprefix(b"data: "))["error"]["code"])
