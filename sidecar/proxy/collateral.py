"""Where the DCAP collateral of a TDX quote comes from: offline files, a disk cache, or a PCS/PCCS.

``CollateralSource.get(quote)`` returns collateral JSON in the ``QuoteCollateralV3`` shape that
``sidecar.verify.tdx.verify_tdx_quote`` takes. Resolution order:

1. **Offline** (``offline_path`` set): never touches the network.
   - ``offline_path`` is a *file*: that one collateral document serves every quote (a
     single-platform deployment, or the collateral that ships with a test).
   - ``offline_path`` is a *directory*: ``<FMSPC>.json`` (12 upper-case hex digits, e.g.
     ``B0C06F000000.json``) for the quote's platform, else ``collateral.json``.
   Offline collateral is returned even when expired: the verifier then says
   ``tdx.collateral_expired``, which is more useful than "unavailable".
2. **Cache** (``cache_dir`` set): ``tdx-<FMSPC>-<ca>.json``, used while the clock is before the
   collateral's earliest ``nextUpdate`` (:func:`sidecar.verify.tdx.collateral_next_update`).
3. **PCS/PCCS** over the injected ``aiohttp.ClientSession``: the Intel PCS v4 endpoints
   (``tdx/certification/v4/tcb?fmspc=``, ``tdx/certification/v4/qe/identity``,
   ``sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der``, the root CA CRL), with
   their URL-encoded issuer-chain headers. A PCCS serves the root CA CRL at
   ``sgx/certification/v4/rootcacrl`` (hex); Intel's PCS does not, so for it the CRL comes from the
   root certificate's distribution point, :data:`INTEL_ROOT_CA_CRL_URL`.

Nothing fetched is trusted: collateral is only *data* until the verifier checks its signatures
against the pinned root. So a cache poisoned by a hostile PCCS fails verification; it cannot
pass it. Every failure here raises :class:`~sidecar.errors.VerificationIncomplete` with code
``tdx.collateral_unavailable``: without collateral nothing can be decided, and the caller fails
closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.issuers import INTEL_PCS_URL
from sidecar.proxy.fetch import Fetcher
from sidecar.verify.tdx import MAX_COLLATERAL_BYTES, collateral_next_update, quote_platform

__all__ = [
    "INTEL_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "MAX_RESPONSE_BYTES",
    "CollateralSource",
]

#: CRL distribution point of the Intel SGX Root CA certificate (the CRL is DER).
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
#: One PCS answer (a CRL, TCB info) larger than this is refused: Intel's largest, the processor
#: PCK CRL, is a few hundred KB.
MAX_RESPONSE_BYTES = MAX_COLLATERAL_BYTES
#: An issuer-chain header longer than this is refused (Intel's are ~2 KB URL-encoded).
MAX_CHAIN_HEADER_CHARS = 32 * 1024
#: Default time for one PCS request, connect to last byte.
DEFAULT_TIMEOUT_SECONDS = 30.0

_CODE = "tdx.collateral_unavailable"
_PCK_CRL_CHAIN_HEADER = "SGX-PCK-CRL-Issuer-Chain"
# TDX TCB info carries "TCB-Info-Issuer-Chain" on PCS v4; SGX (and some PCCS) use the SGX- prefix.
_TCB_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
_QE_CHAIN_HEADER = "SGX-Enclave-Identity-Issuer-Chain"


def _unavailable(message: str) -> VerificationIncomplete:
    return VerificationIncomplete(message, code=_CODE)


def _raw_members(body: str) -> dict[str, str]:
    """The exact source text of each top-level member of a JSON object.

    Intel signs the bytes of ``tcbInfo`` / ``enclaveIdentity`` as they appear in the response;
    re-serialising a parsed object could reorder keys or change number spelling and break the
    signature, so the members are cut out of the body verbatim.

    Raises:
        ValueError: if ``body`` is not a JSON object.
    """
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}
    index = _skip_ws(body, 0)
    if body[index : index + 1] != "{":
        raise ValueError("response is not a JSON object")
    index = _skip_ws(body, index + 1)
    while body[index : index + 1] != "}":
        key, index = decoder.raw_decode(body, index)
        if not isinstance(key, str):
            raise ValueError("JSON object key is not a string")
        index = _skip_ws(body, index)
        if body[index : index + 1] != ":":
            raise ValueError("expected ':' in JSON object")
        start = _skip_ws(body, index + 1)
        _, end = decoder.raw_decode(body, start)
        members[key] = body[start:end]
        index = _skip_ws(body, end)
        if body[index : index + 1] == ",":
            index = _skip_ws(body, index + 1)
        elif body[index : index + 1] != "}":
            raise ValueError("expected ',' or '}' in JSON object")
    if _skip_ws(body, index + 1) != len(body):
        raise ValueError("trailing data after JSON object")
    return members


def _skip_ws(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _signed_document(body: bytes, member: str) -> tuple[str, str]:
    """Split a PCS answer ``{"<member>": {...}, "signature": "<hex>"}`` into (signed text, signature).

    Raises:
        ValueError: if the answer does not have that shape.
    """
    members = _raw_members(body.decode("utf-8"))
    if member not in members or "signature" not in members:
        raise ValueError(f"answer lacks {member!r} or 'signature'")
    signature = json.loads(members["signature"])
    if not isinstance(signature, str):
        raise ValueError("signature is not a string")
    bytes.fromhex(signature)  # must be hex: QuoteCollateralV3 stores it as bytes
    return members[member], signature


def _crl_bytes(body: bytes) -> bytes:
    """A CRL as DER; PCCS serves some CRLs hex-encoded, Intel's PCS as DER.

    Raises:
        ValueError: if it is neither.
    """
    if body[:1] == b"\x30":
        return body
    return bytes.fromhex(body.decode("ascii").strip())


class CollateralSource:
    """Provides DCAP collateral for TDX quotes (offline, cached, or from a PCS/PCCS).

    Args:
        session: the application's ``aiohttp.ClientSession`` (created in ``cleanup_ctx``).
        pccs_url: PCS or PCCS base URL; a trailing ``/sgx|tdx/certification/v4`` is tolerated.
        offline_path: collateral file or directory; when set the network is never used.
        cache_dir: where fetched collateral is kept until its ``nextUpdate``; ``None`` = no disk cache.
        timeout: seconds for each PCS request.
        clock: unix time source (injected for tests).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        pccs_url: str = INTEL_PCS_URL,
        offline_path: Path | None = None,
        cache_dir: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        base = pccs_url.rstrip("/")
        for suffix in ("/sgx/certification/v4", "/tdx/certification/v4"):
            base = base.removesuffix(suffix)
        self._base = base
        self._is_intel_pcs = base.startswith(INTEL_PCS_URL)
        self._fetcher = Fetcher(session)
        self._offline_path = offline_path
        self._cache_dir = cache_dir
        self._timeout = timeout
        self._clock = clock
        # Single flight per platform: concurrent attestations of one model share one fetch.
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, quote: bytes) -> str:
        """Collateral JSON for ``quote``.

        Raises:
            VerificationIncomplete: (code ``tdx.collateral_unavailable``) if the quote names no
                platform, the offline file is missing or unreadable, or the PCS cannot be reached
                or answers outside its contract.
        """
        fmspc, ca = quote_platform(quote)
        if self._offline_path is not None:
            return self._read_offline(fmspc)
        key = f"tdx-{fmspc}-{ca}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._read_cache(key)
            if cached is not None:
                return cached
            collateral = await self._fetch(fmspc, ca)
            self._write_cache(key, collateral)
            return collateral

    # --- offline and cache -----------------------------------------------------------------------

    def _read_offline(self, fmspc: str) -> str:
        path = self._offline_path
        assert path is not None  # noqa: S101 - checked by the caller
        if path.is_dir():
            candidates = [path / f"{fmspc}.json", path / "collateral.json"]
            chosen = next((c for c in candidates if c.is_file()), None)
            if chosen is None:
                raise _unavailable(
                    f"no offline collateral for FMSPC {fmspc} in {path} "
                    f"(expected {fmspc}.json or collateral.json)"
                )
            path = chosen
        try:
            return self._read_bounded(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _unavailable(f"cannot read offline collateral {path}: {exc}") from exc

    @staticmethod
    def _read_bounded(path: Path) -> str:
        with path.open("rb") as handle:
            data = handle.read(MAX_COLLATERAL_BYTES + 1)
        if len(data) > MAX_COLLATERAL_BYTES:
            raise ValueError(f"more than {MAX_COLLATERAL_BYTES} bytes")
        return data.decode("utf-8")

    def _read_cache(self, key: str) -> str | None:
        if self._cache_dir is None:
            return None
        path = self._cache_dir / f"{key}.json"
        try:
            text = self._read_bounded(path)
            fresh = self._clock() < collateral_next_update(text)
        except (OSError, UnicodeDecodeError, ValueError, VerificationFailed):
            return None  # missing or corrupt: fetch again
        return text if fresh else None

    def _write_cache(self, key: str, collateral: str) -> None:
        if self._cache_dir is None:
            return
        try:
            if self._clock() >= collateral_next_update(collateral):
                return  # already stale when served: do not pin it
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            path = self._cache_dir / f"{key}.json"
            # Write then rename, so a reader never sees half a file.
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(collateral, encoding="utf-8")
            os.replace(tmp, path)
        except (OSError, VerificationFailed):
            pass  # a cache that cannot be written only costs a refetch

    # --- PCS / PCCS --------------------------------------------------------------------------------

    def _url(self, tee: str, path: str) -> str:
        return f"{self._base}/{tee}/certification/v4/{path}"

    async def _fetch(self, fmspc: str, ca: str) -> str:
        pck_crl_response, tcb_response, qe_response = await asyncio.gather(
            self._get(self._url("sgx", f"pckcrl?ca={ca}&encoding=der"), "PCK CRL"),
            self._get(self._url("tdx", f"tcb?fmspc={fmspc}"), "TCB info"),
            self._get(self._url("tdx", "qe/identity?update=standard"), "QE identity"),
        )
        root_crl_url = (
            INTEL_ROOT_CA_CRL_URL if self._is_intel_pcs else self._url("sgx", "rootcacrl")
        )
        root_crl_response = await self._get(root_crl_url, "root CA CRL")
        try:
            tcb_info, tcb_signature = _signed_document(tcb_response[0], "tcbInfo")
            qe_identity, qe_signature = _signed_document(qe_response[0], "enclaveIdentity")
            collateral: dict[str, Any] = {
                "pck_crl_issuer_chain": _chain(pck_crl_response[1], (_PCK_CRL_CHAIN_HEADER,)),
                "root_ca_crl": _crl_bytes(root_crl_response[0]).hex(),
                "pck_crl": _crl_bytes(pck_crl_response[0]).hex(),
                "tcb_info_issuer_chain": _chain(tcb_response[1], _TCB_CHAIN_HEADERS),
                "tcb_info": tcb_info,
                "tcb_info_signature": tcb_signature,
                "qe_identity_issuer_chain": _chain(qe_response[1], (_QE_CHAIN_HEADER,)),
                "qe_identity": qe_identity,
                "qe_identity_signature": qe_signature,
            }
            text = json.dumps(collateral)
            collateral_next_update(text)  # refuses a document that cannot even be dated
        except (ValueError, UnicodeDecodeError, VerificationFailed) as exc:
            raise _unavailable(f"collateral service answered outside the PCS contract: {exc}") from exc
        return text

    async def _get(self, url: str, what: str) -> tuple[bytes, dict[str, str]]:
        """GET ``url``; return the body and the headers we read, bounded.

        Raises:
            VerificationIncomplete: on any transport failure, non-2xx status or oversize body.
        """
        # Redirects are followed (as before the fetcher existed): Intel serves its CRLs from a
        # CDN, and nothing fetched is trusted before the verifier checks it against the root.
        fetched = await self._fetcher.fetch(url, timeout=self._timeout, limit=MAX_RESPONSE_BYTES,
                                            purpose=what, code=_CODE, allow_redirects=True)
        if fetched.status != 200:
            raise _unavailable(f"{what}: {url} answered HTTP {fetched.status}")
        headers = {
            name: fetched.headers[name]
            for name in (_PCK_CRL_CHAIN_HEADER, *_TCB_CHAIN_HEADERS, _QE_CHAIN_HEADER)
            if name in fetched.headers
        }
        return fetched.body, headers


def _chain(headers: dict[str, str], names: tuple[str, ...]) -> str:
    """The PEM issuer chain from the first present header (PCS URL-encodes it).

    Raises:
        ValueError: if no header is present, it is oversized, or it holds no PEM certificate.
    """
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        if len(value) > MAX_CHAIN_HEADER_CHARS:
            raise ValueError(f"{name} header is larger than {MAX_CHAIN_HEADER_CHARS} characters")
        chain = urllib.parse.unquote(value)
        if "-----BEGIN CERTIFICATE-----" not in chain:
            raise ValueError(f"{name} header holds no PEM certificate")
        return chain
    raise ValueError(f"missing header {' or '.join(names)}")
