"""The admin listener: liveness, readiness, Prometheus metrics and a status page for people.

Routes (all ``GET``, read-only, no request body is ever read):

  ``/livez``        200 ``ok`` while the process serves;
  ``/readyz``       200 once settings, trust anchors and policy are loaded (the proxy's state
                    exists) and, in enforce mode, every ``attestation.warm_models`` entry has a
                    valid attestation; else 503 with the reasons as JSON;
  ``/metrics``      the Prometheus text format 0.0.4 of ``Telemetry``;
  ``/status``       an HTML page: attested models, per node the signing address, measurements,
                    TCB status and GPU verdicts, attestation age and expiry, counters, recent
                    failures;
  ``/status.json``  the same data as JSON.

The proxy's state is built in its ``cleanup_ctx``, after the admin app may already serve, so the
admin app reads it through a getter that returns ``None`` until then. The status page shows
evidence and error messages, never prompts, completions or API keys; the upstream URL is shown
without credentials or query. Every value is escaped with ``html.escape`` and the page carries a
Content-Security-Policy that allows no script, no external asset and no framing, so a hostile
model name or error message cannot script the page.
"""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import structlog
from aiohttp import hdrs, web
from yarl import URL

from sidecar.config import Mode, Settings
from sidecar.errors import SidecarError, openai_error_body
from sidecar.pins import IdentityGate, identity_modes, provenance_required
from sidecar.proxy.attester import CachedAttestation
from sidecar.proxy.local_origin import LocalCallerPolicy
from sidecar.render import attestation_json
from sidecar.telemetry import METRICS_CONTENT_TYPE, AttestationTiming, Telemetry
from sidecar.verify.checks import Status

log = structlog.get_logger("tee_sidecar.admin")

# GPU claims worth a column on the page; the whole claim set is in /status.json.
GPU_CLAIMS_SHOWN: Final = ("measres", "secboot", "dbgstat", "x-nvidia-gpu-driver-version",
                           "x-nvidia-gpu-vbios-version")
MEASUREMENT_NAMES: Final = {"mrtd": "MRTD", "rtmr0": "RTMR0", "rtmr1": "RTMR1", "rtmr2": "RTMR2",
                            "rtmr3": "RTMR3", "mr_config_id": "mr_config_id"}
