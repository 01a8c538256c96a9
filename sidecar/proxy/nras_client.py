"""The one I/O interface to NVIDIA's Remote Attestation Service (NRAS): attest and JWKS.

Everything here only moves bytes; deciding what they prove is ``sidecar.verify.nvidia``'s job.
Every transport, HTTP or JSON failure becomes
``VerificationIncomplete(code="gpu.nras_unavailable")`` so that the caller fails closed with one
``except`` (STYLE.md "Results and errors").

The JWKS is cached in memory for ``jwks_ttl`` seconds. NRAS rotates keys (kids are dated, e.g.
``nv-eat-kid-prod-20250609…``), so a token naming a kid the cache lacks may refetch once, at
most every ``JWKS_MIN_REFETCH_SECONDS``: a hostile upstream cannot turn unknown kids into a
request flood.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection
from typing import Any, Final

import aiohttp
from aiohttp import hdrs

from sidecar.errors import VerificationIncomplete
from sidecar.issuers import NVIDIA_NRAS_ATTEST_URL, NVIDIA_NRAS_ISSUER, NVIDIA_NRAS_JWKS_URL
from sidecar.proxy.fetch import Fetcher
from sidecar.verify.nvidia import MAX_NRAS_RESPONSE_BYTES

__all__ = [
    "DEFAULT_JWKS_TTL_SECONDS",
    "JWKS_MIN_REFETCH_SECONDS",
    "MAX_JWKS_BYTES",
    "NVIDIA_NRAS_ATTEST_URL",
    "NVIDIA_NRAS_ISSUER",
    "NVIDIA_NRAS_JWKS_URL",
    "NrasClient",
]

# NVIDIA's attestation SDK caches the JWKS too (JwkStore cache_duration_ms); an hour keeps load
# low while letting a rotated-out key age out the same day.
DEFAULT_JWKS_TTL_SECONDS: Final = 3600.0
# At most one unknown-kid refetch per this many seconds.
JWKS_MIN_REFETCH_SECONDS: Final = 30.0
# A JWKS with a few keys and x5c certificates is a few KB.
MAX_JWKS_BYTES: Final = 256 * 1024

_UNAVAILABLE: Final = "gpu.nras_unavailable"


class NrasClient:
    """Talks to one NRAS: ``attest`` a GPU payload and fetch its ``jwks``.

    Args:
        session: the application's shared ``ClientSession`` (created in ``cleanup_ctx``).
        nras_url: the full attest URL, e.g. ``NVIDIA_NRAS_ATTEST_URL``.
        jwks_url: the JWKS URL, e.g. ``NVIDIA_NRAS_JWKS_URL``.
        timeout: total seconds allowed per request.
        jwks_ttl: seconds a fetched JWKS stays fresh.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        nras_url: str,
        jwks_url: str,
        timeout: float,
        *,
        jwks_ttl: float = DEFAULT_JWKS_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetcher = Fetcher(session)
        self._nras_url = nras_url
        self._jwks_url = jwks_url
        self._timeout = timeout
        self._jwks_ttl = jwks_ttl
        self._clock = clock
        self._jwks: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def attest(self, payload: str) -> list[Any]:
        """POST the provider's ``nvidia_payload`` as-is and return NRAS's JSON list.

        The payload is sent byte for byte: re-serialising it could change what NRAS attests.

        Raises:
            VerificationIncomplete: ``gpu.nras_unavailable`` on any transport, HTTP or JSON failure,
                or when the answer is not a JSON list.
        """
        answer = await self._request(
            hdrs.METH_POST,
            self._nras_url,
            MAX_NRAS_RESPONSE_BYTES,
            data=payload.encode("utf-8"),
            headers={hdrs.CONTENT_TYPE: "application/json", hdrs.ACCEPT: "application/json"},
        )
        if not isinstance(answer, list):
            raise VerificationIncomplete(
                "NRAS answered JSON that is not a list", code=_UNAVAILABLE
            )
        return answer

    async def jwks(self, *, require_kids: Collection[str] = ()) -> dict[str, Any]:
        """NRAS's JWKS, from the cache while fresh.

        Args:
            require_kids: kids the caller is about to need (``sidecar.verify.nvidia.token_kids``).
                If the cached set lacks one, refetch once (rate-limited); the verifier then
                reports any kid that is still unknown.

        Raises:
            VerificationIncomplete: ``gpu.nras_unavailable`` when no fresh JWKS can be had.
        """
        async with self._lock:
            now = self._clock()
            cached = self._jwks
            if cached is not None:
                fresh = now - self._fetched_at < self._jwks_ttl
                missing = bool(set(require_kids) - _kids(cached))
                may_refetch = now - self._fetched_at >= JWKS_MIN_REFETCH_SECONDS
                if fresh and not (missing and may_refetch):
                    return cached
            try:
                fetched = await self._fetch_jwks()
            except VerificationIncomplete:
                if cached is not None and now - self._fetched_at < self._jwks_ttl:
                    # An unknown-kid refetch failed; the fresh set still stands, and the
                    # verifier will report the unknown kid itself.
                    return cached
                raise
            self._jwks = fetched
            self._fetched_at = now
            return fetched

    async def _fetch_jwks(self) -> dict[str, Any]:
        fetched = await self._request(hdrs.METH_GET, self._jwks_url, MAX_JWKS_BYTES)
        if not isinstance(fetched, dict) or not isinstance(fetched.get("keys"), list):
            raise VerificationIncomplete(
                "NRAS JWKS is not an object with a keys list", code=_UNAVAILABLE
            )
        return fetched

    async def _request(self, method: str, url: str, limit: int, **kwargs: Any) -> Any:
        """One bounded request returning parsed JSON; every failure is ``gpu.nras_unavailable``."""
        fetched = await self._fetcher.fetch(url, method=method, limit=limit,
                                            timeout=self._timeout, purpose="NRAS answer",
                                            code=_UNAVAILABLE, **kwargs)
        if fetched.status != 200:
            raise VerificationIncomplete(
                f"NRAS {method} {url} answered HTTP {fetched.status}", code=_UNAVAILABLE
            )
        body = fetched.body
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as error:
            raise VerificationIncomplete(
                f"NRAS {method} {url} answered something that is not JSON", code=_UNAVAILABLE
            ) from error


def _kids(jwks: dict[str, Any]) -> set[str]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        return set()
    return {key["kid"] for key in keys if isinstance(key, dict) and isinstance(key.get("kid"), str)}
