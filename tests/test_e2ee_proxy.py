"""E2EE through the proxy, end to end (issue 13): the official ``openai`` SDK -> tee-sidecar ->
the simulated NEAR gateway and node (spec 0.5, docs/e2ee.md).

The app talks plain OpenAI; the sidecar seals the prompt to the attested node key, the
simulated gateway only ever relays ciphertext (``SimulatedProvider.gateway_seen``), the node's
signature covers the encrypted bytes, and the answer is opened before the app sees it. Each
attack on the encryption is blocked in enforce mode with its code.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from sidecar.receipts import decode_receipt_line
from sidecar.simulator.provider import CANONICAL_MODEL
from tests.stack import Stack
from tests.conftest import TEE_MODEL
from tests.test_proxy_e2e import EXPECTED_TEXT, post, set_faults

PROMPT = "My bank PIN is 4921 and my secret plan is to buy Greenland."
MESSAGES = [{"role": "user", "content": PROMPT}]
PROFILES = ["near-cloud", "near-direct"]
ALGOS = ["ecdsa", "ed25519"]
STREAM_MODES = ["buffer", "relay"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a secret location",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="not-a-real-key", max_retries=0, timeout=30)


def async_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="not-a-real-key", max_retries=0, timeout=30)


def gateway_seen(stack: Stack) -> list[bytes]:
    return stack.call(lambda: list(stack.simulator.gateway_seen))


def clear_gateway(stack: Stack) -> None:
    stack.call(stack.simulator.gateway_seen.clear)


def assert_only_ciphertext(seen: list[bytes]) -> None:
    """Neither the prompt nor any word of the answer crossed the gateway in plaintext."""
    assert seen, "the gateway relayed nothing"
    for blob in seen:
        assert PROMPT.encode() not in blob
        assert b"bank PIN" not in blob and b"Greenland" not in blob
        assert b"enclave" not in blob and b"Confidential" not in blob
        assert b"get_weather" not in blob and b"secret location" not in blob


def near(stack: Stack, profile: str, algo: str = "ecdsa", stream: str = "buffer",
         mode: str = "enforce", **sections: Any) -> str:
    return stack.sidecar(profile=profile, verification={"signing_algo": algo, "stream": stream,
                                                        "mode": mode}, **sections)


def node_public_key(stack: Stack, algo: str) -> str:
    return stack.call(lambda: stack.simulator.nodes[0].public_key_hex(algo))


# --- the genuine path ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("stream_mode", STREAM_MODES)
def test_sdk_sync_and_async_plain_and_streamed(stack: Stack, profile: str, algo: str,
                                               stream_mode: str) -> None:
    url = near(stack, profile, algo, stream_mode)
    clear_gateway(stack)
    raw = client(url).chat.completions.with_raw_response.create(model=CANONICAL_MODEL,
                                                                messages=MESSAGES)
    assert raw.headers["x-tee-verified"] == "true"
    assert raw.headers["x-tee-e2ee"] == "true"
    assert raw.parse().choices[0].message.content == EXPECTED_TEXT

    with client(url).chat.completions.with_streaming_response.create(
            model=CANONICAL_MODEL, messages=MESSAGES, stream=True) as response:
        assert response.headers["x-tee-e2ee"] == "true"
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EXPECTED_TEXT

    async def both() -> tuple[str | None, str]:
        app = async_client(url)
        answer = await app.chat.completions.create(model=CANONICAL_MODEL, messages=MESSAGES)
        stream = await app.chat.completions.create(model=CANONICAL_MODEL, messages=MESSAGES,
                                                   stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await app.close()
        return answer.choices[0].message.content, text

    plain, streamed = asyncio.run(both())
    assert plain == streamed == EXPECTED_TEXT
    if profile == "near-cloud":
        assert_only_ciphertext(gateway_seen(stack))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("stream_mode", STREAM_MODES)
def test_tool_calls_and_logprobs_are_sealed_and_opened(stack: Stack, algo: str,
                                                       stream_mode: str) -> None:
    url = near(stack, "near-cloud", algo, stream_mode)
    clear_gateway(stack)
    answer = client(url).chat.completions.create(
        model=CANONICAL_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    answer = client(url).chat.completions.create(
        model=CANONICAL_MODEL, messages=MESSAGES, logprobs=True, top_logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(t.token for t in logprobs.content) == EXPECTED_TEXT
    assert all(bytes(t.bytes or []) == t.token.encode() for t in logprobs.content)
    with client(url).chat.completions.with_streaming_response.create(
            model=CANONICAL_MODEL, messages=MESSAGES, stream=True, tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as response:
        chunks = list(response.parse())
    names = [call.function.name for c in chunks if c.choices
             for call in c.choices[0].delta.tool_calls or [] if call.function and call.function.name]
    assert names == ["get_weather"]
    assert_only_ciphertext(gateway_seen(stack))


def test_receipts_status_and_logs_say_e2ee_and_hold_no_secret(
        stack: Stack, capfd: pytest.CaptureFixture[str]) -> None:
    from sidecar.logs import configure_logging

    configure_logging("json", "info")  # as conftest does: an earlier test may have changed it
    url = near(stack, "near-cloud", "ed25519", receipts={"enabled": True})
    state = stack.sidecar_state(url)
    capfd.readouterr()
    client(url).chat.completions.create(model=CANONICAL_MODEL, messages=MESSAGES)
    key = node_public_key(stack, "ed25519")
    *_, last = state.settings.receipts_path().read_bytes().splitlines()
    receipt, _ = decode_receipt_line(last)
    assert receipt.verdict == "verified"
    assert (receipt.e2ee, receipt.e2ee_model_key) == ("true", key)
    snapshot = state.telemetry.snapshot()
    assert snapshot["exchanges"][0]["e2ee"] == "true"
    assert snapshot["exchanges"][0]["model_key"] == key
    assert snapshot["counters"]["exchanges_e2ee"] >= 1
    logs = "".join(capfd.readouterr())
    assert '"e2ee": "true"' in logs or "e2ee=true" in logs
    assert state.e2ee_ring is not None
    pair = state.e2ee_ring.current("ed25519", now=0)  # only public halves are reachable
    for secret in (PROMPT, "Greenland", EXPECTED_TEXT, "Confidential", pair.public_hex):
        assert secret not in logs


def test_client_key_rotates_on_schedule(stack: Stack) -> None:
    url = near(stack, "near-direct", "ecdsa", upstream={"e2ee_key_max_age": 0})
    state = stack.sidecar_state(url)
    assert state.e2ee_ring is not None and state.e2ee_ring.max_age == 0
    for _ in range(2):
        assert client(url).chat.completions.create(
            model=CANONICAL_MODEL, messages=MESSAGES).choices[0].message.content == EXPECTED_TEXT
    default = stack.sidecar_state(near(stack, "near-direct", "ecdsa"))
    assert default.e2ee_ring is not None and default.e2ee_ring.max_age == 3600


# --- settings --------------------------------------------------------------------------------


def test_off_sends_plaintext_and_says_so(stack: Stack) -> None:
    url = near(stack, "near-cloud", upstream={"e2ee": "off"})
    clear_gateway(stack)
    raw = client(url).chat.completions.with_raw_response.create(model=CANONICAL_MODEL,
                                                                messages=MESSAGES)
    assert raw.headers["x-tee-e2ee"] == "false"
    assert raw.headers["x-tee-verified"] == "true"
    assert any(PROMPT.encode() in blob for blob in gateway_seen(stack))


def test_app_cannot_choose_the_e2ee_headers(stack: Stack) -> None:
    """E2EE headers an app sends are never forwarded (``E2EE_HEADER_NAMES``): the node would
    otherwise try to open a plaintext prompt, or seal the answer to the app's key."""
    url = near(stack, "near-cloud", "ed25519", upstream={"e2ee": "off"})
    headers = {"x-signing-algo": "ed25519", "x-client-pub-key": "11" * 32,
               "x-model-pub-key": node_public_key(stack, "ed25519"),
               "x-encryption-version": "2", "x-encrypt-all-fields": "true"}
    raw = client(url).chat.completions.with_raw_response.create(
        model=CANONICAL_MODEL, messages=MESSAGES, extra_headers=headers)
    assert raw.headers["x-tee-verified"] == "true"
    assert raw.headers["x-tee-e2ee"] == "false"
    assert raw.parse().choices[0].message.content == EXPECTED_TEXT