# The page allows its own inline style and nothing else: no script, images, fonts or frames.
STATUS_PAGE_CSP: Final = ("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                          "form-action 'none'; frame-ancestors 'none'")
NOT_STARTED: Final = "proxy not started: settings, trust anchors and policy are not loaded yet"


class AttestationSource(Protocol):
    """What the admin listener needs of ``sidecar.proxy.attester.AttestationCache``."""

    def entries(self) -> dict[str, CachedAttestation]:
        """All entries, valid or not."""
        ...

    def peek(self, model: str) -> CachedAttestation | None:
        """The entry for ``model`` if it is still valid."""
        ...

    async def get(self, model: str) -> CachedAttestation:
        """A valid attestation of ``model``, cached or run now."""
        ...

    async def refresh(self, model: str) -> CachedAttestation:
        """Attest again now, keeping the old entry on failure."""
        ...


class AdminView(Protocol):
    """What the admin listener reads of the proxy's state (``ProxyState`` plus ``telemetry``)."""

    @property
    def settings(self) -> Settings:
        """The loaded settings."""
        ...

    @property
    def cache(self) -> AttestationSource:
        """The per-model attestation cache."""
        ...

    @property
    def telemetry(self) -> Telemetry:
        """The process's metrics and recent failures."""
        ...


AdminViewGetter = Callable[[], "AdminView | None"]
VIEW_GETTER: web.AppKey[AdminViewGetter] = web.AppKey("admin_view_getter")
CALLERS: web.AppKey[LocalCallerPolicy] = web.AppKey("admin_callers", LocalCallerPolicy)


@web.middleware
async def _local_hosts_only(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
    """Refuse a ``Host`` the admin listener does not answer to, as an OpenAI-shaped 421."""
    try:
        request.app[CALLERS].check_host(request.headers.get(hdrs.HOST))
    except SidecarError as exc:
        return web.json_response(openai_error_body(exc), status=exc.http_status,
                                 headers=_no_store({"x-tee-failure": exc.code}))
    return await handler(request)


def build_admin_app(get_state: AdminViewGetter,
                    callers: LocalCallerPolicy | None = None) -> web.Application:
    """The admin application, reading the proxy's state through ``get_state``.

    Args:
        get_state: returns the proxy's state once built, ``None`` before (e.g.
            ``lambda: proxy_app.get(STATE)`` once ``ProxyState`` carries ``telemetry``).
        callers: the Host names it answers to (default: loopback only); a DNS-rebinding page
            must not read ``/status``.
    """
    callers = callers or LocalCallerPolicy.for_listener("127.0.0.1", ())
    app = web.Application(client_max_size=1024, middlewares=[_local_hosts_only])
    app[VIEW_GETTER] = get_state
    app[CALLERS] = callers
    app.router.add_get("/livez", _livez)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status_html)
    app.router.add_get("/status.json", _status_json)
    return app


def readiness(view: AdminView | None) -> list[str]:
    """Why the sidecar is not ready to serve; an empty list means ready.

    Ready means the proxy's state exists (settings, trust anchors and policy loaded without
    error) and, in enforce mode, every model in ``attestation.warm_models`` has a valid cached
    attestation, so the first request for it is not refused or delayed by attestation.
    """
    if view is None:
        return [NOT_STARTED]
    if view.settings.verification.mode is not Mode.ENFORCE:
        return []
    return [f"warm model {model!r} has no valid attestation"
            for model in view.settings.attestation.warm_models if view.cache.peek(model) is None]


def attestation_times(cache: AttestationSource, *,
                      monotonic: Callable[[], float] = time.monotonic,
                      wall: Callable[[], float] = time.time) -> dict[str, AttestationTiming]:
    """Per cached model, its attestation age and time left (the ``Telemetry`` gauges' callback).

    ``expires_at`` is on the cache's clock, ``time.monotonic`` by default; ``verified_at`` is
    unix seconds from the attester's clock.
    """
    now_mono, now_wall = monotonic(), wall()
    return {model: AttestationTiming(age_seconds=now_wall - entry.report.verified_at,
                                     expires_in_seconds=entry.expires_at - now_mono)
            for model, entry in cache.entries().items()}


def status_document(view: AdminView | None, *,
                    monotonic: Callable[[], float] = time.monotonic,
                    wall: Callable[[], float] = time.time) -> dict[str, Any]:
    """Everything ``/status`` shows, as JSON-ready data (``/status.json`` serves it as is)."""
    now_wall = wall()
    reasons = readiness(view)
    document: dict[str, Any] = {"service": "tee-sidecar", "generated_at": now_wall,
                                "ready": not reasons, "not_ready_reasons": reasons,
                                "settings": None, "models": [], "telemetry": None,
                                "identity": None}
    if view is None:
        return document
    settings = view.settings
    document["settings"] = {
        "mode": str(settings.verification.mode),
        "stream": str(settings.verification.stream),
        "signing_algo": settings.verification.signing_algo,
        "provider": str(settings.upstream.provider),
        "upstream": public_url(settings.upstream.base_url),
        "trust_anchors": str(settings.trust.anchors),
        "warm_models": list(settings.attestation.warm_models),
        "e2ee": settings.upstream.e2ee or "profile default",
    }
    times = attestation_times(view.cache, monotonic=monotonic, wall=wall)
    for model, entry in sorted(view.cache.entries().items()):
        report = entry.report
        detail = attestation_json(report)
        failed_checks = {node.label: [{"name": c.name, "status": str(c.status), "code": c.code,
                                       "detail": c.detail}
                                      for c in node.checks if not c.ok]
                         for node in report.nodes}
        nodes = [dict(node, attested=node["status"] == Status.PASS,
                      failed_checks=failed_checks.get(node["node"], []))
                 for node in detail["nodes"]]
        timing = times[model]
        document["models"].append({
            "model": model,
            "valid": timing.expires_in_seconds > 0,
            "verdict": report.verdict,
            "verified_at": report.verified_at,
            "age_seconds": round(timing.age_seconds, 3),
            "expires_in_seconds": round(timing.expires_in_seconds, 3),
            "evidence_sha256": report.evidence_sha256,
            "nonce": report.nonce,
            "attested_keys": sorted(report.attested_keys),
            "nodes": nodes,
        })
    document["telemetry"] = view.telemetry.snapshot()
    document["identity"] = identity_document(view)
    return document


def identity_document(view: AdminView | None) -> dict[str, Any] | None:
    """Which policy entries run on tofu, pinned or any, and per model its pinned identities,
    when they were pinned and any pending change (``sidecar.pins``); ``None`` before start."""
    gate: IdentityGate | None = getattr(view, "identity", None)
    if gate is None:
        return None
    return {"modes": identity_modes(gate.policies),
            "provenance_required": provenance_required(gate.policies), **gate.status()}


def public_url(url: str) -> str:
    """``url`` without user, password, query or fragment (a key may hide in any of them)."""
    return str(URL(url).with_user(None).with_query(None).with_fragment(None))


# ---------------------------------------------------------------------------------------------
# Handlers


def _view(request: web.Request) -> AdminView | None:
    return request.app[VIEW_GETTER]()


def _no_store(headers: dict[str, str]) -> dict[str, str]:
    headers[hdrs.CACHE_CONTROL] = "no-store"
    headers[hdrs.X_CONTENT_TYPE_OPTIONS] = "nosniff"
    return headers


async def _livez(request: web.Request) -> web.Response:
    return web.Response(text="ok", headers=_no_store({}))


async def _readyz(request: web.Request) -> web.Response:
    view = _view(request)
    reasons = readiness(view)
    body: dict[str, Any] = {"ready": not reasons, "reasons": reasons}
    identity = identity_document(view)
    if identity is not None:  # which models run on tofu, pinned or any (sidecar.pins)
        body["identity_modes"] = identity["modes"]
        body["provenance_required"] = identity["provenance_required"]
    return web.json_response(body,
                             status=503 if reasons else 200, headers=_no_store({}))


async def _metrics(request: web.Request) -> web.Response:
    view = _view(request)
    if view is None:
        return web.Response(status=503, text=NOT_STARTED + "\n", headers=_no_store({}))
    return web.Response(body=view.telemetry.render_metrics(),
                        headers=_no_store({hdrs.CONTENT_TYPE: METRICS_CONTENT_TYPE}))


async def _status_json(request: web.Request) -> web.Response:
    document = status_document(_view(request))
    return web.json_response(document, status=200 if document["settings"] else 503,
                             headers=_no_store({}))


async def _status_html(request: web.Request) -> web.Response:
    document = status_document(_view(request))
    return web.Response(text=render_status_html(document),
                        status=200 if document["settings"] else 503,
                        headers=_no_store({hdrs.CONTENT_TYPE: "text/html; charset=utf-8",
                                           hdrs.CONTENT_SECURITY_POLICY: STATUS_PAGE_CSP,
                                           "Referrer-Policy": "no-referrer"}))


# ---------------------------------------------------------------------------------------------
# The HTML page: every value passes through _e (html.escape, quotes included).

_CSS: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:72rem;padding:0 1rem;
color:#1b1b1b;background:#fafafa}
h1{font-size:1.5rem}h2{font-size:1.2rem;border-bottom:1px solid #ccc;margin-top:2rem}
h3{font-size:1.05rem}h4{font-size:.95rem;margin-bottom:.3rem}
table{border-collapse:collapse;margin:.4rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f0f0f0}
code{font:12px ui-monospace,monospace;word-break:break-all}
section.model{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.2rem 1rem 1rem;
margin:1rem 0}
.pass{color:#0a6b1f;font-weight:600}.fail{color:#b00020;font-weight:600}
.incomplete{color:#9a6200;font-weight:600}
.warning{background:#fff3cd;border:1px solid #e0c36b;padding:.5rem 1rem;border-radius:6px}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _badge(status: str, text: str | None = None) -> str:
    css = status if status in ("pass", "fail", "incomplete") else "fail"
    return f'<span class="{css}">{_e(text if text is not None else status.upper())}</span>'


def _utc(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    sign, seconds = ("-" if seconds < 0 else ""), abs(int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours} h {minutes} min"
    if minutes:
        return f"{sign}{minutes} min {secs} s"
    return f"{sign}{secs} s"


def _rows(pairs: Iterable[tuple[str, str]]) -> str:
    """Table rows from (escaped-header-text, already-escaped-HTML) pairs."""
    return "".join(f"<tr><th scope=\"row\">{_e(name)}</th><td>{cell}</td></tr>"
                   for name, cell in pairs)


def render_status_html(document: Mapping[str, Any]) -> str:
    """The status page for ``document`` (from ``status_document``), every value escaped."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>tee-sidecar status</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>tee-sidecar status</h1>"]
    parts.append(_summary_html(document))
    settings = document.get("settings")
    if settings is None:
        parts.append("</body></html>")
        return "".join(parts)

    models: list[Mapping[str, Any]] = document["models"]
    parts.append(f'<h2 id="models">Attested models ({len(models)})</h2>')
    if not models:
        parts.append("<p>No model has been attested by this process yet.</p>")
    for model in models:
        parts.append(_model_html(model))

    parts.append(_identity_html(document.get("identity")))

    telemetry: Mapping[str, Any] = document["telemetry"]
    parts.append('<h2 id="counters">Counters</h2><table>')
    parts.append(_rows((name.replace("_", " "), _e(value))
                       for name, value in telemetry["counters"].items()))
    parts.append("</table>")

    exchanges: list[Mapping[str, Any]] = telemetry.get("exchanges", [])
    parts.append(f'<h2 id="e2ee">Last exchanges: end-to-end encryption ({len(exchanges)})</h2>')
    if not exchanges:
        parts.append("<p>No exchange yet.</p>")
    else:
        parts.append("<table><thead><tr><th>Time</th><th>Model</th><th>E2EE</th>"
                     "<th>Sealed to model key</th></tr></thead><tbody>")
        for exchange in exchanges:
            parts.append(f"<tr><td>{_e(_utc(exchange['time']))}</td><td>{_e(exchange['model'])}"
                         f"</td><td>{_e(exchange['e2ee'])}</td>"
                         f"<td><code>{_e(exchange['model_key'] or '')}</code></td></tr>")
        parts.append("</tbody></table>")

    failures: list[Mapping[str, Any]] = telemetry["failures"]
    parts.append(f'<h2 id="failures">Last failures ({len(failures)})</h2>')
    if not failures:
        parts.append("<p>No failure recorded.</p>")
    else:
        parts.append("<table><thead><tr><th>Time</th><th>Model</th><th>Code</th>"
                     "<th>Message</th></tr></thead><tbody>")
        for failure in failures:
            parts.append(f"<tr><td>{_e(_utc(failure['time']))}</td><td>{_e(failure['model'])}"
                         f"</td><td><code>{_e(failure['code'])}</code></td>"
                         f"<td>{_e(failure['message'])}</td></tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "".join(parts)


def _identity_html(identity: Mapping[str, Any] | None) -> str:
    if identity is None:
        return ""
    modes: Mapping[str, list[str]] = identity["modes"]
    parts = ['<h2 id="identity">Deployment identity (which code runs)</h2><table>',
             _rows((f"identity = {mode}", _e(", ".join(globs) or "none"))
                   for mode, globs in modes.items()), "</table>"]
    parts.append(f"<p>Image provenance required for: "
                 f"{_e(', '.join(identity['provenance_required']) or 'none')}</p>")
    if modes["any"]:
        parts.append('<p class="warning"><strong>Warning:</strong> entries under "any" accept '
                     "whatever deployment attests: a gateway may route to code of its own.</p>")
    if identity["error"]:
        parts.append(f'<p class="warning">{_e(identity["error"])}</p>')
    models: Mapping[str, Mapping[str, Any]] = identity["models"]
    if not models:
        parts.append("<p>No deployment pinned yet.</p>")
    for model, entry in models.items():
        prints = "<br>".join(f"{_e(i['role'])} <code>{_e(i['fingerprint'][:16])}</code> "
                             f"compose <code>{_e((i['compose_hash'] or '')[:16])}</code> "
                             f"images <code>{_e(', '.join(i['images']))}</code>"
                             for i in entry["identities"])
        pending = entry["pending"]
        parts.append(f"<h3>Model <code>{_e(model)}</code> ({_e(entry['mode'])})</h3><table>"
                     + _rows([("Pinned", _e(f"{entry['how']} {_utc(entry['pinned_at'])}")),
                              ("Identities", prints),
                              ("Pending change", _badge("pass", "none") if pending is None else
                               _badge("fail", f"seen {_utc(pending['seen_at'])}")
                               + f" {_e(pending['detail'])}")]) + "</table>")
    return "".join(parts)


def _summary_html(document: Mapping[str, Any]) -> str:
    parts = []
    ready = document["ready"]
    settings = document.get("settings")
    if settings is not None and settings["trust_anchors"] == "simulator":
        parts.append('<p class="warning"><strong>Warning:</strong> trust anchors are the '
                     "simulator's test roots. Nothing here is evidence about real hardware.</p>")
    rows = [("Ready", _badge("pass", "yes") if ready else _badge("fail", "no"))]
    if not ready:
        rows.append(("Not ready because",
                     "<ul>" + "".join(f"<li>{_e(reason)}</li>"
                                      for reason in document["not_ready_reasons"]) + "</ul>"))
    if settings is not None:
        rows += [("Mode", _e(settings["mode"])), ("Streams", _e(settings["stream"])),
                 ("Provider", _e(settings["provider"])),
                 ("Upstream", f"<code>{_e(settings['upstream'])}</code>"),
                 ("Trust anchors", _e(settings["trust_anchors"])),
                 ("Signing algorithm", _e(settings["signing_algo"])),
                 ("Warm models", _e(", ".join(settings["warm_models"]) or "none"))]
    telemetry = document.get("telemetry")
    if telemetry is not None:
        rows.append(("Up for", _e(_duration(telemetry["uptime_seconds"]))))
    rows.append(("Page generated", _e(_utc(document["generated_at"]))))
    parts.append('<h2 id="summary">Summary</h2><table>' + _rows(rows) + "</table>")
    return "".join(parts)


def _model_html(model: Mapping[str, Any]) -> str:
    verdict: str = model["verdict"]
    verdict_status = {"verified": "pass", "failed": "fail"}.get(verdict, "incomplete")
    validity = (f"valid, expires in {_duration(model['expires_in_seconds'])}" if model["valid"]
                else f"expired {_duration(-model['expires_in_seconds'])} ago")
    parts = [f'<section class="model"><h3>Model <code>{_e(model["model"])}</code>: '
             f"{_badge(verdict_status, verdict.upper())}</h3><table>"]
    parts.append(_rows([
        ("Attestation", _badge("pass" if model["valid"] else "fail", validity)),
        ("Verified at", _e(_utc(model["verified_at"]))),
        ("Age", _e(_duration(model["age_seconds"]))),
        ("Evidence sha256", f"<code>{_e(model['evidence_sha256'])}</code>"),
        ("Attested signing keys", "<br>".join(f"<code>{_e(key)}</code>"
                                              for key in model["attested_keys"]) or "none"),
    ]))
    parts.append("</table>")
    for node in model["nodes"]:
        parts.append(_node_html(node))
    parts.append("</section>")
    return "".join(parts)


def _node_html(node: Mapping[str, Any]) -> str:
    status: str = node["status"]
    parts = [f"<h4>Node {_e(node['node'])} ({_e(node['role'])}): {_badge(status)}</h4><table>"]
    advisories = ", ".join(node["advisory_ids"]) or "none"
    parts.append(_rows([
        ("Signing address", f"<code>{_e(node['signing_key'])}</code> ({_e(node['signing_algo'])})"),
        ("TCB status", f"{_e(node['tcb_status'] or 'unknown')} (advisories: {_e(advisories)})"),
    ]))
    measurements: Mapping[str, str] = node["measurements"]
    parts.append(_rows((MEASUREMENT_NAMES.get(name, name), f"<code>{_e(value)}</code>")
                       for name, value in measurements.items()))
    parts.append("</table>")
    gpus: list[Mapping[str, Any]] = node["gpus"]
    if gpus:
        parts.append("<table><thead><tr><th>GPU</th><th>Verdict</th>"
                     + "".join(f"<th>{_e(claim)}</th>" for claim in GPU_CLAIMS_SHOWN)
                     + "</tr></thead><tbody>")
        for gpu in gpus:
            claims: Mapping[str, Any] = gpu["claims"]
            parts.append(f"<tr><td>{_e(gpu['gpu'])}</td><td>"
                         f"{_badge('pass' if gpu['ok'] else 'fail')}</td>"
                         + "".join(f"<td>{_e(claims.get(claim, ''))}</td>"
                                   for claim in GPU_CLAIMS_SHOWN) + "</tr>")
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No GPU evidence on this node.</p>")
    failed: list[Mapping[str, Any]] = node["failed_checks"]
    if failed:
        parts.append("<p>Checks that did not pass:</p><ul>")
        parts.extend(f"<li>{_badge(check['status'])} <code>{_e(check['name'])}</code> "
                     f"[{_e(check['code'])}]: {_e(check['detail'])}</li>" for check in failed)
        parts.append("</ul>")
    return "".join(parts)
