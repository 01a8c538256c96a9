"""Every provider profile end to end: the official SDK -> tee-sidecar -> MITM -> the simulator.

Spec section 0.1 lists the profiles as the providers run them in late 2026. Each one verifies on
the genuine path, in buffer and relay mode, plain and streamed, with the request binding and the
signature kind the provider really produces; and each attack keeps failing, with its code, in
every profile.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from sidecar.receipts import decode_receipt_line
from sidecar.simulator.provider import CANONICAL_MODEL, MODEL_ALIAS, REDPILL_MODEL, TEE_MODEL
from tests.adversarial.conftest import assert_blocked, relay_verdict
from tests.adversarial.harness import EXPECTED_TEXT, MESSAGES, AdversarialStack, post

# The model an app names in each profile, and how the signed request hash binds the bytes sent.
PROFILES: dict[str, tuple[str, str]] = {
    "nanogpt": (TEE_MODEL, "model_renamed"),  # NanoGPT renames TEE/x on the way in
    "private-ml-sdk": (TEE_MODEL, "exact"),
    "near-cloud": (CANONICAL_MODEL, "exact"),
    "near-direct": (CANONICAL_MODEL, "exact"),
    "redpill": (REDPILL_MODEL, "exact"),
}
ANY_MODEL = {"only_known_models": False}  # aliases are not in the provider's model list


def sidecar(adv: AdversarialStack, profile: str, **sections: Any) -> str:
    sections.setdefault("attestation", {}).update(ANY_MODEL)
    return adv.sidecar(profile=profile, **sections)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="not-a-real-key", max_retries=0, timeout=20)


def receipts(adv: AdversarialStack, url: str) -> list[dict[str, Any]]:
    log = adv.sidecar_state(url).receipts
    assert log is not None
    lines = log.path.read_bytes().splitlines()
    return [vars(decode_receipt_line(line)[0]) for line in lines]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_plain_answer_verifies_in_every_profile(adv: AdversarialStack, profile: str,
                                                stream_mode: str) -> None:
    model, binding = PROFILES[profile]
    url = sidecar(adv, profile, verification={"stream": stream_mode})
    raw = client(url).chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    assert raw.headers["x-tee-verified"] == "true"
    assert raw.headers["x-tee-request-binding"] == binding
    assert raw.parse().choices[0].message.content == EXPECTED_TEXT


@pytest.mark.parametrize("profile", PROFILES)
def test_buffered_stream_verifies_in_every_profile(adv: AdversarialStack, profile: str) -> None:
    model, binding = PROFILES[profile]
    url = sidecar(adv, profile)
    raw = client(url).chat.completions.with_raw_response.create(model=model, messages=MESSAGES,
                                                                stream=True)
    assert raw.headers["x-tee-verified"] == "true"
    assert raw.headers["x-tee-request-binding"] == binding
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text == EXPECTED_TEXT


@pytest.mark.parametrize("profile", PROFILES)
def test_relayed_stream_verifies_in_every_profile(adv: AdversarialStack, profile: str) -> None:
    model, _ = PROFILES[profile]
    url = sidecar(adv, profile, verification={"stream": "relay"})
    stream = client(url).chat.completions.create(model=model, messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == EXPECTED_TEXT
    status, headers, body = post(url + "/chat/completions",
                                 {"model": model, "messages": MESSAGES, "stream": True})
    assert (status, headers["x-tee-verified"], relay_verdict(body)) == (200, "pending", "verified")


@pytest.mark.parametrize("profile", ["near-cloud", "near-direct"])
def test_async_sdk_streams_through_near(adv: AdversarialStack, profile: str) -> None:
    url = sidecar(adv, profile)

    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as c:
            stream = await c.chat.completions.create(model=CANONICAL_MODEL, messages=MESSAGES,
                                                     stream=True)
            return "".join([ch.choices[0].delta.content or "" async for ch in stream
                            if ch.choices])

    assert asyncio.run(run()) == EXPECTED_TEXT


# -- NEAR Cloud: both signature kinds, aliases, late storage, "unavailable" --------------------


@pytest.mark.parametrize("stream, options, e2ee, kind", [
    (False, None, "off", "provider_tee"),  # plain answers: the model node signs (spec 0.2)
    (True, None, "off", "gateway"),  # streams: NEAR Cloud's gateway signs by default since 2026-07
    (True, {"continuous_usage_stats": True}, "off", "provider_tee"),  # ... unless usage streams
    (True, None, "preferred", "provider_tee"),  # ... or the exchange is E2EE (spec 0.5)
])
@pytest.mark.parametrize("stream_mode", ["buffer", "relay"])
def test_near_cloud_signature_kinds_verify(adv: AdversarialStack, stream: bool,
                                           options: dict[str, Any] | None, e2ee: str, kind: str,
                                           stream_mode: str) -> None:
    url = sidecar(adv, "near-cloud", verification={"stream": stream_mode},
                  upstream={"e2ee": e2ee}, fresh=True)
    body: dict[str, Any] = {"model": CANONICAL_MODEL, "messages": MESSAGES, "stream": stream}
    if options:
        body["stream_options"] = options
    status, headers, answer = post(url + "/chat/completions", body)
    assert status == 200
    if stream and stream_mode == "relay":
        assert relay_verdict(answer) == "verified"
    else:
        assert headers["x-tee-verified"] == "true"
        assert headers["x-tee-served-model"] == CANONICAL_MODEL
    (receipt,) = receipts(adv, url)
    assert (receipt["verdict"], receipt["signature_kind"], receipt["served_model"]) == (
        "verified", kind, CANONICAL_MODEL)


def test_near_alias_is_sent_as_the_attested_canonical_id(adv: AdversarialStack) -> None:
    """The app names an alias; the sidecar sends the canonical id with ``x-no-aliasing`` so the
    node signs exactly the bytes sent, and the answer reaches the app unchanged."""
    url = sidecar(adv, "near-cloud", fresh=True)
    raw = client(url).chat.completions.with_raw_response.create(model=MODEL_ALIAS,
                                                                messages=MESSAGES)
    assert raw.headers["x-tee-verified"] == "true"
    assert raw.headers["x-tee-served-model"] == CANONICAL_MODEL
    answer = raw.parse()
    assert answer.choices[0].message.content == EXPECTED_TEXT
    assert "warning" not in json.loads(raw.http_response.content)  # no alias rewrite upstream
    ((sent, _),) = adv.call(lambda: adv.mitm.exchanges("completion"))
    assert json.loads(sent.body)["model"] == CANONICAL_MODEL
    assert sent.headers["x-no-aliasing"] == "true"
    assert MODEL_ALIAS not in sent.body.decode()


def test_near_signature_unavailable_is_final(adv: AdversarialStack) -> None:
    url = sidecar(adv, "near-cloud")
    adv.simulator.faults.signature_unavailable = "STREAM_DISCONNECTED"
    status, headers, body = post(url + "/chat/completions",
                                 {"model": CANONICAL_MODEL, "messages": MESSAGES})
    assert_blocked(status, headers, body, "signature.unavailable")
    assert b"STREAM_DISCONNECTED" in body
    # Final: one fetch, no retries (a 404 would have been retried).
    assert len(adv.call(lambda: adv.mitm.exchanges("signature"))) == 1


def test_near_signature_stored_late_is_fetched_again(adv: AdversarialStack) -> None:
    url = sidecar(adv, "near-cloud")
    status, headers, _ = post(url + "/chat/completions",
                              {"model": CANONICAL_MODEL, "messages": MESSAGES})
    assert (status, headers["x-tee-verified"]) == (200, "true")
    statuses = [up.status for _, up in adv.call(lambda: adv.mitm.exchanges("signature"))]
    assert statuses[0] == 404 and statuses[-1] == 200


def test_unknown_signer_is_attested_by_its_key(adv: AdversarialStack) -> None:
    """A genuine signature by a key the cache lacks (another node, a rotation): one attestation
    that asks for that very key (``signing_address=``, spec 0.4), then the verdict."""
    # Without E2EE: a sealed request is routed to the node whose key it was sealed to.
    url = sidecar(adv, "near-direct", upstream={"e2ee": "off"}, fresh=True)
    assert post(url + "/chat/completions",
                {"model": CANONICAL_MODEL, "messages": MESSAGES})[1]["x-tee-verified"] == "true"
    adv.simulator.faults.rotate_key = True
    status, headers, _ = post(url + "/chat/completions",
                              {"model": CANONICAL_MODEL, "messages": MESSAGES})
    assert (status, headers["x-tee-verified"]) == (200, "true")
    attestations = adv.call(lambda: adv.mitm.exchanges("attestation"))
    assert len(attestations) == 2
    asked = attestations[-1][0].query.get("signing_address", "")
    assert asked.lower() == headers["x-tee-signing-address"].lower()


# -- attacks, in every profile ------------------------------------------------------------------

# fault -> the failure code it must produce, for a plain answer and a stream.
COMPLETION_ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "tamper_response": ({"tamper_response": True}, "signature.response_hash_mismatch"),
    "sign_with_other_key": ({"sign_with_other_key": True}, "signature.address_not_attested"),
    "alter_request": ({"alter_request": True}, "signature.request_hash_mismatch"),
    "wrong_text_hashes": ({"wrong_text_hashes": True}, "signature.request_hash_mismatch"),
    "signature_missing": ({"signature_missing": True}, "signature.missing"),
}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("attack", COMPLETION_ATTACKS)
@pytest.mark.parametrize("stream", [False, True])
def test_completion_attacks_fail_in_every_profile(adv: AdversarialStack, profile: str,
                                                  attack: str, stream: bool) -> None:
    model, _ = PROFILES[profile]
    url = sidecar(adv, profile)
    faults, code = COMPLETION_ATTACKS[attack]
    for name, value in faults.items():
        setattr(adv.simulator.faults, name, value)
    status, headers, body = post(url + "/chat/completions",
                                 {"model": model, "messages": MESSAGES, "stream": stream})
    assert_blocked(status, headers, body, code)


@pytest.mark.parametrize("profile", PROFILES)
def test_cut_stream_fails_in_every_profile(adv: AdversarialStack, profile: str) -> None:
    model, _ = PROFILES[profile]
    url = sidecar(adv, profile)
    adv.simulator.faults.cut_stream = True
    status, headers, body = post(url + "/chat/completions",
                                 {"model": model, "messages": MESSAGES, "stream": True})
    assert_blocked(status, headers, body, "stream.truncated")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("fault, code", [
    ("stale_nonce", "binding.nonce_mismatch"),
    ("report_binds_other_address", "binding.signing_key_mismatch"),
])
def test_evidence_attacks_fail_in_every_profile(adv: AdversarialStack, profile: str, fault: str,
                                                code: str) -> None:
    model, _ = PROFILES[profile]
    setattr(adv.simulator.faults, fault, True)
    url = sidecar(adv, profile, fresh=True)
    status, headers, body = post(url + "/chat/completions",
                                 {"model": model, "messages": MESSAGES})
    assert_blocked(status, headers, body, code)


@pytest.mark.parametrize("profile, fault, code", [
    # A genuine node signature whose text names another model than the node is attested for
    # (NEAR Cloud's node signs streams only with continuous usage: see the next test).
    ("near-direct", {"text_model": "other-org/Cheaper-Model"}, "signature.text_model_mismatch"),
    ("nanogpt", {"text_model": "other-org/Cheaper-Model"}, "signature.text_model_mismatch"),
    # A gateway-kind record signed by the model key, a provider_tee one by the gateway key.
    ("near-cloud", {"swap_signature_kind": True}, "signature.kind_key_mismatch"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_model_and_kind_attacks(adv: AdversarialStack, profile: str, fault: dict[str, Any],
                                code: str, stream: bool) -> None:
    model, _ = PROFILES[profile]
    url = sidecar(adv, profile)
    for name, value in fault.items():
        setattr(adv.simulator.faults, name, value)
    status, headers, body = post(url + "/chat/completions",
                                 {"model": model, "messages": MESSAGES, "stream": stream})
    assert_blocked(status, headers, body, code)


@pytest.mark.parametrize("stream_options", [None, {"continuous_usage_stats": True}])
def test_near_cloud_node_text_naming_another_model_fails(adv: AdversarialStack,
                                                         stream_options: dict[str, Any] | None
                                                         ) -> None:
    url = sidecar(adv, "near-cloud")
    adv.simulator.faults.text_model = "other-org/Cheaper-Model"
    body: dict[str, Any] = {"model": CANONICAL_MODEL, "messages": MESSAGES,
                            "stream": stream_options is not None}
    if stream_options:
        body["stream_options"] = stream_options
    assert_blocked(*post(url + "/chat/completions", body), "signature.text_model_mismatch")


def test_a_rename_is_refused_where_the_provider_does_not_rename(adv: AdversarialStack,
                                                                tmp_path: Path) -> None:
    """With ``model_renamed = "refuse"`` NanoGPT's renamed request hash is a failure of its own."""
    url = sidecar(adv, "nanogpt", verification={"model_renamed": "refuse"})
    status, headers, body = post(url + "/chat/completions",
                                 {"model": TEE_MODEL, "messages": MESSAGES})
    assert_blocked(status, headers, body, "signature.request_model_renamed")
    assert headers["x-tee-request-binding"] == "signature.request_model_renamed"
