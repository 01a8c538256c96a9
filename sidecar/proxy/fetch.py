"""The one I/O boundary: every byte the sidecar reads from another server passes through here.

In the spirit of python-tuf's ``FetcherInterface`` (STYLE.md "Tests"): one bounded call takes a
URL, a byte limit, a timeout, what the fetch is for and the failure code to use, and maps every
transport failure (timeout, refused or reset connection, TLS, the pinned-certificate mismatch)
once, here, to the project's errors:

- evidence (attestation reports, signatures, DCAP collateral, NRAS, provenance bundles, the
  model list): :meth:`Fetcher.fetch` raises ``VerificationIncomplete`` with the caller's code
  (the fetch could not decide anything), or ``VerificationFailed`` for a certificate that is
  not the attested one;
- the completion path: :meth:`Fetcher.open` raises ``UpstreamError``, and
  :func:`read_completion` / :func:`read_error_body` read the answer within their bounds.

What the status codes mean stays with each caller (a 404 is "no attestation" for one and
"retry" for another); this module only moves bounded bytes.

The TLS certificate of the connection a fetch used is recorded by
:class:`PeerRecordingConnector` through aiohttp's public ``BaseConnector.connect`` (it returns
the connection, pooled or new, whose transport holds the TLS object), handed to the fetch through
a context variable: the connector runs in the task that sends the request.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import CIMultiDictProxy

from sidecar.errors import SidecarError, UpstreamError, VerificationFailed, VerificationIncomplete

__all__ = [
    "TRANSPORT_ERRORS",
    "Fetched",
    "Fetcher",
    "PeerCertificate",
    "PeerRecordingConnector",
    "read_completion",
    "read_error_body",
]

#: What a transport can raise while a request is sent or its body read. ``OSError`` covers
#: socket errors aiohttp does not wrap; ``ValueError`` an URL aiohttp cannot send.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)

SslSetting = ssl.SSLContext | aiohttp.Fingerprint | bool


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The TLS certificate seen on one connection: its DER sha256 and its SPKI sha256."""

    der_sha256: bytes
    spki_sha256: bytes


@dataclass(frozen=True, slots=True)
class Fetched:
    """One answer: its status, its body (read only for the statuses the caller reads), the
    response headers and the TLS certificate of the connection it came over."""

    status: int
    body: bytes
    headers: CIMultiDictProxy[str]
    peer: PeerCertificate | None


class _PeerSlot:
    __slots__ = ("peer",)

    def __init__(self) -> None:
        self.peer: PeerCertificate | None = None


_PEER_SLOT: ContextVar[_PeerSlot | None] = ContextVar("tee_sidecar_peer_slot", default=None)


def peer_certificate(transport: asyncio.BaseTransport | None) -> PeerCertificate | None:
    """The certificate a TLS transport's peer presented (``None`` over plain HTTP)."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return PeerCertificate(hashlib.sha256(der).digest(), hashlib.sha256(spki).digest())


class PeerRecordingConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that tells the fetch in progress which certificate its connection has.

    A small body arrives with the headers and aiohttp releases the connection before the caller
    sees the response, so the certificate is read here, when the connection is handed out
    (new or reused from the pool), not from the response afterwards.
    """

    async def connect(self, req: ClientRequest, traces: list[Trace],
                      timeout: aiohttp.ClientTimeout) -> Connection:
        connection = await super().connect(req, traces, timeout)
        slot = _PEER_SLOT.get()
        if slot is not None:
            protocol: ResponseHandler | None = connection.protocol
            slot.peer = peer_certificate(protocol.transport if protocol is not None else None)
        return connection


class _TooLarge(Exception):
    """The body passed its byte limit (internal: each reader maps it to its own error)."""


async def _read_into(resp: aiohttp.ClientResponse, received: bytearray, limit: int, *,
                     trust_length: bool = True) -> None:
    """Append the body to ``received``, stopping once it passes ``limit`` bytes.

    With ``trust_length`` an announced ``Content-Length`` over the limit stops it before any
    byte is read; the completion readers keep what arrived (a receipt records it), so they read.

    Raises:
        _TooLarge: the announced or received body is larger than ``limit``.
        aiohttp.ClientError, asyncio.TimeoutError: transport failures, for the caller to map.
    """
    if trust_length and resp.content_length is not None and resp.content_length > limit:
        raise _TooLarge
    async for chunk in resp.content.iter_any():
        received += chunk
        if len(received) > limit:
            raise _TooLarge


def _evidence_failure(exc: BaseException, purpose: str, url: str, code: str) -> SidecarError:
    # The one mapping of transport failures on the evidence path.
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return VerificationFailed("the provider's TLS certificate is not the attested one",
                                  code="upstream.tls_pin_mismatch")
    return VerificationIncomplete(f"{purpose}: cannot fetch {url}, failed: {type(exc).__name__}",
                                  code=code)