def test_policy_entry_overrides_the_provider_setting(stack: Stack, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[defaults]\nrequire_nvidia = true\n\n[models."{CANONICAL_MODEL}"]\n'
                      'e2ee = "off"\n')
    url = near(stack, "near-direct", upstream={"e2ee": "required"}, policy={"file": str(policy)})
    raw = client(url).chat.completions.with_raw_response.create(model=CANONICAL_MODEL,
                                                                messages=MESSAGES)
    assert raw.headers["x-tee-e2ee"] == "false"


def test_profile_without_e2ee_says_unavailable(stack: Stack) -> None:
    raw = client(stack.sidecar()).chat.completions.with_raw_response.create(
        model=TEE_MODEL, messages=MESSAGES)
    assert raw.headers["x-tee-verified"] == "true"
    assert raw.headers["x-tee-e2ee"] == "unavailable"


@pytest.mark.parametrize("mode", ["enforce", "flag", "monitor"])
def test_required_on_nanogpt_blocks_before_sending(stack: Stack, mode: str) -> None:
    url = stack.sidecar(upstream={"e2ee": "required"}, verification={"mode": mode})
    before = stack.call(lambda: stack.simulator.completions_served)
    with pytest.raises(openai.APIStatusError) as exc:
        client(url).chat.completions.create(model=TEE_MODEL, messages=MESSAGES)
    assert exc.value.response.headers["x-tee-failure"] == "e2ee.required_unavailable"
    assert exc.value.response.headers["x-tee-e2ee"] == "unavailable"
    assert stack.call(lambda: stack.simulator.completions_served) == before


