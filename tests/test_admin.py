"""The admin listener: liveness, readiness, metrics, the status page and its JSON twin.

Readiness and escaping run over a hand-built view (a fake cache holding a hand-built report);
the status data is checked against a real attestation: the ``openai`` SDK talks to a sidecar in
front of the simulator (``tests/conftest.py``'s ``stack``), then the admin app reads that
sidecar's state.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp import hdrs, web
from aiohttp.test_utils import TestClient

from sidecar.proxy.admin import (
    NOT_STARTED,
    AdminView,
    attestation_times,
    build_admin_app,
    public_url,
    status_document,
)
from sidecar.config import Settings, load_settings
from sidecar.errors import VerificationFailed
from sidecar.proxy.attester import AttestationCache, CachedAttestation
from sidecar.proxy.warmup import keep_models_warm, warm_models
from tests.stack import Stack
from sidecar.telemetry import FAILURE_HISTORY, Telemetry
from sidecar.verify.attestation import AttestationReport, NodeReport
from sidecar.verify.checks import Check
from tests.conftest import PLAIN_MODEL, TEE_MODEL

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
MEASUREMENTS = {"mrtd": "aa" * 48, "rtmr0": "b0" * 48, "rtmr1": "b1" * 48, "rtmr2": "b2" * 48,
                "rtmr3": "b3" * 48, "mr_config_id": "01" + "cc" * 47}


def hand_built_entry(model: str, *, ttl: float = 600.0, key: str = "0x" + "ab" * 20,
                     detail: str = "quote verifies",
                     failed_detail: str | None = None) -> CachedAttestation:
    """A cached attestation with one passing node (no evidence needed), and with
    ``failed_detail`` a second node whose check failed with that text."""
    node = NodeReport(label="node-0", role="model", signing_key=key, algo="ecdsa",
                      checks=(Check.passed("tdx.quote", detail),), tcb_status="UpToDate",
                      measurements=dict(MEASUREMENTS))
    nodes: tuple[NodeReport, ...] = (node,)
    if failed_detail is not None:
        nodes += (NodeReport(label="node-1", role="model", signing_key=key, algo="ecdsa",
                             checks=(Check.failed("binding.nonce", failed_detail,
                                                  failed_detail),)),)
    report = AttestationReport(model=model, nonce="00" * 32, evidence_sha256="ee" * 32,
                               nodes=nodes, verified_at=int(time.time()) - 5)
    return CachedAttestation(report, b"{}", time.monotonic() + ttl)


@dataclass
class FakeCache:
    """Just the ``AttestationSource`` surface, over a dict."""

    stored: dict[str, CachedAttestation] = field(default_factory=dict)
    fail_with: VerificationFailed | None = None
    refreshed: list[str] = field(default_factory=list)

    def entries(self) -> dict[str, CachedAttestation]:
        return dict(self.stored)

    def peek(self, model: str) -> CachedAttestation | None:
        entry = self.stored.get(model)
        return entry if entry is not None and entry.expires_at > time.monotonic() else None

    async def get(self, model: str) -> CachedAttestation:
        if (entry := self.peek(model)) is not None:
            return entry
        return await self.refresh(model)

    async def refresh(self, model: str) -> CachedAttestation:
        self.refreshed.append(model)
        if self.fail_with is not None:
            raise self.fail_with
        self.stored[model] = hand_built_entry(model)
        return self.stored[model]


@dataclass
class View:
    """An ``AdminView``: what the proxy's state will carry once telemetry is wired in."""

    settings: Settings
    cache: FakeCache | AttestationCache
    telemetry: Telemetry


def settings_for(mode: str = "enforce", warm: Iterable[str] = ()) -> Settings:
    return load_settings(None, verification={"mode": mode},
                         attestation={"warm_models": tuple(warm)},
                         upstream={"base_url": "https://user:secret@provider.example/api?key=k"})


async def admin_client(aiohttp_client: ClientFactory, view: AdminView | None
                       ) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(build_admin_app(lambda: view))


