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
async def test_failed_forced_refreshes_are_rate_limited_with_backoff() -> None:
    # Issue 11, finding 4: 20 completions signed by throw-away keys cost 20 attestations when
    # only a successful refresh started the interval.
    from sidecar.proxy.attester import REFRESH_MIN_INTERVAL_SECONDS

    cache, attester, clock = make(ttl=100_000)
    attester.results = [report("m", "0xaa")] + [report("m", "0xbb", ok=False)] * 4
    first = await cache.get("m")
    with pytest.raises(VerificationFailed, match="stale nonce"):
        await cache.refresh("m")
    for _ in range(20):
        assert await cache.refresh("m") is first  # every further attempt inside the interval
    assert attester.calls == 2
    # After a failure the interval doubles: 20 s, then 40 s.
    clock.now += REFRESH_MIN_INTERVAL_SECONDS + 1
    assert await cache.refresh("m") is first
    assert attester.calls == 2
    clock.now += REFRESH_MIN_INTERVAL_SECONDS
    with pytest.raises(VerificationFailed):
        await cache.refresh("m")
    assert attester.calls == 3
    clock.now += 2 * REFRESH_MIN_INTERVAL_SECONDS + 1
    assert await cache.refresh("m") is first
    assert attester.calls == 3


async def test_a_refresh_without_a_valid_entry_keeps_the_failure_backoff() -> None:
    cache, attester, clock = make(ttl=100)
    attester.results = [VerificationFailed("down", code="attestation.fetch_failed")] * 3
    for _ in range(5):
        with pytest.raises(VerificationFailed, match="down"):
            await cache.refresh("m")
    assert attester.calls == 1


async def test_a_successful_refresh_resets_the_backoff() -> None:
    from sidecar.proxy.attester import REFRESH_MIN_INTERVAL_SECONDS

    cache, attester, clock = make(ttl=100_000)
    attester.results = [report("m", "0xaa"), report("m", "0xbb", ok=False), report("m", "0xcc"),
                        report("m", "0xdd")]
    await cache.get("m")
    with pytest.raises(VerificationFailed):
        await cache.refresh("m")
    clock.now += 2 * REFRESH_MIN_INTERVAL_SECONDS
    assert (await cache.refresh("m")).report.attested_keys == {"0xcc"}
    clock.now += REFRESH_MIN_INTERVAL_SECONDS
    assert (await cache.refresh("m")).report.attested_keys == {"0xdd"}


async def test_the_failure_memory_is_bounded_expires_and_keeps_no_traceback() -> None:
    # Issue 11, finding 6: every made-up model name left a failure entry with its traceback.
    import gc
    import sys

    from sidecar.proxy import attester as attester_module

    cache, attester, clock = make()
    names = [f"m{i}" for i in range(attester_module.MAX_REMEMBERED_FAILURES + 500)]
    attester.results = [VerificationFailed("no attestation", code="attestation.unavailable")
                        for _ in names]
    for name in names:
        with pytest.raises(VerificationFailed):
            await cache.get(name)
    remembered = cache._failed  # noqa: SLF001 - the bound is the point of the test
    assert len(remembered) == attester_module.MAX_REMEMBERED_FAILURES
    assert not any(isinstance(o, BaseException) for o in gc.get_referents(*remembered.values()))
    assert sys.getsizeof(remembered) < 200_000
    # An expired entry is gone once anything new is remembered.
    clock.now += attester_module.FAILED_ATTESTATION_BACKOFF_SECONDS + 1
    attester.results = [VerificationFailed("no attestation", code="attestation.unavailable")]
    with pytest.raises(VerificationFailed, match="no attestation"):
        await cache.get("fresh")
    assert list(remembered) == ["fresh"]
    # From memory, the error is the same code and kind.
    with pytest.raises(VerificationFailed, match="no attestation") as info:
        await cache.get("fresh")
    assert info.value.code == "attestation.unavailable" and attester.calls == len(names) + 1


async def test_a_name_not_admitted_costs_no_attestation() -> None:
    from sidecar.errors import BadRequest
    from sidecar.proxy.model_names import KnownModelNames

    fetches: list[int] = []

    async def fetch_list() -> frozenset[str]:
        fetches.append(1)
        return frozenset({"listed"})

    clock = Clock()
    known = KnownModelNames(fetch_list, {"TEE/named"}, clock=clock)
    attester = FakeAttester()
    cache = AttestationCache(attester, lambda _: 100, admit=known.admit,  # type: ignore[arg-type]
                             clock=clock)
    for i in range(100):
        with pytest.raises(BadRequest, match="neither listed") as info:
            await cache.get(f"made-up-{i}")
        assert info.value.code == "request.unknown_model" and info.value.http_status == 404
    assert attester.calls == 0 and len(fetches) == 1
    attester.results = [report("listed", "0xaa"), report("TEE/named", "0xbb")]
    await cache.get("listed")
    await cache.get("TEE/named")
    assert attester.calls == 2 and len(fetches) == 1


@pytest.mark.parametrize("shape", ["flat", "near"])
def test_the_canonical_report_keeps_every_node_field_and_drops_only_the_unknown(
        shape: str) -> None:
    import json

    from sidecar.providers.wire import parse_attestation_document
    from sidecar.providers.wire import canonical_report
    from sidecar.simulator.evidence import SimulatedEvidence
    from sidecar.simulator.provider import Faults, SigningNode

    faults = Faults(evidence={"shape": "near"} if shape == "near" else {})
    nonce = "ab" * 32
    report = SimulatedEvidence()([SigningNode(), SigningNode()], "ecdsa", nonce,
                                 bytes.fromhex(nonce), faults)
    nodes = report["model_attestations" if shape == "near" else "all_attestations"]
    nodes.append(dict(nodes[0], unknown="pad" * 100))  # a repeat, padded
    report["padding"] = "x" * 1000
    body = json.dumps(report).encode()
    canonical = canonical_report(body)
    kept = json.loads(canonical)
    assert "padding" not in kept and canonical_report(canonical) == canonical
    assert not any("unknown" in n for n in kept["model_attestations" if shape == "near"
                                                else "all_attestations"])
    original, reduced = parse_attestation_document(body), parse_attestation_document(canonical)
    assert [n.wire for n in reduced.nodes] == [n.wire for n in original.nodes][:-1]


async def test_a_remembered_failure_keeps_its_type() -> None:
    """The back-off answers with the same kind of error: "no attestation" (404) stays
    ``AttestationUnavailable``, which ``allow_unattested_models`` is decided on, never a code
    string."""
    from sidecar.errors import AttestationUnavailable

    cache, attester, _ = make()
    attester.results = [AttestationUnavailable("provider has no attestation for m (HTTP 404)")]
    for _ in range(2):
        with pytest.raises(AttestationUnavailable) as caught:
            await cache.get("m")
        assert caught.value.code == "attestation.unavailable"
    assert attester.calls == 1
