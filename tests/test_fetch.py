"""The one bounded fetcher (sidecar/proxy/fetch.py): limits, timeouts and their failure codes."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.errors import UpstreamError, VerificationFailed, VerificationIncomplete
from sidecar.proxy.fetch import Fetcher, PeerRecordingConnector, read_completion, read_error_body

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _server(aiohttp_server: ServerFactory, body: bytes, delay: float = 0.0,
                  status: int = 200) -> TestServer:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return web.Response(body=body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await aiohttp_server(app)


async def test_a_body_within_the_limit_is_read(aiohttp_server: ServerFactory,
                                               session: aiohttp.ClientSession) -> None:
    server = await _server(aiohttp_server, b"x" * 10)
    fetched = await Fetcher(session).fetch(str(server.make_url("/a")), limit=10, timeout=5,
                                           purpose="thing", code="thing.unavailable")
    assert (fetched.status, fetched.body, fetched.peer) == (200, b"x" * 10, None)


async def test_an_unread_status_leaves_the_body_unread(aiohttp_server: ServerFactory,
                                                       session: aiohttp.ClientSession) -> None:
    server = await _server(aiohttp_server, b"nope", status=404)
    fetched = await Fetcher(session).fetch(str(server.make_url("/a")), limit=10, timeout=5,
                                           purpose="thing", code="thing.unavailable")
    assert (fetched.status, fetched.body) == (404, b"")


@pytest.mark.parametrize(("too_large_code", "error", "code"), [
    (None, VerificationIncomplete, "thing.unavailable"),
    ("evidence.too_large", VerificationFailed, "evidence.too_large"),
])
async def test_an_oversized_body_fails_with_its_code(
        aiohttp_server: ServerFactory, session: aiohttp.ClientSession, too_large_code: str | None,
        error: type[VerificationFailed], code: str) -> None:
    server = await _server(aiohttp_server, b"x" * 11)
    with pytest.raises(error, match="thing is larger than 10 bytes") as info:
        await Fetcher(session).fetch(str(server.make_url("/a")), limit=10, timeout=5,
                                     purpose="thing", code="thing.unavailable",
                                     too_large_code=too_large_code)
    assert type(info.value) is error
    assert info.value.code == code


async def test_a_slow_answer_is_incomplete_with_the_callers_code(
        aiohttp_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await _server(aiohttp_server, b"late", delay=2)
    with pytest.raises(VerificationIncomplete, match="thing: cannot fetch .*TimeoutError") as info:
        await Fetcher(session).fetch(str(server.make_url("/a")), limit=10, timeout=0.2,
                                     purpose="thing", code="thing.unavailable")
    assert info.value.code == "thing.unavailable"


async def test_a_refused_connection_is_incomplete(session: aiohttp.ClientSession,
                                                  unused_tcp_port: int) -> None:
    with pytest.raises(VerificationIncomplete) as info:
        await Fetcher(session).fetch(f"http://127.0.0.1:{unused_tcp_port}/", limit=10, timeout=5,
                                     purpose="thing", code="thing.unavailable")
    assert info.value.code == "thing.unavailable"


async def test_a_refused_completion_is_an_upstream_error(session: aiohttp.ClientSession,
                                                         unused_tcp_port: int) -> None:
    with pytest.raises(UpstreamError) as info:
        await Fetcher(session).open("POST", f"http://127.0.0.1:{unused_tcp_port}/", data=b"{}",
                                    headers={}, timeout=aiohttp.ClientTimeout(total=5))
    assert info.value.code == "upstream.unavailable"


async def test_a_completion_over_its_limit_keeps_what_arrived(
        aiohttp_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await _server(aiohttp_server, b"y" * 100)
    async with session.get(server.make_url("/")) as resp:
        body, failure = await read_completion(resp, limit=10, stream_timeout=5)
    assert failure is not None and failure.code == "limits.response_too_large"
    assert body.startswith(b"y") and len(body) > 10


async def test_an_error_body_is_cut_at_its_limit(aiohttp_server: ServerFactory,
                                                 session: aiohttp.ClientSession) -> None:
    server = await _server(aiohttp_server, b"z" * 100, status=500)
    async with session.get(server.make_url("/")) as resp:
        assert await read_error_body(resp, 10) == b"z" * 10


async def _small(_: web.Request) -> web.Response:
    return web.Response(body=b"small")


def _self_signed(directory: Path) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, hashlib.sha256(cert.public_bytes(
        serialization.Encoding.DER)).digest()


async def test_the_connector_records_the_certificate_of_new_and_pooled_connections(
        aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    cert_path, key_path, der_sha256 = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    app = web.Application()
    app.router.add_get("/", _small)
    server = await aiohttp_server(app, ssl=server_tls)  # type: ignore[call-arg]
    client_tls = ssl.create_default_context(cafile=str(cert_path))
    url = f"https://127.0.0.1:{server.port}/"
    async with aiohttp.ClientSession(connector=PeerRecordingConnector()) as recording:
        fetcher = Fetcher(recording)
        first = await fetcher.fetch(url, ssl=client_tls, limit=10, timeout=5, purpose="thing",
                                    code="thing.unavailable")
        pooled = await fetcher.fetch(url, ssl=client_tls, limit=10, timeout=5, purpose="thing",
                                     code="thing.unavailable")
    assert first.peer is not None and first.peer.der_sha256 == der_sha256
    assert pooled.peer == first.peer
    async with aiohttp.ClientSession() as plain:
        unrecorded = await Fetcher(plain).fetch(url, ssl=client_tls, limit=10, timeout=5,
                                                purpose="thing", code="thing.unavailable")
    assert unrecorded.peer is None  # only the recording connector knows the certificate


async def test_a_certificate_that_is_not_the_pinned_one_fails(
        aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    cert_path, key_path, der_sha256 = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    app = web.Application()
    app.router.add_get("/", _small)
    server = await aiohttp_server(app, ssl=server_tls)  # type: ignore[call-arg]
    url = f"https://127.0.0.1:{server.port}/"
    async with aiohttp.ClientSession(connector=PeerRecordingConnector()) as session:
        with pytest.raises(VerificationFailed) as evidence:
            await Fetcher(session).fetch(url, ssl=aiohttp.Fingerprint(bytes(32)), limit=10,
                                         timeout=5, purpose="thing", code="thing.unavailable")
        with pytest.raises(UpstreamError) as completion:
            await Fetcher(session).open("GET", url, data=None, headers={},
                                        timeout=aiohttp.ClientTimeout(total=5),
                                        ssl=aiohttp.Fingerprint(bytes(32)))
    assert evidence.value.code == completion.value.code == "upstream.tls_pin_mismatch"
    assert der_sha256 != bytes(32)
