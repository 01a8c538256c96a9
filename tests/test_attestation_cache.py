"""The attestation cache: single flight, TTL, and failures that never evict or extend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.proxy.attester import AttestationCache
from sidecar.verify.attestation import AttestationReport, NodeReport
from sidecar.verify.checks import Check


def report(model: str, key: str, ok: bool = True) -> AttestationReport:
    check = Check.passed("x", "ok") if ok else Check.failed("binding.nonce", "binding.nonce_mismatch",
                                                            "stale nonce")
    node = NodeReport("node-0", "model", key, "ecdsa", (check,))
    return AttestationReport(model, "00" * 32, "ab" * 32, (node,), 0)


class FakeAttester:
    simulated = False

    def __init__(self) -> None:
        self.calls = 0
        self.results: list[AttestationReport | Exception] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def attest(self, model: str, signing_address: str | None = None
                     ) -> tuple[AttestationReport, bytes, bytes]:
        self.calls += 1
        await self.gate.wait()
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result, b"{}", b"{}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(ttl: int = 100) -> tuple[AttestationCache, FakeAttester, Clock]:
    attester, clock = FakeAttester(), Clock()
    return AttestationCache(attester, lambda _: ttl, clock=clock), attester, clock  # type: ignore[arg-type]


async def test_single_flight_under_concurrency() -> None:
    cache, attester, _ = make()
    attester.results = [report("m", "0xaa")]
    attester.gate.clear()
    waiters = [asyncio.ensure_future(cache.get("m")) for _ in range(20)]
    await asyncio.sleep(0)
    attester.gate.set()
    entries = await asyncio.gather(*waiters)
    assert attester.calls == 1
    assert {id(e) for e in entries} == {id(entries[0])}


async def test_expiry_attests_again() -> None:
    cache, attester, clock = make(ttl=100)
    attester.results = [report("m", "0xaa"), report("m", "0xbb")]
    assert (await cache.get("m")).report.attested_keys == {"0xaa"}
    clock.now += 99
    assert (await cache.get("m")).report.attested_keys == {"0xaa"}
    clock.now += 2
    assert (await cache.get("m")).report.attested_keys == {"0xbb"}
    assert attester.calls == 2


async def test_failed_reattestation_keeps_the_valid_entry_unchanged() -> None:
    cache, attester, clock = make(ttl=100)
    attester.results = [report("m", "0xaa"), report("m", "0xbb", ok=False)]
    first = await cache.get("m")
    clock.now += 50
    with pytest.raises(VerificationFailed, match="stale nonce"):
        await cache.refresh("m")
    assert cache.peek("m") is first
    assert first.expires_at == 1100.0


async def test_failed_attestation_never_extends_an_expired_entry() -> None:
    cache, attester, clock = make(ttl=100)
    attester.results = [report("m", "0xaa"), VerificationFailed("down", code="attestation.fetch_failed")]
    await cache.get("m")
    clock.now += 150
    with pytest.raises(VerificationFailed, match="down"):
        await cache.get("m")
    assert cache.peek("m") is None


async def test_only_reports_with_an_attested_node_are_cached() -> None:
    cache, attester, _ = make()
    attester.results = [report("m", "0xaa", ok=False)]
    with pytest.raises(VerificationFailed) as info:
        await cache.get("m")
    assert info.value.code == "binding.nonce_mismatch"
    assert cache.entries() == {}


async def test_a_cancelled_caller_does_not_cancel_the_shared_attestation() -> None:
    cache, attester, _ = make()
    attester.results = [report("m", "0xaa")]
    attester.gate.clear()
    impatient = asyncio.ensure_future(cache.get("m"))
    patient = asyncio.ensure_future(cache.get("m"))
    await asyncio.sleep(0)
    impatient.cancel()
    attester.gate.set()
    entry: Any = await patient
    assert entry.report.attested_keys == {"0xaa"}


async def test_forced_refreshes_are_rate_limited_per_model() -> None:
    cache, attester, clock = make(ttl=1000)
    attester.results = [report("m", "0xaa"), report("m", "0xbb"), report("m", "0xcc")]
    await cache.get("m")
    assert (await cache.refresh("m")).report.attested_keys == {"0xbb"}
    clock.now += 1
    assert (await cache.refresh("m")).report.attested_keys == {"0xbb"}  # within the interval
    clock.now += 10
    assert (await cache.refresh("m")).report.attested_keys == {"0xcc"}
    assert attester.calls == 3


async def test_a_failed_attestation_is_not_retried_by_every_request() -> None:
    from sidecar.proxy.attester import FAILED_ATTESTATION_BACKOFF_SECONDS

    cache, attester, clock = make()
    attester.results = [report("m", "0xaa", ok=False), report("m", "0xbb")]
    for _ in range(3):
        with pytest.raises(VerificationFailed, match="stale nonce"):
            await cache.get("m")
    assert attester.calls == 1
    clock.now += FAILED_ATTESTATION_BACKOFF_SECONDS + 0.1
    assert (await cache.get("m")).report.attested_keys == {"0xbb"}


def named_nodes_report(*names: str | None) -> AttestationReport:
    nodes = tuple(NodeReport(f"model-{i}", "model", f"0x{i:040x}", "ecdsa",
                             (Check.passed("x", "ok"),), model_name=name)
                  for i, name in enumerate(names))
    return AttestationReport("m", "00" * 32, "ab" * 32, nodes, 0)


async def test_the_entry_records_the_model_its_nodes_serve() -> None:
    cache, attester, _ = make()
    attester.results = [named_nodes_report("org/Canonical-1", "org/Canonical-1")]
    assert (await cache.get("alias")).canonical_model == "org/Canonical-1"


async def test_a_report_whose_nodes_serve_different_models_is_refused() -> None:
    cache, attester, _ = make()
    attester.results = [named_nodes_report("org/Model-A", "org/Model-B")]
    with pytest.raises(VerificationFailed, match="several models") as caught:
        await cache.get("m")
    assert caught.value.code == "attestation.model_ambiguous"
    assert cache.peek("m") is None