def _completion_failure(exc: BaseException) -> UpstreamError:
    # The one mapping of transport failures on the completion path.
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return UpstreamError("the provider's TLS certificate is not the attested one",
                             code="upstream.tls_pin_mismatch")
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError("the provider did not answer in time", code="upstream.timeout")
    return UpstreamError(f"cannot reach the provider: {type(exc).__name__}",
                         code="upstream.unavailable")


class Fetcher:
    """Bounded fetches over the application's one ``aiohttp.ClientSession``."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def fetch(self, url: str, *, limit: int, timeout: float, purpose: str, code: str,
                    method: str = "GET", params: Mapping[str, str] | None = None,
                    headers: Mapping[str, str] | None = None, data: bytes | None = None,
                    ssl: SslSetting = True, read_statuses: Collection[int] = (200,),
                    allow_redirects: bool = False,
                    too_large_code: str | None = None) -> Fetched:
        """Fetch evidence: one request, its body read within ``limit`` bytes and ``timeout``
        seconds when its status is in ``read_statuses`` (else left unread: ``b""``).

        Args:
            purpose: what is fetched, for messages (``"attestation report"``).
            code: the failure code of a fetch that could not complete.
            too_large_code: when set, an oversized body is evidence that fails with this code
                (``VerificationFailed``); else it is ``code`` (``VerificationIncomplete``).

        Raises:
            VerificationFailed: ``upstream.tls_pin_mismatch`` (not the attested certificate);
                ``too_large_code`` for an oversized body when set.
            VerificationIncomplete: ``code`` on timeouts, connection and TLS failures, and an
                oversized body when ``too_large_code`` is not set.
        """
        slot = _PeerSlot()
        token = _PEER_SLOT.set(slot)
        body = bytearray()
        try:
            async with self._session.request(
                    method, url, params=params, headers=headers, data=data, ssl=ssl,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=allow_redirects) as resp:
                if resp.status in read_statuses:
                    await _read_into(resp, body, limit)
                return Fetched(resp.status, bytes(body), resp.headers, slot.peer)
        except _TooLarge:
            message = f"{purpose} is larger than {limit} bytes"
            if too_large_code is not None:
                raise VerificationFailed(message, code=too_large_code) from None
            raise VerificationIncomplete(message, code=code) from None
        except TRANSPORT_ERRORS as exc:
            raise _evidence_failure(exc, purpose, url, code) from None
        finally:
            _PEER_SLOT.reset(token)

    async def open(self, method: str, url: str, *, data: bytes | None,
                   headers: Mapping[str, str], timeout: aiohttp.ClientTimeout,
                   ssl: SslSetting = True) -> aiohttp.ClientResponse:
        """Send a completion request and return the response with its body unread (read it
        with :func:`read_completion` or :func:`read_error_body`, or stream it).

        Raises:
            UpstreamError: ``upstream.tls_pin_mismatch``, ``upstream.timeout`` or
                ``upstream.unavailable``.
        """
        try:
            return await self._session.request(
                method, url, data=data, headers=headers, timeout=timeout,
                auto_decompress=False, allow_redirects=False, ssl=ssl)
        except TRANSPORT_ERRORS as exc:
            raise _completion_failure(exc) from None


def stream_timeout_error(stream_timeout: float) -> UpstreamError:
    """The error of an answer that outlived ``limits.stream_timeout``."""
    return UpstreamError(
        f"the response took longer than limits.stream_timeout ({stream_timeout} s)",
        code="limits.stream_timeout", http_status=504)


async def read_completion(resp: aiohttp.ClientResponse, *, limit: int,
                          stream_timeout: float) -> tuple[bytes, SidecarError | None]:
    """A completion body within ``limit`` bytes (``limits.max_response_bytes``) and
    ``stream_timeout`` seconds (``limits.stream_timeout``).

    Returns the bytes received and, when the read did not complete, why: a completion cut on
    the path is still judged, so its receipt records it (the enclave may have signed it).
    Failure codes: ``limits.response_too_large``, ``limits.stream_timeout``, ``upstream.timeout``,
    ``stream.truncated``.

    Raises:
        Nothing: every failure is returned.
    """
    received = bytearray()
    deadline = asyncio.timeout(stream_timeout)
    try:
        async with deadline:
            await _read_into(resp, received, limit, trust_length=False)
    except _TooLarge:
        return bytes(received), VerificationFailed(
            f"response exceeds limits.max_response_bytes ({limit})",
            code="limits.response_too_large")
    except asyncio.TimeoutError:
        if deadline.expired():
            return bytes(received), stream_timeout_error(stream_timeout)
        return bytes(received), UpstreamError("the provider stopped sending",
                                              code="upstream.timeout")
    except TRANSPORT_ERRORS as exc:
        return bytes(received), UpstreamError(
            f"upstream connection broke mid-body: {type(exc).__name__}", code="stream.truncated")
    return bytes(received), None


async def read_error_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of an upstream error body; ``b""`` when it cannot be read (the
    error is passed on without the provider's message).

    Raises:
        Nothing.
    """
    received = bytearray()
    try:
        await _read_into(resp, received, limit, trust_length=False)
    except _TooLarge:
        pass
    except TRANSPORT_ERRORS:
        return b""
    return bytes(received[:limit])
