"""CollateralSource: PCS fetch (against the simulator's PCS routes), disk cache, offline files, failures."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.errors import VerificationIncomplete
from sidecar.proxy.collateral import CollateralSource, _signed_document, quote_platform
from sidecar.simulator.pcs import add_pcs_routes
from sidecar.simulator.tdx_authority import TestTdxAuthority
from sidecar.verify.tdx import collateral_next_update, verify_tdx_quote

ASSETS = Path(__file__).parent / "assets" / "tdx"
NOW = 1_760_000_000
MEASUREMENTS = {
    "report_data": b"\x42" * 64,
    "mrtd": b"\x01" * 48,
    "rtmr0": b"\x02" * 48,
    "rtmr1": b"\x03" * 48,
    "rtmr2": b"\x04" * 48,
    "rtmr3": b"\x05" * 48,
    "mr_config_id": b"\x06" * 48,
}

ServerFactory = Callable[..., Awaitable[TestServer]]


class Clock:
    """A settable clock shared by the simulated PCS and the collateral source."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def authority() -> TestTdxAuthority:
    return TestTdxAuthority()


@pytest.fixture
def quote(authority: TestTdxAuthority) -> bytes:
    return authority.make_quote(**MEASUREMENTS)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def pcs(
    aiohttp_server: ServerFactory, authority: TestTdxAuthority, clock: Clock
) -> tuple[TestServer, list[str]]:
    """The simulator's PCS routes, plus a log of every path requested."""
    hits: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        hits.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[record])
    add_pcs_routes(app, authority, clock=clock)
    server = await aiohttp_server(app)
    return server, hits


def pcs_url(server: TestServer) -> str:
    return str(server.make_url("/pcs"))


def verify(quote: bytes, collateral: str, authority: TestTdxAuthority, now: int = NOW) -> bool:
    report = verify_tdx_quote(
        quote, collateral, root_ca_der=authority.root_ca_der, now=now
    )
    return report.ok


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- fetching from a PCS -------------------------------------------------------------------------


async def test_fetched_collateral_verifies_the_simulator_quote(
    pcs: tuple[TestServer, list[str]],
    session: aiohttp.ClientSession,
    authority: TestTdxAuthority,
    quote: bytes,
    clock: Clock,
) -> None:
    server, hits = pcs
    source = CollateralSource(session, pccs_url=pcs_url(server), clock=clock)

    collateral = await source.get(quote)

    assert verify(quote, collateral, authority)
    assert sorted(hits) == [
        "/pcs/sgx/certification/v4/pckcrl",
        "/pcs/sgx/certification/v4/rootcacrl",
        "/pcs/tdx/certification/v4/qe/identity",
        "/pcs/tdx/certification/v4/tcb",
    ]
    # The signed TCB info is carried verbatim (Intel signs the exact bytes).
    assert json.loads(collateral)["tcb_info"] == authority.tcb_info_json(NOW)


async def test_base_url_with_api_suffix_is_accepted(
    pcs: tuple[TestServer, list[str]], session: aiohttp.ClientSession, authority: TestTdxAuthority, quote: bytes, clock: Clock
) -> None:
    server, _ = pcs
    source = CollateralSource(session, pccs_url=pcs_url(server) + "/tdx/certification/v4/", clock=clock)

    assert verify(quote, await source.get(quote), authority)


async def test_disk_cache_serves_without_network_until_next_update(
    pcs: tuple[TestServer, list[str]],
    session: aiohttp.ClientSession,
    authority: TestTdxAuthority,
    quote: bytes,
    clock: Clock,
    tmp_path: Path,
) -> None:
    server, hits = pcs
    first = CollateralSource(session, pccs_url=pcs_url(server), cache_dir=tmp_path, clock=clock)
    collateral = await first.get(quote)
    assert len(hits) == 4
    assert (tmp_path / "tdx-5E0000000001-platform.json").read_text() == collateral

    # A new source (a restarted sidecar) whose PCCS is unreachable still has the collateral.
    offline = CollateralSource(
        session, pccs_url=f"http://127.0.0.1:{unused_port()}", cache_dir=tmp_path, clock=clock
    )
    assert await offline.get(quote) == collateral
    assert len(hits) == 4

    # Past the earliest nextUpdate the cache is stale and the PCS is asked again.
    clock.now = collateral_next_update(collateral) + 1
    refreshed = await first.get(quote)
    assert len(hits) == 8
    assert refreshed != collateral
    assert verify(quote, refreshed, authority, now=int(clock.now))


async def test_corrupt_cache_file_is_refetched(
    pcs: tuple[TestServer, list[str]], session: aiohttp.ClientSession, authority: TestTdxAuthority, quote: bytes, clock: Clock, tmp_path: Path
) -> None:
    server, hits = pcs
    (tmp_path / "tdx-5E0000000001-platform.json").write_text("{not json")
    source = CollateralSource(session, pccs_url=pcs_url(server), cache_dir=tmp_path, clock=clock)

    assert verify(quote, await source.get(quote), authority)
    assert len(hits) == 4


async def test_concurrent_requests_share_one_fetch(
    pcs: tuple[TestServer, list[str]], session: aiohttp.ClientSession, quote: bytes, clock: Clock, tmp_path: Path
) -> None:
    server, hits = pcs
    source = CollateralSource(session, pccs_url=pcs_url(server), cache_dir=tmp_path, clock=clock)

    results = await asyncio.gather(*(source.get(quote) for _ in range(5)))

    assert len(set(results)) == 1
    assert len(hits) == 4