# --- liveness and readiness ------------------------------------------------------------------


async def test_livez_answers_before_the_proxy_state_exists(aiohttp_client: ClientFactory) -> None:
    client = await admin_client(aiohttp_client, None)
    resp = await client.get("/livez")
    assert resp.status == 200
    assert await resp.text() == "ok"


async def test_readyz_is_503_until_the_proxy_state_exists(aiohttp_client: ClientFactory) -> None:
    client = await admin_client(aiohttp_client, None)
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"ready": False, "reasons": [NOT_STARTED]}


@pytest.mark.parametrize(("mode", "attested", "status"), [
    ("enforce", False, 503),
    ("enforce", True, 200),
    # Flag and monitor deliver unverified answers anyway: warm-up is not a gate there.
    ("flag", False, 200),
    ("monitor", False, 200),
])
async def test_readyz_in_each_mode(aiohttp_client: ClientFactory, mode: str, attested: bool,
                                   status: int) -> None:
    cache = FakeCache({"m": hand_built_entry("m")} if attested else {})
    client = await admin_client(aiohttp_client,
                                View(settings_for(mode, ["m"]), cache, Telemetry()))
    resp = await client.get("/readyz")
    assert resp.status == status
    body = await resp.json()
    assert body["ready"] is (status == 200)
    if status == 503:
        assert body["reasons"] == ["warm model 'm' has no valid attestation"]


async def test_readyz_turns_503_when_a_warm_attestation_expires(
        aiohttp_client: ClientFactory) -> None:
    cache = FakeCache({"m": hand_built_entry("m", ttl=-1.0)})
    client = await admin_client(aiohttp_client, View(settings_for("enforce", ["m"]), cache,
                                                     Telemetry()))
    assert (await client.get("/readyz")).status == 503


async def test_warm_models_logs_failures_and_never_raises() -> None:
    cache = FakeCache(fail_with=VerificationFailed("no quote", code="tdx.quote_missing"))
    view = View(settings_for("enforce", ["a", "b"]), cache, Telemetry())
    assert await warm_models(view, ["a", "b", "a"]) == {"a": "tdx.quote_missing",
                                                         "b": "tdx.quote_missing"}
    cache.fail_with = None
    assert await warm_models(view, ["a"]) == {"a": None}


async def test_keep_models_warm_refreshes_entries_close_to_expiry() -> None:
    cache = FakeCache({"soon": hand_built_entry("soon", ttl=10.0),
                       "later": hand_built_entry("later", ttl=3600.0)})
    view = View(settings_for(), cache, Telemetry())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(keep_models_warm(view, ["soon", "later", "missing"],
                                                interval=60.0, refresh_before=300.0), 0.2)
    assert cache.refreshed == ["soon", "missing"]


