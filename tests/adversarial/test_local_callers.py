"""Web pages must not use the sidecar (issue 11, finding 2): Host, Origin, Content-Type.

A cross-site ``text/plain`` POST would spend the user's provider key; a DNS-rebinding page
(``Host: evil.example``) would read the answers. Nothing of such a request may leave.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from sidecar.proxy.admin import build_admin_app
from sidecar.proxy.local_origin import LocalCallerPolicy, host_name
from tests.adversarial.harness import MESSAGES, TEE_MODEL, AdversarialStack, post

BODY = {"model": TEE_MODEL, "messages": MESSAGES}


def _refused(adv: AdversarialStack, url: str, headers: dict[str, str], status: int,
             code: str) -> None:
    forwarded = len(adv.mitm.exchanges("completion"))
    got, response_headers, content = post(url + "/chat/completions", BODY, headers=headers)
    assert got == status, content[:200]
    assert response_headers["x-tee-failure"] == code
    assert response_headers["x-tee-verified"] == "false"
    assert json.loads(content)["error"]["code"] == code
    assert len(adv.mitm.exchanges("completion")) == forwarded  # the prompt never left


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8787", "127.0.0.1.evil.example",
                                  "[::1].evil", "localhost@evil.example"])
def test_a_dns_rebinding_host_is_refused(adv: AdversarialStack, host: str) -> None:
    _refused(adv, adv.sidecar(), {"Host": host}, 421, "request.host_not_allowed")


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:8787"])
def test_a_browser_origin_is_refused(adv: AdversarialStack, origin: str) -> None:
    _refused(adv, adv.sidecar(), {"Origin": origin}, 403, "request.origin_not_allowed")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_a_cross_site_simple_post_is_refused(adv: AdversarialStack, content_type: str) -> None:
    _refused(adv, adv.sidecar(), {"Content-Type": content_type}, 415,
             "request.unsupported_media_type")


def test_loopback_names_and_configured_hosts_and_origins_are_served(
        adv: AdversarialStack) -> None:
    url = adv.sidecar(listen={"allowed_hosts": ["sidecar.internal"],
                              "allowed_origins": ["http://app.internal:3000"]})
    for headers in ({"Host": "localhost:8787"}, {"Host": "[::1]:8787"},
                    {"Host": "sidecar.internal"},
                    {"Origin": "http://app.internal:3000",
                     "Content-Type": "application/json; charset=utf-8"}):
        status, response_headers, _ = post(url + "/chat/completions", BODY, headers=headers)
        assert status == 200 and response_headers["x-tee-verified"] == "true", headers


def test_the_admin_listener_refuses_a_rebinding_host(adv: AdversarialStack) -> None:
    base = adv.run(adv.serve(build_admin_app(lambda: None)))
    request = urllib.request.Request(base + "/status.json", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 421
    assert json.loads(caught.value.read())["error"]["code"] == "request.host_not_allowed"
    with urllib.request.urlopen(base + "/livez", timeout=10) as response:
        assert response.status == 200


def test_a_wildcard_admin_listener_answers_to_ip_literals_only() -> None:
    policy = LocalCallerPolicy.for_listener("0.0.0.0", ())
    policy.check_host("10.1.2.3:8788")  # kubelet's probe, by pod IP
    with pytest.raises(Exception, match="Host is not one"):
        policy.check_host("evil.example:8788")


def test_remembered_hosts_never_let_another_host_in() -> None:
    from sidecar.errors import BadRequest
    from sidecar.proxy.local_origin import MAX_ACCEPTED_HOSTS

    policy = LocalCallerPolicy.for_listener("127.0.0.1", ())
    for _ in range(3):
        policy.check_host("127.0.0.1:8787")  # accepted, then answered from memory
        with pytest.raises(BadRequest) as refused:
            policy.check_host("evil.example:8787")  # a refusal is decided every time
        assert refused.value.code == "request.host_not_allowed"
    # Another listener's policy has its own memory: what one accepted does not carry over.
    wildcard = LocalCallerPolicy.for_listener("0.0.0.0", ())
    wildcard.check_host("10.1.2.3:8788")
    with pytest.raises(BadRequest):
        LocalCallerPolicy.for_listener("127.0.0.1", ()).check_host("10.1.2.3:8788")
    # Bounded: ever new accepted names stop being remembered, and are still accepted.
    for port in range(MAX_ACCEPTED_HOSTS * 2):
        wildcard.check_host(f"10.0.0.1:{port}")
    assert len(wildcard._accepted) == MAX_ACCEPTED_HOSTS
    wildcard.check_host("10.0.0.1:65000")


@pytest.mark.parametrize("header, name", [("[::1]:8787", "::1"), ("LocalHost.:80", "localhost"),
                                          ("[::1", None), ("a b", None), ("", None)])
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_a_configured_origin_gets_cors_and_nothing_else_does(adv: AdversarialStack) -> None:
    url = adv.sidecar(listen={"allowed_origins": ["http://app.internal:3000"]})
    preflight = urllib.request.Request(
        url + "/chat/completions", method="OPTIONS",
        headers={"Origin": "http://app.internal:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, authorization"})
    with urllib.request.urlopen(preflight, timeout=10) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://app.internal:3000"
        assert response.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
    status, headers, _ = post(url + "/chat/completions", BODY,
                              headers={"Origin": "http://app.internal:3000"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.internal:3000"
    assert "x-tee-verified" in headers["access-control-expose-headers"]
    status, headers, _ = post(url + "/chat/completions", BODY)
    assert status == 200 and "access-control-allow-origin" not in headers