def test_required_refuses_legacy_completions(stack: Stack) -> None:
    url = near(stack, "near-cloud", upstream={"e2ee": "required"})
    clear_gateway(stack)
    status, headers, _ = post(url + "/completions", {"model": CANONICAL_MODEL, "prompt": PROMPT})
    assert status == 502
    assert headers["x-tee-failure"] == "e2ee.required_unavailable"
    assert gateway_seen(stack) == []


def test_required_without_a_bound_key_blocks_in_flag_mode(stack: Stack) -> None:
    """Flag mode delivers unattested answers, but ``required`` still sends no plaintext."""
    url = stack.sidecar(profile="near-direct", fresh=True,
                        verification={"mode": "flag"}, upstream={"e2ee": "required"})
    set_faults(stack, serve_other_public_key=True)
    before = stack.call(lambda: stack.simulator.completions_served)
    with pytest.raises(openai.APIStatusError) as exc:
        client(url).chat.completions.create(model=CANONICAL_MODEL, messages=MESSAGES)
    assert exc.value.response.headers["x-tee-failure"] == "e2ee.required_unavailable"
    assert stack.call(lambda: stack.simulator.completions_served) == before


# --- attacks, each blocked in enforce mode with its code ---------------------------------------


def blocked_code(url: str, *, stream: bool = False) -> str:
    app = client(url)
    with pytest.raises(openai.APIStatusError) as exc:
        if stream:
            with app.chat.completions.with_streaming_response.create(
                    model=CANONICAL_MODEL, messages=MESSAGES, stream=True) as response:
                list(response.parse())
        else:
            app.chat.completions.create(model=CANONICAL_MODEL, messages=MESSAGES)
    return str(exc.value.response.headers["x-tee-failure"])


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("stream", [False, True])
def test_tampered_sealed_field_is_blocked(stack: Stack, algo: str, stream: bool) -> None:
    """A sealed field changed after the node signed: the signature over the sealed bytes says
    so first (the answer is opened only after it was checked)."""
    set_faults(stack, e2ee_tamper_field=True)
    assert blocked_code(near(stack, "near-cloud", algo), stream=stream) == (
        "signature.response_hash_mismatch")


def test_tampered_field_mid_relay_ends_the_stream_with_the_error(stack: Stack) -> None:
    set_faults(stack, e2ee_tamper_field=True)
    url = near(stack, "near-cloud", "ed25519", "relay")
    with pytest.raises(openai.APIError) as exc:
        with client(url).chat.completions.with_streaming_response.create(
                model=CANONICAL_MODEL, messages=MESSAGES, stream=True) as response:
            list(response.parse())
    assert "does not decrypt" in str(exc.value)


@pytest.mark.parametrize("mode", ["flag", "monitor"])
def test_undecryptable_answer_is_never_delivered(stack: Stack, mode: str) -> None:
    """Flag and monitor deliver unverified answers, but not ciphertext or injected text."""
    set_faults(stack, e2ee_tamper_field=True)
    assert blocked_code(near(stack, "near-cloud", mode=mode)) == "signature.response_hash_mismatch"


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_stripping_e2ee_is_blocked(stack: Stack, stream: bool) -> None:
    """Without E2EE headers the node answers in plaintext (signed: the answer does not open) and
    NEAR Cloud signs a plaintext stream with its gateway key (refused for an E2EE exchange)."""
    set_faults(stack, e2ee_strip_headers=True)
    assert blocked_code(near(stack, "near-cloud"), stream=stream) == (
        "e2ee.gateway_signature" if stream else "e2ee.plaintext_field")


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_swapping_the_client_key_is_blocked(stack: Stack, stream: bool) -> None:
    """The re-sealed answer opens, but it is not what the node signed."""
    set_faults(stack, e2ee_swap_client_key=True)
    code = blocked_code(near(stack, "near-cloud", "ed25519"), stream=stream)
    assert code == "signature.response_hash_mismatch"


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_kind_signature_on_e2ee_is_blocked(stack: Stack, stream: bool) -> None:
    set_faults(stack, e2ee_gateway_signs=True)
    assert blocked_code(near(stack, "near-cloud"), stream=stream) == "e2ee.gateway_signature"


