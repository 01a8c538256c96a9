"""Metrics and recent failures of one sidecar process: what ``/metrics`` and ``/status`` show.

``Telemetry`` owns a private ``prometheus_client.CollectorRegistry`` (never the global default
registry, so two sidecars in one process, as in the tests, never share or clash). It is the one
counter system: the status page's counts are read from the same registry ``/metrics`` renders,
so the two can never disagree; only the recent failures and exchanges (free text, bounded
ring buffers) live beside it.

Label discipline: every label takes values from a small closed set. Endpoints outside the
proxy's routes become ``other``, failure codes that are not stable dotted codes become
``other``; model names appear only on the attestation gauges and the identity-change counter,
whose models are the ones whose hardware evidence verified (bounded by what the provider attests). Chat ids, prompts, completions,
API keys and free text never become label values; free-text failure messages live only in the
bounded in-memory ring buffer, never in the Prometheus output.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

VerificationKind = Literal["attestation", "signature"]
VerificationResult = Literal["pass", "fail", "incomplete"]
VerifiedLabel = Literal["true", "false", "pending"]

#: The exposition format ``render_metrics`` produces (Prometheus text format 0.0.4).
METRICS_CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

METRIC_PREFIX: Final = "tee_sidecar"

# The proxy's routes; anything else (a scanner probing paths) is folded into one label value.
KNOWN_ENDPOINTS: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})
_KINDS: Final = frozenset({"attestation", "signature"})
_RESULTS: Final = frozenset({"pass", "fail", "incomplete"})
_VERIFIED: Final = frozenset({"true", "false", "pending"})
_E2EE: Final = frozenset({"true", "false", "unavailable"})
# Failure codes are stable dotted identifiers (``signature.address_not_attested``); anything else
# could be free text and would grow the label set without bound.
_CODE_PATTERN: Final = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+){0,3}")
MAX_CODE_LENGTH: Final = 64

#: How many recent failures the status page keeps (memory is bounded whatever the failure rate).
FAILURE_HISTORY: Final = 50
# A model name comes from the app's request (up to 256 characters); messages are error
# messages (safe to show, never prompts or keys) but are still cut to keep the buffer small.
MAX_FAILURE_MODEL_CHARS: Final = 256
MAX_FAILURE_MESSAGE_CHARS: Final = 500

# Signature checks are sub-millisecond to a few ms; an attestation with remote collateral and
# NRAS takes up to the attestation timeout (30 s by default, the last bucket is +Inf).
VERIFICATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                               1.0, 2.5, 5.0, 10.0)
# Completions take from tens of milliseconds (cached, short) to minutes (long generations; the
# upstream read timeout is 300 s by default).
UPSTREAM_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                           120.0, 300.0)

AttestationTimes = Mapping[str, "AttestationTiming"]


@dataclass(frozen=True, slots=True)
class AttestationTiming:
    """How old a model's cached attestation is, and how long it still counts.

    Attributes:
        age_seconds: seconds since the report was verified.
        expires_in_seconds: seconds until the cache stops using it (negative once expired).
    """

    age_seconds: float
    expires_in_seconds: float


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """One recent failure, for people reading the status page.

    Attributes:
        time: unix seconds when it was recorded.
        model: the model requested (cut to ``MAX_FAILURE_MODEL_CHARS``), or ``None``.
        code: the stable failure code.
        message: the error's message (cut to ``MAX_FAILURE_MESSAGE_CHARS``).
    """

    time: float
    model: str | None
    code: str
    message: str


def status_class(status: int) -> str:
    """``2xx`` … ``5xx`` for an HTTP status; anything outside 100-599 is ``other``."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def code_label(code: str) -> str:
    """``code`` if it is a stable dotted failure code, else ``other`` (keeps labels bounded)."""
    if len(code) <= MAX_CODE_LENGTH and _CODE_PATTERN.fullmatch(code):
        return code
    return "other"


def endpoint_label(endpoint: str) -> str:
    """The proxy route, or ``other`` for any path the proxy does not serve."""
    return endpoint if endpoint in KNOWN_ENDPOINTS else "other"


