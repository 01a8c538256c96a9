"""Each simulator profile over HTTP, checked with independent code (eth-account, cryptography,
raw quote offsets), never ``sidecar.verify``: records verify over the exact bytes, kinds and text
forms are right, aliases behave as NEAR's do, storage is late, "unavailable" is a 200, and the
reports have the keys of the real NEAR report in ``tests/assets/near``."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
# eth-account (through eth-abi's parser) raises the interpreter's recursion limit to 100000 on
# import; a later test that feeds the sidecar deeply nested JSON then overflows the C stack and
# crashes the whole run instead of meeting RecursionError. Put the limit back.
_RECURSION_LIMIT = sys.getrecursionlimit()
from eth_account import Account  # noqa: E402
from eth_account.messages import encode_defunct  # noqa: E402
from eth_utils import keccak  # noqa: E402

sys.setrecursionlimit(_RECURSION_LIMIT)

from sidecar.simulator.evidence import PLACEHOLDER_TLS_SPKI_SHA256, actions_hash
from sidecar.simulator.provider import (
    CANONICAL_MODEL,
    MODEL_ALIAS,
    NANOGPT_UPSTREAM_MODEL,
    PROFILE_PREFIX,
    REDPILL_MODEL,
    TEE_MODEL,
    SimulatedProvider,
)
from sidecar.simulator.server import build_simulator
from tests.stack import Stack, simulator_settings

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]
ASSETS = Path(__file__).parent / "assets" / "near"
REAL = json.loads((ASSETS / "cloud_report_gateway_and_model.json").read_text())
REAL_STREAM = json.loads((ASSETS / "direct_stream_exchange.json").read_text())
AUTH = {"Authorization": "Bearer sk-test"}
NONCE = "9a01356cb451dc2c3c0ce9a195245a0be984a3f73617f55f87913fc2f059cba7"
# TDX quote v4: 48-byte header, then the TD report body (spec section 5).
REPORT_DATA_AT, MR_CONFIG_ID_AT = 48 + 520, 48 + 184


@pytest.fixture
async def sim(aiohttp_client: ClientFactory) -> AsyncIterator[tuple[Client, SimulatedProvider]]:
    app, provider = build_simulator(nodes=2)
    yield await aiohttp_client(app), provider


def quote_report_data(quote_hex: str) -> bytes:
    return bytes.fromhex(quote_hex)[REPORT_DATA_AT:REPORT_DATA_AT + 64]


def verify_record(record: dict[str, Any]) -> None:
    """The record's signature verifies over its text, for its own signing_address."""
    if record["signing_algo"] == "ecdsa":
        recovered = Account.recover_message(encode_defunct(text=record["text"]),
                                            signature=record["signature"])
        assert recovered.lower() == record["signing_address"].lower()
    else:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(record["signing_address"])).verify(
            bytes.fromhex(record["signature"]), record["text"].encode())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def complete(client: Client, prefix: str, body: dict[str, Any], headers: dict[str, str] | None = None
                   ) -> tuple[bytes, bytes, Any]:
    raw = json.dumps(body, separators=(",", ":")).encode()
    response = await client.post(prefix + "/v1/chat/completions", data=raw,
                                 headers={**AUTH, "Content-Type": "application/json", **(headers or {})})
    assert response.status == 200, await response.text()
    return raw, await response.read(), response


def chat_id_of(received: bytes) -> str:
    if received.startswith(b"data: "):
        return str(json.loads(received.split(b"\n\n")[0][6:])["id"])
    return str(json.loads(received)["id"])


async def fetch_signature(client: Client, prefix: str, chat_id: str, algo: str = "ecdsa",
                          *, late: bool = False) -> dict[str, Any]:
    url = f"{prefix}/v1/signature/{chat_id}?signing_algo={algo}"
    if late:  # spec 0.3: stored after the answer: the first fetch is a 404
        assert (await client.get(url, headers=AUTH)).status == 404
    response = await client.get(url, headers=AUTH)
    assert response.status == 200
    record: dict[str, Any] = await response.json()
    verify_record(record)
    return record