# --- metrics ---------------------------------------------------------------------------------


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, by name and exact label set."""
    rendered = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name + ("{" + rendered + "}" if labels else "")) + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", metrics, re.MULTILINE)
    assert match is not None, f"{name} {labels} not in metrics"
    return float(match.group(1))


async def test_metrics_count_what_the_proxy_observed(aiohttp_client: ClientFactory) -> None:
    telemetry = Telemetry()
    cache = FakeCache({TEE_MODEL: hand_built_entry(TEE_MODEL, ttl=600.0)})
    telemetry.watch_attestations(lambda: attestation_times(cache))
    telemetry.observe_request("/v1/chat/completions", 200, "true")
    telemetry.observe_request("/v1/chat/completions", 502, "false")
    telemetry.observe_request("/wp-login.php", 404, None)
    telemetry.observe_verification("signature", "pass", 0.0007)
    telemetry.observe_verification("attestation", "incomplete", 4.2)
    telemetry.observe_blocked("signature.address_not_attested")
    telemetry.observe_blocked("free text with spaces")
    telemetry.observe_upstream(1.3)
    client = await admin_client(aiohttp_client, View(settings_for(), cache, telemetry))

    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers[hdrs.CONTENT_TYPE].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    assert sample(text, "tee_sidecar_requests_total", endpoint="/v1/chat/completions",
                  status_class="2xx", verified="true") == 1
    assert sample(text, "tee_sidecar_requests_total", endpoint="/v1/chat/completions",
                  status_class="5xx", verified="false") == 1
    # An unknown path is one label value, not a new series per path.
    assert sample(text, "tee_sidecar_requests_total", endpoint="other", status_class="4xx",
                  verified="false") == 1
    assert sample(text, "tee_sidecar_verifications_total", kind="signature", result="pass") == 1
    assert sample(text, "tee_sidecar_verifications_total", kind="attestation",
                  result="incomplete") == 1
    assert sample(text, "tee_sidecar_blocked_responses_total",
                  code="signature.address_not_attested") == 1
    assert sample(text, "tee_sidecar_blocked_responses_total", code="other") == 1
    assert sample(text, "tee_sidecar_verification_latency_seconds_bucket", kind="signature",
                  le="0.001") == 1
    assert sample(text, "tee_sidecar_verification_latency_seconds_bucket", kind="signature",
                  le="0.0005") == 0
    assert sample(text, "tee_sidecar_upstream_latency_seconds_count") == 1
    assert 4 <= sample(text, "tee_sidecar_attestation_age_seconds", model=TEE_MODEL) <= 60
    assert 590 <= sample(text, "tee_sidecar_attestation_expires_in_seconds", model=TEE_MODEL) <= 600


async def test_metrics_are_503_until_the_proxy_state_exists(
        aiohttp_client: ClientFactory) -> None:
    client = await admin_client(aiohttp_client, None)
    assert (await client.get("/metrics")).status == 503


def test_two_telemetries_do_not_share_a_registry() -> None:
    first, second = Telemetry(), Telemetry()
    first.observe_blocked("stream.truncated")
    assert b'code="stream.truncated"' in first.render_metrics()
    assert b'code="stream.truncated"' not in second.render_metrics()


def test_verification_labels_are_a_closed_set() -> None:
    with pytest.raises(ValueError, match="unknown verification label kind='quote'"):
        Telemetry().observe_verification("quote", "pass", 0.1)  # type: ignore[arg-type]


def test_failure_history_is_bounded_newest_first() -> None:
    telemetry = Telemetry()
    for i in range(FAILURE_HISTORY + 10):
        telemetry.record_failure("m", "signature.invalid", f"failure {i}")
    failures = telemetry.snapshot()["failures"]
    assert len(failures) == FAILURE_HISTORY
    assert failures[0]["message"] == f"failure {FAILURE_HISTORY + 9}"
    assert failures[-1]["message"] == "failure 10"
    assert set(failures[0]) == {"time", "model", "code", "message"}


def test_public_url_drops_credentials_and_query() -> None:
    assert public_url("https://user:secret@provider.example/api?key=k#f") == \
        "https://provider.example/api"


# --- status page and JSON over a real attestation --------------------------------------------


def chat(url: str) -> None:
    client = openai.OpenAI(base_url=url, api_key="not-a-real-key", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model=TEE_MODEL, messages=[{"role": "user", "content": "hello"}])
    assert raw.headers["x-tee-verified"] == "true"


def stack_view(stack: Stack, url: str, telemetry: Telemetry | None = None) -> View:
    state = stack.sidecar_state(url)
    return View(state.settings, state.cache, telemetry or Telemetry())


async def test_readyz_follows_warm_up_of_a_real_sidecar(stack: Stack,
                                                        aiohttp_client: ClientFactory) -> None:
    url = stack.sidecar(fresh=True, attestation={"warm_models": (TEE_MODEL,)})
    view = stack_view(stack, url)
    client = await admin_client(aiohttp_client, view)
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {
        "ready": False, "reasons": [f"warm model {TEE_MODEL!r} has no valid attestation"]}

    # The cache lives on the stack's loop: warm it there.
    results = stack.run(warm_models(view, [TEE_MODEL, PLAIN_MODEL]))
    assert results[TEE_MODEL] is None
    assert results[PLAIN_MODEL] is not None  # no TEE attestation: logged, not raised

    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"ready": True, "reasons": []}


async def test_status_json_lists_the_attested_model(stack: Stack,
                                                   aiohttp_client: ClientFactory) -> None:
    url = stack.sidecar(fresh=True)
    chat(url)
    telemetry = Telemetry()
    telemetry.observe_request("/v1/chat/completions", 200, "true")
    view = stack_view(stack, url, telemetry)
    client = await admin_client(aiohttp_client, view)

    resp = await client.get("/status.json")
    assert resp.status == 200
    document = await resp.json()
    assert document["ready"] is True
    assert document["settings"]["trust_anchors"] == "simulator"
    [model] = document["models"]
    assert model["model"] == TEE_MODEL
    assert model["verdict"] == "verified" and model["valid"] is True
    assert 0 < model["expires_in_seconds"] <= 3600
    [node] = model["nodes"]
    expected_address = stack.simulator.nodes[0].address("ecdsa").lower()
    assert node["signing_key"] == expected_address
    assert model["attested_keys"] == [expected_address]
    assert node["attested"] is True and node["failed_checks"] == []
    cached = view.cache.entries()[TEE_MODEL].report.nodes[0]
    assert node["measurements"] == dict(cached.measurements)
    assert set(node["measurements"]) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3",
                                         "mr_config_id"}
    assert all(re.fullmatch("[0-9a-f]{96}", node["measurements"][name])
               for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
    assert node["tcb_status"] == cached.tcb_status
    assert node["gpus"] and all(gpu["ok"] for gpu in node["gpus"])
    assert document["telemetry"]["counters"]["requests_verified"] == 1

    page = await client.get("/status")
    assert page.status == 200
    text = await page.text()
    assert expected_address in text
    assert node["measurements"]["mrtd"] in text


async def test_status_is_503_with_a_page_until_the_proxy_state_exists(
        aiohttp_client: ClientFactory) -> None:
    client = await admin_client(aiohttp_client, None)
    resp = await client.get("/status")
    assert resp.status == 503
    assert "not loaded yet" in await resp.text()
    resp = await client.get("/status.json")
    assert resp.status == 503
    assert (await resp.json())["not_ready_reasons"] == [NOT_STARTED]


# --- escaping --------------------------------------------------------------------------------


async def test_status_page_escapes_hostile_names_and_messages(
        aiohttp_client: ClientFactory) -> None:
    telemetry = Telemetry()
    telemetry.record_failure(HOSTILE, "signature.invalid", f"signature of {HOSTILE} failed")
    cache = FakeCache({HOSTILE: hand_built_entry(HOSTILE, key=HOSTILE, detail=HOSTILE,
                                                 failed_detail=HOSTILE)})
    client = await admin_client(aiohttp_client, View(settings_for(), cache, telemetry))

    resp = await client.get("/status")
    assert resp.status == 200
    assert resp.headers[hdrs.CONTENT_TYPE] == "text/html; charset=utf-8"
    assert "script-src" not in resp.headers[hdrs.CONTENT_SECURITY_POLICY]
    assert resp.headers[hdrs.CONTENT_SECURITY_POLICY].startswith("default-src 'none'")
    page = await resp.text()
    assert "<script" not in page and "<img" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    assert escaped in page
    # The failing node's check (detail and code come from the provider's evidence) is shown
    # escaped too.
    assert page.count(escaped) >= 4
    # The upstream URL is shown without its credentials or query.
    assert "secret" not in page and "key=k" not in page
    assert "https://provider.example/api" in page


def test_status_json_keeps_hostile_text_as_data() -> None:
    cache = FakeCache({HOSTILE: hand_built_entry(HOSTILE)})
    document: dict[str, Any] = status_document(View(settings_for(), cache, Telemetry()))
    assert document["models"][0]["model"] == HOSTILE