# --- offline collateral --------------------------------------------------------------------------


async def test_offline_directory_is_looked_up_by_fmspc(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    real_quote = (ASSETS / "tdx_quote").read_bytes()
    real_collateral = (ASSETS / "tdx_quote_collateral.json").read_text()
    (tmp_path / "B0C06F000000.json").write_text(real_collateral)
    source = CollateralSource(session, pccs_url="http://127.0.0.1:9", offline_path=tmp_path)

    assert await source.get(real_quote) == real_collateral


async def test_offline_directory_falls_back_to_collateral_json(
    session: aiohttp.ClientSession, authority: TestTdxAuthority, quote: bytes, tmp_path: Path
) -> None:
    (tmp_path / "collateral.json").write_text(authority.collateral_json(NOW))
    source = CollateralSource(session, offline_path=tmp_path)

    assert verify(quote, await source.get(quote), authority)


async def test_offline_single_file_serves_every_quote(
    session: aiohttp.ClientSession, authority: TestTdxAuthority, quote: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "sim-collateral.json"
    path.write_text(authority.collateral_json(NOW))
    source = CollateralSource(session, offline_path=path)

    assert verify(quote, await source.get(quote), authority)


async def test_offline_directory_without_the_platform_is_unavailable(
    session: aiohttp.ClientSession, quote: bytes, tmp_path: Path
) -> None:
    (tmp_path / "B0C06F000000.json").write_text("{}")
    source = CollateralSource(session, offline_path=tmp_path)

    with pytest.raises(VerificationIncomplete, match="no offline collateral for FMSPC 5E0000000001") as info:
        await source.get(quote)
    assert info.value.code == "tdx.collateral_unavailable"


# --- failures are VerificationIncomplete ----------------------------------------------------------


async def test_unreachable_pccs_is_incomplete(session: aiohttp.ClientSession, quote: bytes) -> None:
    source = CollateralSource(session, pccs_url=f"http://127.0.0.1:{unused_port()}", timeout=5)

    with pytest.raises(VerificationIncomplete, match="cannot fetch http://127.0.0.1") as info:
        await source.get(quote)
    assert info.value.code == "tdx.collateral_unavailable"


async def test_unknown_platform_at_the_pcs_is_incomplete(
    pcs: tuple[TestServer, list[str]], session: aiohttp.ClientSession, clock: Clock
) -> None:
    server, _ = pcs
    real_quote = (ASSETS / "tdx_quote").read_bytes()
    source = CollateralSource(session, pccs_url=pcs_url(server), clock=clock)

    with pytest.raises(VerificationIncomplete, match="TCB info: .*tcb\\?fmspc=B0C06F000000 answered HTTP 404") as info:
        await source.get(real_quote)
    assert info.value.code == "tdx.collateral_unavailable"


async def test_slow_pcs_times_out_as_incomplete(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, quote: bytes
) -> None:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/{tail:.*}", stall)
    server = await aiohttp_server(app)
    source = CollateralSource(session, pccs_url=str(server.make_url("")), timeout=0.2)

    with pytest.raises(VerificationIncomplete, match="cannot fetch .*TimeoutError"):
        await source.get(quote)


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        pytest.param("{}", {}, "lacks 'tcbInfo' or 'signature'", id="no_members"),
        pytest.param('{"tcbInfo":{},"signature":"zz"}', {}, "non-hexadecimal", id="signature_not_hex"),
        pytest.param("[]", {}, "not a JSON object", id="array"),
        pytest.param('{"tcbInfo":{},"signature":"00"}', {}, "missing header TCB-Info-Issuer-Chain", id="no_chain_header"),
    ],
)
async def test_pcs_answers_outside_the_contract_are_incomplete(
    aiohttp_server: ServerFactory,
    session: aiohttp.ClientSession,
    authority: TestTdxAuthority,
    quote: bytes,
    body: str,
    headers: dict[str, str],
    message: str,
) -> None:
    async def broken_tcb(request: web.Request) -> web.Response:
        return web.Response(text=body, headers=headers)

    app = web.Application()
    app.router.add_get("/pcs/tdx/certification/v4/tcb", broken_tcb)
    add_pcs_routes(app, authority, clock=lambda: NOW)
    server = await aiohttp_server(app)
    source = CollateralSource(session, pccs_url=pcs_url(server))

    with pytest.raises(VerificationIncomplete, match=message) as info:
        await source.get(quote)
    assert info.value.code == "tdx.collateral_unavailable"


@pytest.mark.parametrize(
    "bad_quote",
    [pytest.param(b"", id="empty"), pytest.param(b"\x04\x00" + bytes(1000), id="zeros")],
)
async def test_quote_without_a_platform_is_incomplete(session: aiohttp.ClientSession, bad_quote: bytes) -> None:
    source = CollateralSource(session, pccs_url="http://127.0.0.1:9")

    with pytest.raises(VerificationIncomplete, match="cannot read the platform \\(FMSPC\\) from the quote"):
        await source.get(bad_quote)


def test_quote_platform_reads_fmspc_and_ca() -> None:
    assert quote_platform((ASSETS / "tdx_quote").read_bytes()) == ("B0C06F000000", "platform")


def test_signed_document_keeps_the_signed_text_verbatim() -> None:
    body = b'{ "tcbInfo" : {"z":1,  "a":[1.50, "\\u00e9"]} , "signature":"00ff" }'

    assert _signed_document(body, "tcbInfo") == ('{"z":1,  "a":[1.50, "\\u00e9"]}', "00ff")
