"""Warm-up: attest ``attestation.warm_models`` at start and keep them attested.

Without it a model is attested by its first request (which then waits), and in enforce mode
``/readyz`` stays 503 until then. Errors are logged, never raised: a provider that is down at
start-up must not stop the sidecar.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import structlog

from sidecar.errors import SidecarError
from sidecar.proxy.attester import CachedAttestation

__all__ = ["WarmableCache", "WarmableState", "keep_models_warm", "warm_models"]

# The admin listener's logger: warm-up's events kept their name when the code moved here.
log = structlog.get_logger("tee_sidecar.admin")


class WarmableCache(Protocol):
    """What warm-up needs of ``sidecar.proxy.attester.AttestationCache``."""

    def peek(self, model: str) -> CachedAttestation | None:
        """The entry for ``model`` if it is still valid."""
        ...

    async def get(self, model: str) -> CachedAttestation:
        """A valid attestation of ``model``, cached or run now."""
        ...

    async def refresh(self, model: str) -> CachedAttestation:
        """Attest again now, keeping the old entry on failure."""
        ...


class WarmableState(Protocol):
    """The proxy's state as warm-up sees it: its attestation cache."""

    @property
    def cache(self) -> WarmableCache:
        """The per-model attestation cache."""
        ...


async def warm_models(state: WarmableState, models: Iterable[str]) -> dict[str, str | None]:
    """Attest ``models`` now, concurrently, so readiness and the first requests need not wait.

    Errors are logged, never raised: a provider that is down at start-up must not stop the
    sidecar (in enforce mode ``/readyz`` stays 503 and requests are refused until it attests).

    Returns:
        Per model, ``None`` when it attested, else the failure code.
    """
    wanted = list(dict.fromkeys(models))

    async def one(model: str) -> str | None:
        try:
            await state.cache.get(model)
        except SidecarError as exc:
            log.warning("warm_attestation_failed", model=model, code=exc.code, error=exc.message)
            return exc.code
        except Exception:
            log.exception("warm_attestation_error", model=model)
            return "sidecar.internal_error"
        log.info("warm_attestation", model=model)
        return None

    results = await asyncio.gather(*(one(model) for model in wanted))
    return dict(zip(wanted, results))


async def keep_models_warm(state: WarmableState, models: Sequence[str], *,
                           interval: float = 60.0, refresh_before: float = 300.0,
                           monotonic: Callable[[], float] = time.monotonic) -> None:
    """Re-attest ``models`` before their entries expire, forever (run it as a task; cancel it).

    Without this a warm model's entry expires after its TTL and, in enforce mode, ``/readyz``
    turns 503 until a request re-attests it; behind a load balancer that stops sending requests
    to an unready instance, that would never happen. A failed refresh keeps the old entry until
    its own expiry (``AttestationCache.refresh``) and is logged, never raised.
    """
    while True:
        now = monotonic()
        due = [model for model in models
               if (entry := state.cache.peek(model)) is None
               or entry.expires_at - now <= refresh_before]
        for model in due:
            try:
                await state.cache.refresh(model)
            except SidecarError as exc:
                log.warning("warm_refresh_failed", model=model, code=exc.code, error=exc.message)
            except Exception:
                log.exception("warm_refresh_error", model=model)
        await asyncio.sleep(interval)
