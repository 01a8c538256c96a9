"""5xx, malformed JSON and garbage from every upstream endpoint, and anything from a local client.

Every answer is an OpenAI-shaped error or a verified completion; never a trace, never a hang,
never ``sidecar.internal_error``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.adversarial.conftest import assert_blocked, relay_verdict
from tests.adversarial.harness import MESSAGES, TEE_MODEL, AdversarialStack, chat, post
from tests.adversarial.mitm import answer, rewrite_response

DEEP = b"[" * 100_000 + b"]" * 100_000

# name -> (status, body, content type)
GARBAGE: dict[str, tuple[int, bytes, str]] = {
    "http_500": (500, b'{"error": {"message": "boom"}}', "application/json"),
    "http_503_html": (503, b"<html>Service Unavailable</html>", "text/html"),
    "http_502_empty": (502, b"", "application/json"),
    "truncated_json": (200, b'{"id": "chatcmpl-1", "text": "abc', "application/json"),
    "json_array": (200, b"[1, 2, 3]", "application/json"),
    "json_null": (200, b"null", "application/json"),
    "empty_200": (200, b"", "application/json"),
    "html_200": (200, b"<html><body>hello</body></html>", "text/html"),
    "not_utf8": (200, b'{"id": "\xff\xfe"}', "application/json"),
    "wrong_types": (200, b'{"id": 1, "text": [], "signature": {}, "signing_address": 5, '
                         b'"intel_quote": 7, "nvidia_payload": 8}', "application/json"),
    "http_404": (404, b'{"error": "not found"}', "application/json"),
    "redirect": (302, b"", "text/plain"),
}
# Deep nesting: json.loads raises RecursionError, which is not a ValueError (see BUGS below).
DEEP_GARBAGE = (200, DEEP, "application/json")

# Endpoints whose answer a completion depends on; ``models`` is passed through unverified.
COMPLETION_DEPENDS_ON = ("attestation", "signature", "completion", "pcs", "nras")

# The failure code each garbage answer must produce, per endpoint (plain and streamed alike).
# Collateral and NRAS are fetched by the sidecar itself: whatever they answer, an unusable answer
# is "could not decide" (collateral missing, NRAS unavailable), never a verified node.
_TRANSPORT_5XX = ("http_500", "http_502_empty", "http_503_html")
GARBAGE_CODES: dict[str, dict[str, str]] = {
    "attestation": {
        **{g: "attestation.malformed" for g in GARBAGE},
        **{g: "attestation.fetch_failed" for g in _TRANSPORT_5XX},
        "http_404": "attestation.unavailable",
        "redirect": "attestation.refused",
    },
    "signature": {
        **{g: "signature.record_malformed" for g in GARBAGE},
        **{g: "signature.fetch_failed" for g in _TRANSPORT_5XX},
        "http_404": "signature.missing",
        "redirect": "signature.missing",
    },
    "completion": {
        **{g: f"upstream.http_{GARBAGE[g][0]}" for g in GARBAGE},
        "truncated_json": "response.malformed",
        "empty_200": "response.malformed",
        "html_200": "response.malformed",
        "not_utf8": "response.malformed",
        "json_array": "response.no_chat_id",
        "json_null": "response.no_chat_id",
        "wrong_types": "response.no_chat_id",
        "redirect": "upstream.unexpected_status",
    },
    "pcs": {g: "tdx.collateral_missing" for g in GARBAGE},
    "nras": {**{g: "gpu.nras_unavailable" for g in GARBAGE},
             "json_array": "gpu.nras_response_malformed"},
}


def _url_for(adv: AdversarialStack, kind: str) -> str:
    # Evidence paths are only fetched by a sidecar that has not attested yet.
    url = adv.sidecar(fresh=True)
    if kind in ("signature", "completion", "models"):
        assert chat(url)[0] == 200
    return url


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
@pytest.mark.parametrize("kind", COMPLETION_DEPENDS_ON)
def test_garbage_from_an_endpoint_never_delivers(adv: AdversarialStack, kind: str,
                                                 garbage: str) -> None:
    url = _url_for(adv, kind)
    status, body, content_type = GARBAGE[garbage]
    headers = {"Location": "http://127.0.0.1:1/elsewhere"} if status == 302 else None
    adv.mitm.on(kind, answer(status, body, content_type, headers))  # type: ignore[arg-type]
    code = GARBAGE_CODES[kind][garbage]
    for stream in (False, True):
        out_status, out_headers, out_body = chat(url, stream=stream)
        assert out_headers.get("x-tee-failure") != "sidecar.internal_error", out_body[:300]
        assert out_headers["x-tee-verified"] == "false"
        if kind == "completion" and status >= 400:
            # An upstream error without a completion reaches the app with its status, unverified.
            assert out_status == status
            assert out_headers["x-tee-failure"] == code
            assert isinstance(json.loads(out_body)["error"], dict)
        else:
            # Any other status (a redirect, a 2xx other than 200) carries nothing to verify.
            assert_blocked(out_status, out_headers, out_body, code)


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_garbage_model_list_is_passed_on_unverified(adv: AdversarialStack, garbage: str) -> None:
    url = _url_for(adv, "models")
    status, body, content_type = GARBAGE[garbage]
    adv.mitm.on("models", answer(status, body, content_type))
    request = urllib.request.Request(url + "/models")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            headers = dict(response.headers)
    except urllib.error.HTTPError as error:
        headers = dict(error.headers)
    assert headers["x-tee-verified"] == "false"
    # Passed on as-is and marked unverified: nothing was checked, so nothing failed.
    assert "x-tee-failure" not in headers


@pytest.mark.parametrize("kind, code", [
    # The collateral's JSON no longer parses or verifies: no usable collateral, undecided.
    ("pcs", "tdx.collateral_missing"),
    # A byte of a GPU token changed: its digest no longer matches the overall token's submods.
    ("nras", "gpu.submod_digest_mismatch"),
])
def test_one_flipped_byte_in_off_box_evidence(adv: AdversarialStack, kind: str,
                                              code: str) -> None:
    # Collateral and NRAS tokens are signed by Intel and NVIDIA: a byte changed on the path to
    # them fails the attestation.
    def flip(body: bytes) -> bytes:
        i = len(body) // 2
        return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]

    adv.mitm.on(kind, rewrite_response(flip))  # type: ignore[arg-type]
    assert_blocked(*chat(adv.sidecar(fresh=True)), code)


# -- deeply nested JSON: RecursionError escapes the parsers -------------------------------------------

@pytest.mark.parametrize("kind, code", [
    ("completion", "response.malformed"),
    ("attestation", "attestation.malformed"),
    ("signature", "evidence.too_large"),  # 200 KB is over the signature record's bound
    ("pcs", "tdx.collateral_missing"),
    ("nras", "gpu.nras_unavailable"),
])
def test_deeply_nested_json_from_an_endpoint(adv: AdversarialStack, kind: str, code: str) -> None:
    url = _url_for(adv, kind)
    adv.mitm.on(kind, answer(*DEEP_GARBAGE))  # type: ignore[arg-type]
    assert_blocked(*chat(url), code)


@pytest.mark.parametrize("stream_mode", ["plain", "buffer", "relay"])
def test_deeply_nested_completion_is_blocked_not_crashed(adv: AdversarialStack,
                                                         stream_mode: str) -> None:
    url = adv.sidecar(verification={"stream": "relay" if stream_mode == "relay" else "buffer"})
    chat(url)
    if stream_mode == "plain":
        adv.mitm.on("completion", answer(*DEEP_GARBAGE))
    else:
        adv.mitm.on("completion", answer(200, b"data: " + DEEP + b"\n\n", "text/event-stream"))
    status, headers, body = chat(url, stream=stream_mode != "plain")
    assert b"sidecar.internal_error" not in body
    if stream_mode == "relay":
        assert status == 200 and headers["x-tee-verified"] == "pending"
        assert relay_verdict(body) == "response.malformed"
    else:
        assert_blocked(status, headers, body, "response.malformed")


def test_deeply_nested_upstream_error_body(adv: AdversarialStack) -> None:
    url = adv.sidecar()
    chat(url)
    adv.mitm.on("completion", answer(500, DEEP))
    status, headers, _ = chat(url)
    assert status == 500 and headers["x-tee-failure"] == "upstream.http_500"


# -- a local client may send anything -------------------------------------------------------------


@pytest.mark.parametrize("body, code", [
    (b"", "request.invalid_json"),
    (b"\xff\xfe\x00", "request.invalid_json"),
    (b"null", "request.invalid_json"),
    (b'"a string"', "request.invalid_json"),
    (b'{"model": ["TEE/x"]}', "request.no_model"),
    (b'{"model": ""}', "request.no_model"),
    (b'{"model": "' + b"m" * 10_000 + b'"}', "request.no_model"),
    (b'{"model": null}', "request.no_model"),
])
def test_local_client_garbage_gets_a_400(adv: AdversarialStack, body: bytes, code: str) -> None:
    forwarded = len(adv.mitm.exchanges("completion"))
    status, headers, content = post(adv.sidecar() + "/chat/completions", body)
    assert status == 400
    assert json.loads(content)["error"]["code"] == code
    assert headers["x-tee-verified"] == "false"
    assert len(adv.mitm.exchanges("completion")) == forwarded


def test_local_client_deeply_nested_request(adv: AdversarialStack) -> None:
    status, headers, _ = post(adv.sidecar() + "/chat/completions",
                              b'{"model": "' + TEE_MODEL.encode() + b'", "x": ' + DEEP + b"}")
    assert status == 400 and headers["x-tee-failure"] == "request.invalid_json"


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/v1/chat/completions", 405, "request.http_405"),
    ("PUT", "/v1/completions", 405, "request.http_405"),
    ("POST", "/v1/embeddings", 404, "request.unknown_path"),
    ("GET", "/v1/../admin", 404, "request.unknown_path"),
    ("POST", "/v1/chat/completions/../x", 404, "request.unknown_path"),
])
def test_local_client_odd_methods_and_paths(adv: AdversarialStack, method: str, path: str,
                                            status: int, code: str) -> None:
    base = adv.sidecar().removesuffix("/v1")
    request = urllib.request.Request(base + path, method=method, data=b"{}" if method != "GET"
                                     else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            got, content, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        got, content, headers = error.code, error.read(), dict(error.headers)
    assert got == status
    assert headers["x-tee-verified"] == "false"
    assert headers["x-tee-failure"] == code
    assert json.loads(content)["error"]["code"] == code


def test_app_credentials_and_headers_never_reach_the_provider(adv: AdversarialStack) -> None:
    url = adv.sidecar()
    post(url + "/chat/completions", {"model": TEE_MODEL, "messages": MESSAGES},
         headers={"Authorization": "Bearer sk-the-apps-own-key", "X-Request-Hash": "0" * 64,
                  "Cookie": "session=1"})
    sent = adv.mitm.exchanges("completion")[-1][0].headers
    assert sent["Authorization"] == "Bearer sk-simulated"
    assert "X-Request-Hash" not in sent and "Cookie" not in sent