def test_swapped_model_key_is_blocked_before_sending(stack: Stack) -> None:
    url = stack.sidecar(profile="near-cloud", fresh=True)
    set_faults(stack, serve_other_public_key=True)
    clear_gateway(stack)
    assert blocked_code(url) == "binding.public_key_mismatch"
    assert gateway_seen(stack) == []


# --- the signer rule, unit level -------------------------------------------------------------


def _attested(**roles: str) -> Any:
    from types import SimpleNamespace

    from sidecar.verify.signature import AttestedSigner
    signers = {key: AttestedSigner(key, "ed25519", role) for key, role in roles.items()}  # type: ignore[arg-type]
    return SimpleNamespace(report=SimpleNamespace(attested_signers=signers))


def _record(kind: str | None) -> Any:
    from types import SimpleNamespace
    return SimpleNamespace(signature_kind=kind)


def test_e2ee_signer_must_be_the_node_sealed_to() -> None:
    from sidecar.errors import VerificationFailed
    from sidecar.proxy.verdict import check_e2ee_signer

    attested = _attested(node_a="model", node_b="model", gw="gateway")
    check_e2ee_signer(_record("provider_tee"), "node_a", attested, "node_a")
    check_e2ee_signer(_record(None), "node_a", attested, "node_a")  # near-direct: no kind
    cases = [(_record("provider_tee"), "node_b", "e2ee.signer_not_recipient"),
             (_record("gateway"), "node_a", "e2ee.gateway_signature"),
             (_record(None), "gw", "e2ee.gateway_signature"),
             (_record("provider_tee"), "unknown", "e2ee.gateway_signature")]
    for record, signer, code in cases:
        with pytest.raises(VerificationFailed) as exc:
            check_e2ee_signer(record, signer, attested, "node_a")
        assert exc.value.code == code


def test_hostile_nesting_is_a_verification_failure_not_a_crash() -> None:
    from sidecar import e2ee
    from sidecar.errors import BadRequest, VerificationFailed
    from sidecar.proxy import app
    from sidecar.verify.sse import SseEvent

    pair = e2ee.ClientKeyPair.generate("ed25519")
    deep = b"[" * 900 + b"]" * 900
    answer = b'{"id":"x","choices":[{"message":{"content":"","extra":' + deep + b"}}]}"
    with pytest.raises(VerificationFailed) as exc:
        app._open_body(answer, pair)
    assert exc.value.code == "response.malformed"
    with pytest.raises(VerificationFailed) as exc:
        app._open_event(SseEvent(raw=b"", data=answer.replace(b"message", b"delta")), pair)
    assert exc.value.code == "response.malformed"
    sealing = app._Sealing("true", pair, e2ee.ClientKeyPair.generate("ed25519").public_hex, "k",
                           "ed25519")
    with pytest.raises((BadRequest, VerificationFailed)):
        app._sealed_body(None, b'{"model":"m","messages":[],"x":' + deep + b"}", sealing)  # type: ignore[arg-type]
    with pytest.raises(BadRequest) as bad:
        app._sealed_body(None, b'{"model":"m","messages":[],"temperature":NaN}', sealing)  # type: ignore[arg-type]
    assert bad.value.code == "request.invalid_json"


def test_status_page_lists_each_exchange_and_its_key(stack: Stack) -> None:
    from sidecar.proxy.admin import render_status_html, status_document

    url = near(stack, "near-cloud", "ecdsa")
    client(url).chat.completions.create(model=CANONICAL_MODEL, messages=MESSAGES)
    document = stack.call(lambda: status_document(stack.sidecar_state(url)))
    exchange = document["telemetry"]["exchanges"][0]
    assert (exchange["e2ee"], exchange["model_key"]) == ("true", node_public_key(stack, "ecdsa"))
    html = render_status_html(document)
    assert "Last exchanges" in html and node_public_key(stack, "ecdsa") in html
    assert PROMPT not in json.dumps(document) and EXPECTED_TEXT not in html