class _AttestationGauges(Collector):
    """Computes the attestation gauges at scrape time from a callback (no stale values)."""

    def __init__(self, source: Callable[[], Callable[[], AttestationTimes] | None]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            f"{METRIC_PREFIX}_attestation_age_seconds",
            "Seconds since the cached attestation of a model was verified.", labels=["model"])
        expires = GaugeMetricFamily(
            f"{METRIC_PREFIX}_attestation_expires_in_seconds",
            "Seconds until the cached attestation of a model stops counting (negative: expired).",
            labels=["model"])
        callback = self._source()
        if callback is not None:
            for model, timing in sorted(callback().items()):
                age.add_metric([model], max(timing.age_seconds, 0.0))
                expires.add_metric([model], timing.expires_in_seconds)
        yield age
        yield expires

    def describe(self) -> Iterable[Metric]:
        # Describing would call the callback at registration, before the cache exists.
        return ()


class Telemetry:
    """The metrics and recent failures of one sidecar process.

    One instance per proxy; the proxy calls the ``observe_*`` methods on its request path (each
    is a few dictionary updates, no I/O) and the admin listener reads ``render_metrics`` and
    ``snapshot``.
    """

    def __init__(self, *, attestation_times: Callable[[], AttestationTimes] | None = None,
                 failure_history: int = FAILURE_HISTORY,
                 clock: Callable[[], float] = time.time) -> None:
        """Create the registry and every metric.

        Args:
            attestation_times: returns, per attested model, its attestation age and expiry;
                called at each scrape (see ``sidecar.proxy.admin.attestation_times``).
            failure_history: how many recent failures to keep.
            clock: unix time (injected so tests can pin it).
        """
        self._clock = clock
        self._attestation_times = attestation_times
        self.started_at = clock()
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            f"{METRIC_PREFIX}_requests", "Requests answered by the proxy.",
            ["endpoint", "status_class", "verified"], registry=self.registry)
        self._verifications = Counter(
            f"{METRIC_PREFIX}_verifications", "Attestations and completion signatures checked.",
            ["kind", "result"], registry=self.registry)
        self._blocked = Counter(
            f"{METRIC_PREFIX}_blocked_responses",
            "Responses withheld from the app because verification failed (enforce mode).",
            ["code"], registry=self.registry)
        self._upstream_latency = Histogram(
            f"{METRIC_PREFIX}_upstream_latency_seconds",
            "Time from forwarding a request to the end of the provider's response.",
            buckets=UPSTREAM_BUCKETS, registry=self.registry)
        self._verification_latency = Histogram(
            f"{METRIC_PREFIX}_verification_latency_seconds",
            "Time spent verifying an attestation or a completion signature.",
            ["kind"], buckets=VERIFICATION_BUCKETS, registry=self.registry)
        self._identity_changes = Counter(
            f"{METRIC_PREFIX}_identity_changes",
            "Attestations refused because a node's deployment identity is not the pinned one.",
            ["model"], registry=self.registry)
        self._exchanges_total = Counter(
            f"{METRIC_PREFIX}_exchanges", "Completion exchanges, by end-to-end encryption.",
            ["e2ee"], registry=self.registry)
        self.registry.register(_AttestationGauges(lambda: self._attestation_times))
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._verification_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._exchange_children: dict[str, Any] = {}
        self._failures: deque[FailureRecord] = deque(maxlen=failure_history)
        self._exchanges: deque[dict[str, Any]] = deque(maxlen=failure_history)

    def watch_attestations(self, attestation_times: Callable[[], AttestationTimes]) -> None:
        """Set (or replace) the callback the attestation gauges read at scrape time."""
        self._attestation_times = attestation_times

    def observe_request(self, endpoint: str, status: int, verified: str | None) -> None:
        """Count one answered request.

        Args:
            endpoint: the request path (unknown paths count as ``other``).
            status: the HTTP status sent to the app.
            verified: the ``x-tee-verified`` value sent (``true``, ``false``, ``pending``);
                anything else, or ``None``, counts as ``false``: never verified by default.
        """
        verified_label = verified if verified in _VERIFIED else "false"
        labels = (endpoint_label(endpoint), status_class(status), verified_label)
        child = self._request_children.get(labels)
        if child is None:
            # The label set is closed and small; caching the child skips prometheus-client's
            # locked lookup on every request.
            child = self._request_children[labels] = self._requests.labels(*labels)
        child.inc()

    def observe_verification(self, kind: VerificationKind, result: VerificationResult,
                             seconds: float) -> None:
        """Count one attestation or signature verification and how long it took.

        Raises:
            ValueError: ``kind`` or ``result`` is not one of the documented values (a bug in
                the caller; labels must stay a closed set).
        """
        children = self._verification_children.get((kind, result))
        if children is None:
            if kind not in _KINDS or result not in _RESULTS:
                raise ValueError(f"unknown verification label kind={kind!r} result={result!r}")
            # A closed set of 6: cached like the request counter's children.
            children = self._verification_children[(kind, result)] = (
                self._verifications.labels(kind, result),
                self._verification_latency.labels(kind))
        counter, latency = children
        counter.inc()
        latency.observe(max(seconds, 0.0))

    def observe_blocked(self, code: str) -> None:
        """Count one response withheld from the app, by failure code."""
        self._blocked.labels(code_label(code)).inc()

    def observe_identity_change(self, model: str) -> None:
        """Count one attestation of ``model`` refused for a changed deployment identity."""
        self._identity_changes.labels(model[:MAX_FAILURE_MODEL_CHARS]).inc()

    def observe_upstream(self, seconds: float) -> None:
        """Record how long the provider took for one request."""
        self._upstream_latency.observe(max(seconds, 0.0))

    def record_failure(self, model: str | None, code: str, message: str) -> None:
        """Remember a failure for the status page (the oldest is dropped beyond the limit).

        Never pass prompts, completions, response bodies or keys: ``message`` should be a
        ``SidecarError.message``, which is written to be safe to show.
        """
        self._failures.append(FailureRecord(
            time=self._clock(),
            model=model[:MAX_FAILURE_MODEL_CHARS] if model is not None else None,
            code=code[:MAX_CODE_LENGTH],
            message=message[:MAX_FAILURE_MESSAGE_CHARS]))

    def record_exchange(self, model: str, e2ee: str, model_key: str | None) -> None:
        """Remember whether one completion exchange was end-to-end encrypted and to which
        attested model key (a public key; the client's keys never come here), for the status
        page. ``e2ee``: ``true``, ``false`` or ``unavailable``."""
        label = e2ee if e2ee in _E2EE else "unavailable"
        child = self._exchange_children.get(label)
        if child is None:
            child = self._exchange_children[label] = self._exchanges_total.labels(label)
        child.inc()
        self._exchanges.append({"time": self._clock(), "model": model[:MAX_FAILURE_MODEL_CHARS],
                                "e2ee": e2ee, "model_key": model_key})

    def exchanges(self) -> list[dict[str, Any]]:
        """The recent exchanges' E2EE status, newest first."""
        return [dict(entry) for entry in reversed(self._exchanges)]

    def failures(self) -> list[FailureRecord]:
        """The recent failures, newest first."""
        return list(reversed(self._failures))

    def render_metrics(self) -> bytes:
        """Every metric in the Prometheus text exposition format 0.0.4."""
        return generate_latest(self.registry)

    def counters(self) -> dict[str, int]:
        """The status page's counts, read from the Prometheus registry (the one count)."""
        requests, verifications = self._requests, self._verifications
        exchanges = self._exchanges_total
        return {
            "requests": _total(requests),
            "requests_verified": _total(requests, verified="true"),
            "requests_not_verified": _total(requests, verified="false"),
            "requests_pending": _total(requests, verified="pending"),
            "blocked": _total(self._blocked),
            "attestations_passed": _total(verifications, kind="attestation", result="pass"),
            "attestations_failed": _total(verifications, kind="attestation", result="fail"),
            "attestations_incomplete": _total(verifications, kind="attestation",
                                              result="incomplete"),
            "signatures_passed": _total(verifications, kind="signature", result="pass"),
            "signatures_failed": _total(verifications, kind="signature", result="fail"),
            "signatures_incomplete": _total(verifications, kind="signature", result="incomplete"),
            "identity_changes": _total(self._identity_changes),
            "exchanges_e2ee": _total(exchanges, e2ee="true"),
            "exchanges_plaintext": _total(exchanges, e2ee="false"),
            "exchanges_e2ee_unavailable": _total(exchanges, e2ee="unavailable"),
        }

    def snapshot(self) -> dict[str, Any]:
        """Counters and recent failures as plain JSON-ready data (for ``/status.json``)."""
        now = self._clock()
        return {
            "started_at": self.started_at,
            "uptime_seconds": round(now - self.started_at, 3),
            "counters": self.counters(),
            "failures": [asdict(record) for record in self.failures()],
            "exchanges": self.exchanges(),
        }


def _total(counter: Counter, **labels: str) -> int:
    """The sum of ``counter`` over the label sets that match ``labels``."""
    return int(sum(sample.value
                   for metric in counter.collect() for sample in metric.samples
                   if sample.name.endswith("_total")
                   and all(sample.labels.get(k) == v for k, v in labels.items())))
