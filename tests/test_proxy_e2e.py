"""End to end: the official ``openai`` SDK -> tee-sidecar -> the simulated TEE provider.

Every attack is blocked in enforce mode, delivered-but-flagged in flag mode, and delivered in
monitor mode; the genuine path verifies in all three, sync and async, streamed and not.
"""

from __future__ import annotations

import json
from typing import Any

import urllib.error
import urllib.request
import openai
import pytest

from tests.stack import Stack
from tests.conftest import PLAIN_MODEL, TEE_MODEL

MESSAGES = [{"role": "user", "content": "Tell me a secret about enclaves."}]
EXPECTED_TEXT = ("Confidential inference runs inside an attested enclave, and every answer is "
                 "signed by its key.")
MODES = ["enforce", "flag", "monitor"]


def post(url: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """A raw POST (no SDK), to see the exact bytes the sidecar returns."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="not-a-real-key", max_retries=0, timeout=30)


def set_faults(stack: Stack, **faults: Any) -> None:
    def apply() -> None:
        for name, value in faults.items():
            setattr(stack.simulator.faults, name, value)
    stack.call(apply)


# --- the genuine path ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_plain_chat_verifies_in_every_mode(stack: Stack, mode: str, stream_mode: str) -> None:
    url = stack.sidecar(verification={"mode": mode, "stream": stream_mode})
    raw = client(url).chat.completions.with_raw_response.create(model=TEE_MODEL, messages=MESSAGES)
    assert raw.headers["x-tee-verified"] == "true"
    assert raw.parse().choices[0].message.content == EXPECTED_TEXT
    if mode != "monitor":
        attested = stack.sidecar_state(url).cache.peek(TEE_MODEL)
        assert attested is not None
        assert raw.headers["x-tee-signing-address"] in attested.report.attested_keys


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_streamed_chat_verifies_in_every_mode(stack: Stack, mode: str, stream_mode: str) -> None:
    url = stack.sidecar(verification={"mode": mode, "stream": stream_mode})
    with client(url).chat.completions.with_streaming_response.create(
        model=TEE_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as response:
        expected = "pending" if stream_mode == "relay" else "true"
        assert response.headers["x-tee-verified"] == expected
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED_TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 15


def test_relay_stream_ends_with_verified_comment_before_done(stack: Stack) -> None:
    url = stack.sidecar(verification={"stream": "relay"})
    body = {"model": TEE_MODEL, "messages": MESSAGES, "stream": True}
    _, headers, content = post(url + "/chat/completions", body)
    assert headers["x-tee-verified"] == "pending"
    assert content.endswith(b": x-tee-verified true\n\ndata: [DONE]\n\n")


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions_verify(stack: Stack, stream: bool) -> None:
    url = stack.sidecar()
    c = client(url)
    if stream:
        with c.completions.with_streaming_response.create(
            model=TEE_MODEL, prompt="Say hi", stream=True, max_tokens=3
        ) as response:
            assert response.headers["x-tee-verified"] == "true"
            text = "".join(chunk.choices[0].text for chunk in response.parse() if chunk.choices)
    else:
        raw = c.completions.with_raw_response.create(model=TEE_MODEL, prompt="Say hi", max_tokens=3)
        assert raw.headers["x-tee-verified"] == "true"
        text = raw.parse().choices[0].text
    assert text == "Confidential inference runs"


@pytest.mark.parametrize("mode", MODES)
async def test_async_sdk_streamed_and_plain(stack: Stack, mode: str) -> None:
    url = stack.sidecar(verification={"mode": mode})
    async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as c:
        raw = await c.chat.completions.with_raw_response.create(model=TEE_MODEL, messages=MESSAGES)
        assert raw.headers["x-tee-verified"] == "true"
        stream = await c.chat.completions.create(model=TEE_MODEL, messages=MESSAGES, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream
                        if chunk.choices])
    assert text == EXPECTED_TEXT


def test_models_pass_through_marked_unverified(stack: Stack) -> None:
    raw = client(stack.sidecar()).models.with_raw_response.list()
    assert raw.headers["x-tee-verified"] == "false"
    assert TEE_MODEL in [m.id for m in raw.parse().data]


def test_model_retrieve_is_served_from_the_list(stack: Stack) -> None:
    """The SDK's ``models.retrieve`` (``GET /v1/models/{id}``, ids with ``/``) works; an unknown
    id is an OpenAI 404."""
    raw = client(stack.sidecar()).models.with_raw_response.retrieve(TEE_MODEL)
    assert raw.headers["x-tee-verified"] == "false"
    assert raw.parse().id == TEE_MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client(stack.sidecar()).models.retrieve("TEE/no-such-model")
    assert caught.value.code == "request.model_not_found"


def test_unknown_v1_path_is_an_openai_404(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(stack.sidecar()).embeddings.create(model=TEE_MODEL, input="x")
    assert info.value.response.headers["x-tee-verified"] == "false"
    assert info.value.body["code"] == "request.unknown_path"  # type: ignore[index]


def test_attestation_runs_once_per_model_under_concurrency(stack: Stack) -> None:
    import concurrent.futures

    url = stack.sidecar(fresh=True)
    c = client(url)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: c.chat.completions.with_raw_response.create(
            model=TEE_MODEL, messages=MESSAGES).headers["x-tee-verified"], range(16)))
    assert results == ["true"] * 16
    assert stack.sidecar_state(url).cache.attestations_run == 1


def test_app_authorization_is_replaced_by_the_configured_key(stack: Stack) -> None:
    # The simulator accepts any bearer; a sidecar with no key sends none, and is refused.
    url = stack.sidecar(upstream={"api_key": ""}, attestation={"only_known_models": False},
                        fresh=True)
    with pytest.raises(openai.APIStatusError) as info:
        client(url).chat.completions.create(model=TEE_MODEL, messages=MESSAGES)
    # The attestation request is the first to go out without a key: refused before any prompt.
    _assert_blocked(info.value, "attestation.refused")


# --- attacks: each blocked in enforce, flagged in flag, delivered in monitor --------------------

# (fault fields, failure code, applies to streams only)
COMPLETION_ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "response_body_altered_by_one_byte": ({"tamper_response": True},
                                          "signature.response_hash_mismatch"),
    "request_altered_in_transit": ({"alter_request": True}, "signature.request_hash_mismatch"),
    "signature_from_other_key": ({"sign_with_other_key": True}, "signature.address_not_attested"),
    "signature_missing": ({"signature_missing": True}, "signature.missing"),
    "signature_endpoint_failing": ({"signature_status": 500}, "signature.fetch_failed"),
    "text_with_wrong_hashes": ({"wrong_text_hashes": True}, "signature.request_hash_mismatch"),
}


def _complete(url: str, stream: bool) -> tuple[dict[str, str], str]:
    c = client(url)
    if stream:
        with c.chat.completions.with_streaming_response.create(
            model=TEE_MODEL, messages=MESSAGES, stream=True
        ) as response:
            text = "".join(ch.choices[0].delta.content or "" for ch in response.parse() if ch.choices)
            return dict(response.headers), text
    raw = c.chat.completions.with_raw_response.create(model=TEE_MODEL, messages=MESSAGES)
    return dict(raw.headers), raw.parse().choices[0].message.content or ""


def _assert_blocked(exc: openai.APIStatusError, code: str) -> None:
    assert exc.status_code == 502
    assert exc.response.headers["x-tee-verified"] == "false"
    assert exc.response.headers["x-tee-failure"] == code
    assert exc.response.headers["x-should-retry"] == "false"
    body = exc.response.json()["error"]
    assert body["type"] == "tee_verification_error"
    assert body["code"] == code
    assert EXPECTED_TEXT not in exc.response.text


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("attack", sorted(COMPLETION_ATTACKS))
def test_attack_blocked_in_enforce(stack: Stack, attack: str, stream: bool) -> None:
    faults, code = COMPLETION_ATTACKS[attack]
    url = stack.sidecar()
    set_faults(stack, **faults)
    with pytest.raises(openai.APIStatusError) as info:
        _complete(url, stream)
    _assert_blocked(info.value, code)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("attack", sorted(COMPLETION_ATTACKS))
def test_attack_flagged_in_flag_mode(stack: Stack, attack: str, stream: bool) -> None:
    faults, code = COMPLETION_ATTACKS[attack]
    url = stack.sidecar(verification={"mode": "flag"})
    set_faults(stack, **faults)
    headers, _ = _complete(url, stream)
    assert headers["x-tee-verified"] == "false"
    assert headers["x-tee-failure"] == code


@pytest.mark.parametrize("attack", sorted(COMPLETION_ATTACKS))
def test_attack_delivered_in_monitor_mode(stack: Stack, attack: str) -> None:
    faults, _ = COMPLETION_ATTACKS[attack]
    url = stack.sidecar(verification={"mode": "monitor"})
    set_faults(stack, **faults)
    headers, _ = _complete(url, False)
    assert headers["x-tee-verified"] == "false"
    assert "x-tee-failure" not in headers


def test_signature_replayed_from_another_completion(stack: Stack) -> None:
    url = stack.sidecar()
    _complete(url, False)  # a genuine completion whose signature the attacker replays
    set_faults(stack, replay_signature=True)
    with pytest.raises(openai.APIStatusError) as info:
        _complete(url, False)
    _assert_blocked(info.value, "signature.response_hash_mismatch")
    flag_url = stack.sidecar(verification={"mode": "flag"})
    headers, _ = _complete(flag_url, False)
    assert headers["x-tee-failure"] == "signature.response_hash_mismatch"


def test_signature_written_late_is_found_by_retry(stack: Stack) -> None:
    set_faults(stack, signature_late_polls=2)
    headers, _ = _complete(stack.sidecar(), False)
    assert headers["x-tee-verified"] == "true"


def test_stream_cut_before_done(stack: Stack) -> None:
    set_faults(stack, cut_stream=True)
    with pytest.raises(openai.APIStatusError) as info:
        _complete(stack.sidecar(), True)
    _assert_blocked(info.value, "stream.truncated")
    headers, _ = _complete(stack.sidecar(verification={"mode": "flag"}), True)
    assert headers["x-tee-failure"] == "stream.truncated"


def test_relay_failure_replaces_done_with_an_error_event(stack: Stack) -> None:
    url = stack.sidecar(verification={"stream": "relay"})
    set_faults(stack, tamper_response=True)
    with pytest.raises(openai.APIError, match="signed response hash"):
        _complete(url, True)
    body = {"model": TEE_MODEL, "messages": MESSAGES, "stream": True}
    _, _, raw = post(url + "/chat/completions", body)
    assert b"[DONE]" not in raw
    last = raw.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == \
        "signature.response_hash_mismatch"


# Attestation attacks need a sidecar that has not attested yet (a fresh cache).
ATTESTATION_ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "report_data_binds_another_address": ({"report_binds_other_address": True},
                                          "binding.signing_key_mismatch"),
    "report_data_binds_a_stale_nonce": ({"stale_nonce": True}, "binding.nonce_mismatch"),
    "json_signing_address_disagrees": (
        {"evidence": {"json_address": "0x" + "11" * 20}}, "binding.signing_key_mismatch"),
    "attestation_endpoint_failing": ({"attestation_status": 503}, "attestation.fetch_failed"),
}


@pytest.mark.parametrize("attack", sorted(ATTESTATION_ATTACKS))
def test_attestation_attack_blocks_before_the_prompt_leaves(stack: Stack, attack: str) -> None:
    faults, code = ATTESTATION_ATTACKS[attack]
    set_faults(stack, **faults)
    served_before = stack.call(lambda: stack.simulator.completions_served)
    with pytest.raises(openai.APIStatusError) as info:
        _complete(stack.sidecar(fresh=True), False)
    _assert_blocked(info.value, code)
    assert stack.call(lambda: stack.simulator.completions_served) == served_before


@pytest.mark.parametrize("attack", sorted(ATTESTATION_ATTACKS))
def test_attestation_attack_flagged_in_flag_mode(stack: Stack, attack: str) -> None:
    faults, code = ATTESTATION_ATTACKS[attack]
    set_faults(stack, **faults)
    headers, text = _complete(stack.sidecar(verification={"mode": "flag"}, fresh=True), False)
    assert headers["x-tee-verified"] == "false"
    assert headers["x-tee-failure"] == code
    assert text == EXPECTED_TEXT


def test_key_rotation_reattests_once_and_verifies(stack: Stack) -> None:
    url = stack.sidecar(fresh=True)
    assert _complete(url, False)[0]["x-tee-verified"] == "true"
    set_faults(stack, rotate_key=True)
    headers, _ = _complete(url, False)
    assert headers["x-tee-verified"] == "true"
    assert stack.sidecar_state(url).cache.attestations_run == 2


def test_several_nodes_each_attested(tmp_path: Any) -> None:
    s = Stack(tmp_path, nodes=3)
    try:
        url = s.sidecar()
        signers = {_complete(url, False)[0]["x-tee-signing-address"] for _ in range(6)}
        assert len(signers) == 3
        attested = s.sidecar_state(url).cache.peek(TEE_MODEL)
        assert attested is not None and signers == set(attested.report.attested_keys)
        assert s.sidecar_state(url).cache.attestations_run == 1
    finally:
        s.close()


@pytest.mark.parametrize("status", [401, 429, 500])
def test_upstream_errors_reach_the_app_unverified(stack: Stack, status: int) -> None:
    set_faults(stack, completion_status=status)
    with pytest.raises(openai.APIStatusError) as info:
        _complete(stack.sidecar(), False)
    assert info.value.status_code == status
    assert info.value.response.headers["x-tee-verified"] == "false"
    error = info.value.response.json()["error"]
    assert error["message"] == f"tee-sidecar: provider answered HTTP {status}: simulated upstream failure"
    assert error["code"] == f"upstream.http_{status}"
    assert error["upstream_code"] == "simulated"


def test_model_without_attestation_is_refused_by_default(stack: Stack) -> None:
    served_before = stack.call(lambda: stack.simulator.completions_served)
    with pytest.raises(openai.APIStatusError) as info:
        client(stack.sidecar()).chat.completions.create(model=PLAIN_MODEL, messages=MESSAGES)
    _assert_blocked(info.value, "attestation.unavailable")
    assert stack.call(lambda: stack.simulator.completions_served) == served_before


@pytest.mark.parametrize("body, code", [
    (b"{not json", "request.invalid_json"),
    (b"[1, 2]", "request.invalid_json"),
    (b'{"messages": []}', "request.no_model"),
])
def test_bad_request_bodies_get_clear_400s(stack: Stack, body: bytes, code: str) -> None:
    status, _, content = post(stack.sidecar() + "/chat/completions", body)
    assert status == 400
    assert json.loads(content)["error"]["code"] == code


def test_private_ml_sdk_contract(stack: Stack) -> None:
    """The /v1/attestation/report and /v1/signature/{id} paths (NEAR AI, RedPill, Phala)."""
    url = stack.sidecar(upstream={"provider": "private-ml-sdk", "base_url": stack.simulator_url})
    for stream in (False, True):
        headers, text = _complete(url, stream)
        assert headers["x-tee-verified"] == "true" and text == EXPECTED_TEXT


def test_near_shaped_report_with_model_attestations(stack: Stack) -> None:
    set_faults(stack, evidence={"shape": "near"})
    headers, _ = _complete(stack.sidecar(fresh=True), False)
    assert headers["x-tee-verified"] == "true"


def test_ed25519_signing(stack: Stack) -> None:
    url = stack.sidecar(verification={"signing_algo": "ed25519"})
    headers, _ = _complete(url, False)
    assert headers["x-tee-verified"] == "true"
    assert len(headers["x-tee-signing-address"]) == 64


@pytest.mark.parametrize("status", [201, 203, 206])
def test_a_2xx_other_than_200_never_delivers_its_body(stack: Stack, status: int) -> None:
    """The SDK treats every 2xx as success: such an answer must not pass as an upstream error."""
    set_faults(stack, completion_status=status)
    with pytest.raises(openai.APIStatusError) as info:
        _complete(stack.sidecar(), False)
    _assert_blocked(info.value, "upstream.unexpected_status")
    assert "simulated upstream failure" not in info.value.response.text


def _policy_file(tmp_path: Any, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("status, code", [(429, "attestation.refused"),
                                          (404, "attestation.unavailable")])
def test_allow_unattested_never_downgrades_a_model_the_policy_claims_for_tee(
        stack: Stack, tmp_path: Any, status: int, code: str) -> None:
    policy = _policy_file(tmp_path, 'strict = true\nallow_unattested_models = true\n'
                                    '[models."TEE/*"]\non_failure = "block"\n')
    set_faults(stack, attestation_status=status)
    served_before = stack.call(lambda: stack.simulator.completions_served)
    with pytest.raises(openai.APIStatusError) as info:
        _complete(stack.sidecar(policy={"file": policy}, fresh=True), False)
    _assert_blocked(info.value, code)
    assert stack.call(lambda: stack.simulator.completions_served) == served_before


@pytest.mark.parametrize("defaults", ["[defaults]\nrequire_tdx = true\n", ""],
                         ids=["defaults-require-tdx", "built-in-defaults"])
def test_allow_unattested_respects_the_defaults_of_a_non_strict_policy(
        stack: Stack, tmp_path: Any, defaults: str) -> None:
    # Issue 11, finding 5: a model no entry names gets [defaults]; if that requires TDX, a 404
    # from the attestation endpoint must block it, as it does under [models."TEE/*"].
    policy = _policy_file(tmp_path, "allow_unattested_models = true\n" + defaults)
    set_faults(stack, attestation_status=404)
    served_before = stack.call(lambda: stack.simulator.completions_served)
    with pytest.raises(openai.APIStatusError) as info:
        _complete(stack.sidecar(policy={"file": policy}, fresh=True), False)
    _assert_blocked(info.value, "attestation.unavailable")
    assert stack.call(lambda: stack.simulator.completions_served) == served_before


def test_every_use_of_allow_unattested_warns(tmp_path: Any) -> None:
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from sidecar.proxy.app import _may_pass_unattested
    from sidecar.verify.policy import PolicySet

    state: Any = SimpleNamespace(policies=PolicySet(strict=True, allow_unattested_models=True))
    with capture_logs() as logs:
        assert _may_pass_unattested(state, PLAIN_MODEL)
        assert _may_pass_unattested(state, PLAIN_MODEL)
    warnings = [e for e in logs if e["event"] == "unsafe_unattested_model_passed"]
    assert len(warnings) == 2 and warnings[0]["log_level"] == "warning"


def test_allow_unattested_lets_an_unclaimed_model_through_flagged(stack: Stack,
                                                                   tmp_path: Any) -> None:
    policy = _policy_file(tmp_path, 'strict = true\nallow_unattested_models = true\n'
                                    '[models."TEE/*"]\non_failure = "block"\n')
    raw = client(stack.sidecar(policy={"file": policy})).chat.completions.with_raw_response.create(
        model=PLAIN_MODEL, messages=MESSAGES)
    assert raw.headers["x-tee-verified"] == "false"
    assert raw.headers["x-tee-failure"] == "attestation.unavailable"