def message(**extra: Any) -> dict[str, Any]:
    return {"model": CANONICAL_MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


# -- near-direct ----------------------------------------------------------------------------------

async def test_near_direct_stream_is_node_signed_three_part(sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    sent, received, _ = await complete(client, "/near-direct", message(stream=True))
    record = await fetch_signature(client, "/near-direct", chat_id_of(received))
    assert "signature_kind" not in record
    assert record["text"] == f"{CANONICAL_MODEL}:{sha(sent)}:{sha(received)}"
    assert record["signing_address"] == provider.nodes[0].address("ecdsa")
    # Shaped like the real stream: same chunk keys, compact sorted JSON, usage chunk, 32-hex id.
    real = base64.b64decode(REAL_STREAM["response_body_b64"]).split(b"\n\n")
    ours = received.split(b"\n\n")
    for mine, theirs in ((ours[0], real[0]), (ours[1], real[1]), (ours[-4], real[-4]), (ours[-3], real[-3])):
        a, b = json.loads(mine[6:]), json.loads(theirs[6:])
        assert a.keys() == b.keys()
        assert [c.keys() for c in a["choices"]] == [c.keys() for c in b["choices"]]
        assert mine[6:] == json.dumps(a, separators=(",", ":"), sort_keys=True).encode()
    assert json.loads(ours[-3][6:])["usage"].keys() == json.loads(real[-3][6:])["usage"].keys()
    assert ours[-2:] == [b"data: [DONE]", b""]
    assert len(chat_id_of(received)) == 32


async def test_near_direct_body_is_compact_sorted_and_ed25519_verifies(
        sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    sent, received, _ = await complete(client, "/near-direct", message())
    assert received == json.dumps(json.loads(received), separators=(",", ":"), sort_keys=True).encode()
    record = await fetch_signature(client, "/near-direct", chat_id_of(received), "ed25519")
    assert record["text"] == f"{CANONICAL_MODEL}:{sha(sent)}:{sha(received)}"
    assert record["signing_address"] == provider.nodes[0].address("ed25519")


async def test_near_direct_report(sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    response = await client.get(f"/near-direct/v1/attestation/report?model={CANONICAL_MODEL}"
                                f"&nonce={NONCE}&signing_algo=ecdsa")  # no key needed
    assert response.status == 200
    report = await response.json()
    real_model = REAL["model_attestations"][0]
    assert set(report) == set(real_model) - {"ohttp_attestation", "ohttp_key_config"} | {"all_attestations"}
    assert report["all_attestations"] == [{k: v for k, v in report.items() if k != "all_attestations"}]
    assert report["model_name"] == CANONICAL_MODEL and "report_data" not in report
    assert quote_report_data(report["intel_quote"]) == (
        bytes.fromhex(report["signing_address"][2:]) + bytes(12) + bytes.fromhex(NONCE))
    assert keccak(bytes.fromhex(report["signing_public_key"]))[-20:].hex() == report["signing_address"][2:].lower()
    # Default algorithm is ed25519 (spec 0.4); signing_address= selects the node or 404s.
    default = await (await client.get(f"/near-direct/v1/attestation/report?nonce={NONCE}")).json()
    assert default["signing_algo"] == "ed25519" and default["signing_public_key"] == default["signing_address"]
    second = provider.nodes[1].address("ecdsa")
    chosen = await client.get(f"/near-direct/v1/attestation/report?nonce={NONCE}&signing_algo=ecdsa"
                              f"&signing_address={second.lower()}")
    assert (await chosen.json())["signing_address"] == second
    missing = await client.get(f"/near-direct/v1/attestation/report?nonce={NONCE}&signing_algo=ecdsa"
                               f"&signing_address=0x{'00' * 20}")
    assert missing.status == 404


# -- near-cloud -----------------------------------------------------------------------------------

async def test_near_cloud_report_shape_and_bindings(sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    url = f"/near-cloud/v1/attestation/report?model={CANONICAL_MODEL}&nonce={NONCE}&signing_algo=ecdsa"
    assert (await client.get(url)).status == 401  # API key required since 2026-07
    bad = await client.get(url.replace(NONCE, NONCE[:-2]), headers=AUTH)
    assert bad.status == 400
    report = await (await client.get(url, headers=AUTH)).json()
    assert set(report) == {"gateway_attestation", "model_attestations"}
    gateway, (model,) = report["gateway_attestation"], report["model_attestations"]
    real_gateway, real_model = REAL["gateway_attestation"], REAL["model_attestations"][0]
    assert set(gateway) == set(real_gateway)
    assert set(gateway["info"]) <= set(real_gateway["info"])
    assert set(model) == set(real_model) - {"ohttp_attestation", "ohttp_key_config"}
    assert set(model["info"]) <= set(real_model["info"])
    assert isinstance(gateway["event_log"], str) and isinstance(model["event_log"], list)
    assert gateway["signing_address"] == provider.gateway.address("ecdsa")
    assert model["signing_address"] == provider.nodes[0].address("ecdsa")
    for entry in (gateway, model):
        assert entry["request_nonce"] == NONCE
        assert quote_report_data(entry["intel_quote"]) == (
            bytes.fromhex(entry["signing_address"][2:]) + bytes(12) + bytes.fromhex(NONCE))
    manager = model["compose_manager_attestation"]
    assert set(manager) == set(real_model["compose_manager_attestation"])
    assert isinstance(manager["event_log"], str)
    digest = hashlib.sha256(json.dumps(manager["actions"], separators=(",", ":"), sort_keys=True,
                                       ensure_ascii=False).encode()).digest()
    assert manager["actions_hash"] == digest.hex()
    assert quote_report_data(manager["quote"]) == digest + bytes.fromhex(NONCE)
    quote, node_quote = bytes.fromhex(manager["quote"]), bytes.fromhex(model["intel_quote"])
    assert quote[MR_CONFIG_ID_AT:MR_CONFIG_ID_AT + 48] == node_quote[MR_CONFIG_ID_AT:MR_CONFIG_ID_AT + 48]
    assert quote[MR_CONFIG_ID_AT:MR_CONFIG_ID_AT + 33] == b"\x01" + hashlib.sha256(
        model["info"]["tcb_info"]["app_compose"].encode()).digest()
    assert json.loads(manager["event_log"]) != model["event_log"]  # its own log


@pytest.mark.parametrize(("mode", "hash_ok", "nonce_ok"), [
    ("field_order", True, True), ("tampered_actions", False, True), ("other_nonce", True, False)])
async def test_near_cloud_compose_manager_knobs(sim: tuple[Client, SimulatedProvider], mode: str,
                                                hash_ok: bool, nonce_ok: bool) -> None:
    client, provider = sim
    provider.faults.evidence = {"compose_manager": mode}
    report = await (await client.get(f"/near-cloud/v1/attestation/report?model={CANONICAL_MODEL}"
                                     f"&nonce={NONCE}", headers=AUTH)).json()
    manager = report["model_attestations"][0]["compose_manager_attestation"]
    form = actions_hash(manager["actions"], sorted_keys=mode != "field_order")
    assert (form.hex() == manager["actions_hash"]) is hash_ok
    assert (quote_report_data(manager["quote"])[32:] == bytes.fromhex(NONCE)) is nonce_ok
    provider.faults.evidence = {"compose_manager": "absent"}
    report = await (await client.get(f"/near-cloud/v1/attestation/report?model={CANONICAL_MODEL}"
                                     f"&nonce={NONCE}", headers=AUTH)).json()
    assert "compose_manager_attestation" not in report["model_attestations"][0]


async def test_near_cloud_knob_target_breaks_only_the_gateway(sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    provider.faults.stale_nonce = True
    provider.faults.evidence = {"target": "gateway"}
    report = await (await client.get(f"/near-cloud/v1/attestation/report?model={CANONICAL_MODEL}"
                                     f"&nonce={NONCE}", headers=AUTH)).json()
    assert quote_report_data(report["gateway_attestation"]["intel_quote"])[32:] != bytes.fromhex(NONCE)
    assert quote_report_data(report["model_attestations"][0]["intel_quote"])[32:] == bytes.fromhex(NONCE)


async def test_near_cloud_non_stream_is_provider_tee_and_stored_late(
        sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    sent, received, _ = await complete(client, "/near-cloud", message())
    record = await fetch_signature(client, "/near-cloud", chat_id_of(received), late=True)
    assert record["signature_kind"] == "provider_tee"
    assert record["text"] == f"{CANONICAL_MODEL}:{sha(sent)}:{sha(received)}"
    assert record["signing_address"] == provider.nodes[0].address("ecdsa")


async def test_near_cloud_alias_is_resolved_with_a_warning(sim: tuple[Client, SimulatedProvider]) -> None:
    client, _ = sim
    sent, received, response = await complete(client, "/near-cloud", message(model=MODEL_ALIAS))
    assert response.headers["x-model-alias-resolved"] == f"{MODEL_ALIAS} -> {CANONICAL_MODEL}"
    answer = json.loads(received)
    assert "warning" in answer and answer["model"] == CANONICAL_MODEL
    record = await fetch_signature(client, "/near-cloud", answer["id"], late=True)
    model, request_hash, response_hash = record["text"].rsplit(":", 2)
    assert (model, request_hash) == (CANONICAL_MODEL, sha(sent))
    assert response_hash != sha(received)  # the signature no longer covers what arrived
    refused = await client.post("/near-cloud/v1/chat/completions", json=message(model=MODEL_ALIAS),
                                headers={**AUTH, "x-no-aliasing": "true"})
    assert refused.status == 400


async def test_near_cloud_stream_is_gateway_signed_unless_continuous_usage(
        sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    sent, received, _ = await complete(client, "/near-cloud", message(stream=True))
    record = await fetch_signature(client, "/near-cloud", chat_id_of(received), "ed25519", late=True)
    assert record["signature_kind"] == "gateway"
    assert record["text"] == f"{sha(sent)}:{sha(received)}"
    assert record["signing_address"] == provider.gateway.address("ed25519")

    body = message(stream=True, stream_options={"continuous_usage_stats": True})
    sent, received, _ = await complete(client, "/near-cloud", body)
    record = await fetch_signature(client, "/near-cloud", chat_id_of(received), late=True)
    assert record["signature_kind"] == "provider_tee"
    assert record["text"] == f"{CANONICAL_MODEL}:{sha(sent)}:{sha(received)}"
    assert record["signing_address"] in {node.address("ecdsa") for node in provider.nodes}
    assert all("usage" in json.loads(e[6:]) for e in received.split(b"\n\n")[:-2])


async def test_swap_signature_kind_mislabels_only(sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    provider.faults.swap_signature_kind = True
    sent, received, _ = await complete(client, "/near-cloud", message())
    record = await fetch_signature(client, "/near-cloud", chat_id_of(received), late=True)
    assert record["signature_kind"] == "gateway"  # but the node signed the 3-part text
    assert record["text"] == f"{CANONICAL_MODEL}:{sha(sent)}:{sha(received)}"
    assert record["signing_address"] in {node.address("ecdsa") for node in provider.nodes}


@pytest.mark.parametrize("code", ["STREAM_DISCONNECTED", "SIGNATURE_UNSUPPORTED"])
async def test_signature_unavailable_is_a_200(sim: tuple[Client, SimulatedProvider], code: str) -> None:
    client, _ = sim
    _, received, _ = await complete(client, "/near-cloud", message())
    set_knob = await client.post("/_simulator/faults", json={"signature_unavailable": code})
    assert set_knob.status == 200
    response = await client.get(f"/near-cloud/v1/signature/{chat_id_of(received)}", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body["error_code"] == code and "message" in body and "signature" not in body


@pytest.mark.parametrize("knobs", [{"signature_unavailable": "GONE"}, {"evidence": {"target": "kms"}},
                                   {"evidence": {"compose_manager": "later"}}, {"no_such_knob": 1}])
async def test_unknown_knobs_are_refused(sim: tuple[Client, SimulatedProvider], knobs: dict[str, Any]) -> None:
    client, _ = sim
    assert (await client.post("/_simulator/faults", json=knobs)).status == 400


async def test_signature_immediate_knob(sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    provider.faults.signature_immediate = True
    _, received, _ = await complete(client, "/near-cloud", message())
    await fetch_signature(client, "/near-cloud", chat_id_of(received))


# -- redpill --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
async def test_redpill_report_is_the_gateways(sim: tuple[Client, SimulatedProvider], version: int) -> None:
    client, provider = sim
    report = await (await client.get(f"/redpill/v1/attestation/report?model={REDPILL_MODEL}"
                                     f"&nonce={NONCE}&signing_algo=ecdsa&version={version}",
                                     headers=AUTH)).json()
    address = provider.aci_gateway.address("ecdsa")
    assert report["signing_address"] == address
    assert address not in {node.address("ecdsa") for node in provider.nodes}
    assert report["signing_public_key"].startswith("04")
    assert keccak(bytes.fromhex(report["signing_public_key"][2:]))[-20:] == bytes.fromhex(address[2:])
    identifier = bytes.fromhex(address[2:])
    key_half = (identifier + bytes(12) if version == 1
                else hashlib.sha256(identifier + PLACEHOLDER_TLS_SPKI_SHA256).digest())
    assert quote_report_data(report["intel_quote"]) == key_half + bytes.fromhex(NONCE)
    assert json.loads(report["nvidia_payload"])["nonce"] == NONCE
    assert report["all_attestations"] == [{k: v for k, v in report.items() if k != "all_attestations"}]
    assert report["api_version"] == "aci/1"


async def test_redpill_nonce_not_hex_is_hashed(sim: tuple[Client, SimulatedProvider]) -> None:
    client, _ = sim
    report = await (await client.get("/redpill/v1/attestation/report?nonce=abc&signing_algo=ecdsa",
                                     headers=AUTH)).json()
    assert quote_report_data(report["intel_quote"])[32:] == hashlib.sha256(b"abc").digest()


@pytest.mark.parametrize("stream", [False, True])
async def test_redpill_signature_is_aci_two_part_by_the_gateway(
        sim: tuple[Client, SimulatedProvider], stream: bool) -> None:
    client, provider = sim
    sent, received, response = await complete(client, "/redpill",
                                               message(model=REDPILL_MODEL, stream=stream))
    record = await fetch_signature(client, "/redpill", chat_id_of(received))
    assert record["api_version"] == "aci/1" and "receipt" in record
    assert record["text"] == f"{sha(sent)}:{sha(received)}"
    assert record["signing_address"] == provider.aci_gateway.address("ecdsa")
    by_receipt = await fetch_signature(client, "/redpill", response.headers["X-Receipt-Id"])
    assert by_receipt["text"] == record["text"]


# -- nanogpt and private-ml-sdk -------------------------------------------------------------------

async def test_nanogpt_renames_the_model_by_default(sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    body = {"model": TEE_MODEL, "messages": [{"role": "user", "content": f"say {TEE_MODEL}"}]}
    provider.faults.rename_model = False  # the knob turns the rename off
    sent, received, _ = await complete(client, "/api", body)
    plain = await (await client.get(f"/api/v1/tee/signature/{chat_id_of(received)}?model={TEE_MODEL}",
                                    headers=AUTH)).json()
    assert plain["text"] == f"{sha(sent)}:{sha(received)}"
    provider.faults.reset()
    assert provider.faults.rename_model
    sent, received, _ = await complete(client, "/api", body)
    renamed = sent.replace(b'"model":"' + TEE_MODEL.encode(), b'"model":"' + NANOGPT_UPSTREAM_MODEL.encode(), 1)
    assert renamed != sent and renamed.count(TEE_MODEL.encode()) == 1  # the prompt keeps its text
    record = await (await client.get(f"/api/v1/tee/signature/{chat_id_of(received)}?model={TEE_MODEL}",
                                     headers=AUTH)).json()
    verify_record(record)
    assert record["text"] == f"{NANOGPT_UPSTREAM_MODEL}:{sha(renamed)}:{sha(received)}"
    report = await (await client.get(f"/api/v1/tee/attestation?model={TEE_MODEL}&nonce={NONCE}",
                                     headers=AUTH)).json()
    assert report["model_name"] == NANOGPT_UPSTREAM_MODEL


async def test_private_ml_sdk_is_unchanged(sim: tuple[Client, SimulatedProvider]) -> None:
    client, provider = sim
    sent, received, _ = await complete(client, "", {"model": TEE_MODEL, "messages": [], "stream": True})
    record = await fetch_signature(client, "", chat_id_of(received))
    assert record["text"] == f"{sha(sent)}:{sha(received)}" and "signature_kind" not in record
    assert chat_id_of(received).startswith("chatcmpl-")


# -- answers --------------------------------------------------------------------------------------

async def test_answers_follow_the_request(sim: tuple[Client, SimulatedProvider]) -> None:
    client, _ = sim
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    _, received, _ = await complete(client, "/near-direct", message(tools=tools, n=2))
    answer = json.loads(received)
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "tool_calls" and c["message"]["tool_calls"][0]["function"]["name"] == "lookup"
               for c in answer["choices"])
    _, received, _ = await complete(client, "/redpill", message(model=REDPILL_MODEL, logprobs=True, top_logprobs=1))
    content = json.loads(received)["choices"][0]["logprobs"]["content"]
    assert content and all(entry["logprob"] < 0 and len(entry["top_logprobs"]) == 1 for entry in content)
    _, received, _ = await complete(
        client, "/near-direct", message(stream=True, chat_template_kwargs={"enable_thinking": True}))
    deltas = [json.loads(e[6:])["choices"] for e in received.split(b"\n\n")[:-2]]
    thoughts = "".join(c[0]["delta"].get("reasoning_content") or "" for c in deltas if c)
    assert thoughts and json.loads(received.split(b"\n\n")[-3][6:])["usage"]["reasoning_tokens"] > 0
    again = await complete(client, "/near-direct", message())
    assert json.loads(again[1])["choices"] == json.loads((await complete(client, "/near-direct", message()))[1])["choices"]
    too_many = await client.post("/near-direct/v1/chat/completions", json=message(n=99), headers=AUTH)
    assert too_many.status == 400


# -- one profile at the root, and the stack's settings --------------------------------------------

async def test_one_profile_at_the_root(aiohttp_client: ClientFactory) -> None:
    app, _ = build_simulator(profile="near-direct")
    client = await aiohttp_client(app)
    assert (await client.get(f"/v1/attestation/report?nonce={NONCE}")).status == 200
    assert (await client.get(f"/near-direct/v1/attestation/report?nonce={NONCE}")).status == 404
    paths = {r.get_info().get("formatter") or r.get_info().get("path") for r in app.router.resources()}
    assert any(str(p).startswith("/pcs") for p in paths) and any(str(p).startswith("/nras") for p in paths)
    with pytest.raises(ValueError, match="unknown profile"):
        build_simulator(profile="near")


@pytest.mark.parametrize("profile", sorted(PROFILE_PREFIX))
def test_simulator_settings_follow_the_profile(tmp_path: Path, profile: str) -> None:
    settings = simulator_settings("http://127.0.0.1:1", tmp_path, profile=profile)
    assert settings.upstream.provider == profile
    assert settings.upstream.base_url == "http://127.0.0.1:1" + PROFILE_PREFIX[profile]


def test_one_stack_serves_a_sidecar_per_profile(stack: Stack) -> None:
    import openai

    nanogpt, legacy = stack.sidecar(), stack.sidecar(profile="private-ml-sdk")
    assert nanogpt != legacy
    assert stack.sidecar_state(legacy).settings.upstream.provider == "private-ml-sdk"
    client = openai.OpenAI(base_url=legacy, api_key="not-a-real-key", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model=TEE_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-tee-verified"] == "true"


def test_cli_simulate_refuses_an_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--profile", "near"])
    assert exited.value.code == 64  # EX_USAGE, as every usage error of the CLI
    assert "invalid choice: 'near'" in capsys.readouterr().err


def test_the_gateway_record_is_served_to_other_processes(tmp_path: Path) -> None:
    """``GET /_simulator/gateway``: what ``make demo`` shows the gateway held under E2EE."""
    import urllib.request

    stack = Stack(tmp_path, profile="near-cloud")
    try:
        stack.call(lambda: stack.simulator.gateway_seen.append(b"\x00sealed"))
        with urllib.request.urlopen(f"{stack.simulator_url}/_simulator/gateway",
                                    timeout=10) as response:
            seen = json.loads(response.read())["seen"]
        assert [base64.b64decode(blob) for blob in seen] == [b"\x00sealed"]
    finally:
        stack.close()
