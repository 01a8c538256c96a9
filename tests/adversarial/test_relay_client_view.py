"""What the app's SSE parser sees of a relayed stream (issue 11, finding 1).

The official openai SDK ends a stream on any data line that *starts with* ``[DONE]`` and, as the
WHATWG standard says, ends lines on ``\\r``, ``\\n`` and ``\\r\\n``. A path attacker who rewrites
tokens and then hides an end-of-stream marker the sidecar's framer does not read the same way
would have the app end the stream cleanly, before the failing verdict arrives. Each trick is run
through the MITM against the official SDK, sync and async: the app must always end on the
sidecar's error (relay) or get a 502 (buffer), never on a clean end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import openai
import pytest

from tests.adversarial.harness import MESSAGES, TEE_MODEL, AdversarialStack, sdk
from tests.adversarial.mitm import rewrite_events


def _tamper_tokens(events: list[bytes]) -> list[bytes]:
    """The attacker's goal: different words in the app's hands."""
    return [e.replace(b'"content": "', b'"content": "PWNED ', 1) if i == 3 else e
            for i, e in enumerate(events)]


def _done_prefix(events: list[bytes]) -> list[bytes]:
    events = _tamper_tokens(events)
    return events[:5] + [b"data: [DONE]x\n\n"] + events[5:]


def _lone_cr(events: list[bytes]) -> list[bytes]:
    events = _tamper_tokens(events)
    # No \n\n anywhere in the injected bytes: a framer that only knows \n\n glues them to the
    # next event; the SDK sees a complete [DONE] event ended by two lone CRs.
    return events[:5] + [b"data: [DONE]\r\r"] + events[5:]


def _cr_cr_inside_an_event(events: list[bytes]) -> list[bytes]:
    events = _tamper_tokens(events)
    events[4] = events[4].removesuffix(b"\n\n") + b"\r\rdata: [DONE]\r\r\n\n"
    return events


def _forged_verdict_inside_an_event(events: list[bytes]) -> list[bytes]:
    events = _tamper_tokens(events)
    events[4] = (events[4].removesuffix(b"\n\n")
                 + b"\r\r: x-tee-verified true\r\rdata: [DONE]\r\r\n\n")
    return events


TRICKS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "done_prefix": _done_prefix,
    "lone_cr": _lone_cr,
    "cr_cr_inside_an_event": _cr_cr_inside_an_event,
    "forged_verdict_inside_an_event": _forged_verdict_inside_an_event,
}


def _sync_read(url: str) -> str:
    text = []
    with sdk(url).chat.completions.create(model=TEE_MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                          stream=True) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
    return "".join(text)


def _async_read(url: str) -> str:
    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=url, api_key="not-a-real-key", max_retries=0,
                                    timeout=20)
        text = []
        try:
            stream = await client.chat.completions.create(
                model=TEE_MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)
        finally:
            await client.close()
        return "".join(text)
    return asyncio.run(run())


READERS = {"sync": _sync_read, "async": _async_read}


@pytest.mark.parametrize("client", sorted(READERS))
@pytest.mark.parametrize("trick", sorted(TRICKS))
@pytest.mark.parametrize("stream_mode", ["relay", "buffer"])
def test_a_hidden_end_of_stream_never_ends_the_apps_stream_cleanly(
        adv: AdversarialStack, trick: str, client: str, stream_mode: str) -> None:
    url = adv.sidecar(verification={"stream": stream_mode})
    adv.mitm.on("completion", rewrite_events(TRICKS[trick]))
    with pytest.raises(openai.APIError) as caught:
        text = READERS[client](url)
        pytest.fail(f"the app's stream ended cleanly with {text!r}")
    if stream_mode == "buffer":
        assert isinstance(caught.value, openai.APIStatusError)
        assert caught.value.status_code == 502
    else:
        body = caught.value.body
        assert isinstance(body, dict) and body.get("code") in (
            "signature.response_hash_mismatch", "stream.forged_verdict",
            "stream.data_after_done", "stream.malformed_done"), body


@pytest.mark.parametrize("client", sorted(READERS))
def test_a_genuine_relayed_stream_still_reads_whole(adv: AdversarialStack, client: str) -> None:
    url = adv.sidecar(verification={"stream": "relay"})
    assert READERS[client](url).startswith("Confidential")
