"""Which model names are worth an attestation: the provider's list, or the policy's own names.

Every new model name a local client sends used to cost one attestation fetch upstream and leave
a failure entry behind; 6,000 made-up names grew the process by 90 MiB (issue 11, finding 6).
With ``attestation.only_known_models`` (the default) a name is attested only if the provider's
``/v1/models`` lists it, or the policy names it exactly (a ``[models."…"]`` key without glob
characters), or ``attestation.warm_models`` does; any other name is refused with
``request.unknown_model`` before anything is fetched for it. The list is fetched at most once
per ``MODEL_LIST_REFETCH_SECONDS`` (a new deployment is picked up then), whatever the number of
unknown names.

The list is not signed: a gateway may list names it cannot attest, and attestation then fails
for them as before. It only bounds what a local client's made-up names can cost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable


from sidecar.errors import BadRequest, VerificationIncomplete
from sidecar.proxy.upstream import UpstreamClient

# A model list is a few KiB per hundred models; more than this is not a list.
MAX_MODEL_LIST_BYTES = 4 << 20
MAX_LISTED_MODELS = 10_000
# An unknown name triggers at most one list fetch per this many seconds.
MODEL_LIST_REFETCH_SECONDS = 30.0
_GLOB_CHARACTERS = frozenset("*?[")


def exact_names(patterns: Iterable[str]) -> frozenset[str]:
    """The patterns that name one model exactly (no fnmatch metacharacters)."""
    return frozenset(p for p in patterns if not _GLOB_CHARACTERS & set(p))


def parse_model_list(body: bytes) -> frozenset[str]:
    """The ``id`` of every entry of an OpenAI ``/v1/models`` answer.

    Raises:
        VerificationIncomplete: ``attestation.model_list_unavailable`` for anything else.
    """
    try:
        data = json.loads(body).get("data")
    except (ValueError, RecursionError, AttributeError):
        data = None
    if not isinstance(data, list) or len(data) > MAX_LISTED_MODELS:
        raise VerificationIncomplete("the provider's model list is not an OpenAI model list",
                                     code="attestation.model_list_unavailable")
    return frozenset(entry["id"] for entry in data
                     if isinstance(entry, dict) and isinstance(entry.get("id"), str))


class KnownModelNames:
    """Admits model names for attestation (``AttestationCache``'s ``admit`` hook)."""

    def __init__(self, fetch_list: Callable[[], Awaitable[frozenset[str]]],
                 named: Iterable[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch_list = fetch_list
        self._named = frozenset(named)
        self._clock = clock
        self._listed: frozenset[str] = frozenset()
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.list_fetches = 0

    async def admit(self, model: str) -> None:
        """Return if ``model`` may be attested.

        Raises:
            BadRequest: ``request.unknown_model`` (404) for a name neither listed nor named.
            VerificationIncomplete: ``attestation.model_list_unavailable`` when the list could
                not be had and the policy does not name the model.
        """
        if model in self._named or model in self._listed:
            return
        async with self._lock:
            now = self._clock()
            if model in self._listed:
                return
            if self._fetched_at is None or now - self._fetched_at >= MODEL_LIST_REFETCH_SECONDS:
                self._fetched_at = now
                self.list_fetches += 1
                self._listed = await self._fetch_list()
                if model in self._listed:
                    return
        raise BadRequest(f"model {model!r} is neither listed by the provider nor named by the "
                         "policy", code="request.unknown_model", http_status=404)


def provider_model_list(upstream: UpstreamClient,
                        timeout: float) -> Callable[[], Awaitable[frozenset[str]]]:
    """A ``fetch_list`` for ``KnownModelNames``: the provider's ``/v1/models``, bounded."""
    async def fetch() -> frozenset[str]:
        body = await upstream.fetch_model_list(timeout, MAX_MODEL_LIST_BYTES)
        return parse_model_list(body)

    return fetch
