"""Which local callers may use the sidecar: the Host, Origin and Content-Type rules.

A web page the user visits can make the browser send requests to loopback: a "simple"
cross-site ``POST`` (``text/plain``, no preflight) spends the user's provider key, and a page
whose name is re-bound to 127.0.0.1 (DNS rebinding: ``Host: evil.example``) can read the
answers. Local AI servers closed the same hole after their DNS-rebinding advisories (Ollama's
``OLLAMA_ORIGINS`` and host checks, CVE-2024-28224) in the way done here:

- ``Host`` must be a loopback name or address, the listen address, or configured
  (``listen.allowed_hosts``): a rebinding page cannot choose a name it does not control;
- a request that carries a browser ``Origin`` is refused unless that origin is configured
  (``listen.allowed_origins``): the OpenAI SDKs, curl and servers send none; a configured
  origin gets CORS headers (``cors_headers``), its preflight included, and nothing else does;
- ``POST`` bodies must be ``application/json``: a browser cannot send that cross-site
  without a CORS preflight, which the sidecar never answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from sidecar.errors import BadRequest
from sidecar.proxy.verdict import (
    HEADER_E2EE,
    HEADER_EVIDENCE,
    HEADER_FAILURE,
    HEADER_REQUEST_BINDING,
    HEADER_REQUEST_ID,
    HEADER_SERVED_MODEL,
    HEADER_SHOULD_RETRY,
    HEADER_SIGNATURE_KIND,
    HEADER_SIGNER,
    HEADER_VERIFIED,
)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                            "ip6-loopback"})
# A listener on every interface is reached under addresses it cannot list in advance (kubelet
# probes use the pod IP); an IP literal cannot be re-bound, so any one is accepted there.
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
# Host values already accepted are remembered (the verdict depends on the value and this
# listener's fixed policy only), so the usual request skips the parsing; bounded, so a caller
# sending ever new (accepted) names cannot grow it.
MAX_ACCEPTED_HOSTS = 64


def host_name(header: str) -> str | None:
    """The name in a ``Host`` header, lower-case, without port or trailing dot (``None``: bad).

    >>> host_name("[::1]:8787"), host_name("LocalHost.:80")
    ('::1', 'localhost')
    """
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            return None
        name = value[1:end]
    else:
        name, _, _port = value.partition(":")
    name = name.rstrip(".")
    if not name or any(c.isspace() or c in "/\\@?#" for c in name):
        return None
    return name


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class LocalCallerPolicy:
    """The allowed ``Host`` names and browser origins of one listener.

    Attributes:
        hosts: extra allowed host names (lower-case), beside loopback and the listen address.
        origins: browser origins allowed to call (``scheme://host[:port]``, lower-case).
        any_ip_literal: accept any IP literal as Host (a listener bound to every interface).
    """

    hosts: frozenset[str]
    origins: frozenset[str]
    any_ip_literal: bool
    _accepted: set[str] = field(default_factory=set, compare=False, repr=False)

    @classmethod
    def for_listener(cls, listen_host: str, allowed_hosts: Iterable[str],
                     allowed_origins: Iterable[str] = ()) -> LocalCallerPolicy:
        """The policy of a listener bound to ``listen_host`` with the configured extras."""
        hosts = {h.strip().lower().rstrip(".") for h in allowed_hosts}
        bound = listen_host.strip().lower().strip("[]")
        if bound not in WILDCARD_ADDRESSES:
            hosts.add(bound)
        return cls(frozenset(hosts), frozenset(o.strip().lower().rstrip("/")
                                               for o in allowed_origins),
                   bound in WILDCARD_ADDRESSES)

    def check_host(self, header: str | None) -> None:
        """Refuse a ``Host`` this listener does not answer to (no header: not a browser).

        Raises:
            BadRequest: ``request.host_not_allowed`` (421).
        """
        if header is None or header in self._accepted:
            return
        name = host_name(header)
        if name is not None:
            ip = _ip(name)
            if (name in LOOPBACK_NAMES or name.endswith(".localhost") or name in self.hosts
                    or (ip is not None and (ip.is_loopback or self.any_ip_literal))):
                if len(self._accepted) < MAX_ACCEPTED_HOSTS:
                    self._accepted.add(header)
                return
        raise BadRequest(
            "Host is not one this sidecar answers to (a DNS-rebinding page?); add it to "
            "listen.allowed_hosts if it is yours", code="request.host_not_allowed",
            http_status=421)

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser page of ``origin`` may call (it is configured)."""
        return origin.strip().lower().rstrip("/") in self.origins

    def check_origin(self, origin: str | None) -> None:
        """Refuse a browser request from an origin not configured (no ``Origin``: not a page).

        Raises:
            BadRequest: ``request.origin_not_allowed`` (403).
        """
        if origin is None or self.origin_allowed(origin):
            return
        raise BadRequest("requests from web pages are refused; add the page's origin to "
                         "listen.allowed_origins if it is yours",
                         code="request.origin_not_allowed", http_status=403)


# What a configured origin's page may send and read (CORS, https://fetch.spec.whatwg.org/#http-cors-protocol):
# the verdict headers must be readable by the page, or it cannot tell verified from not.
CORS_ALLOWED_METHODS = "GET, POST"
CORS_EXPOSED_HEADERS = ", ".join((HEADER_VERIFIED, HEADER_FAILURE, HEADER_SIGNER,
                                  HEADER_EVIDENCE, HEADER_E2EE, HEADER_REQUEST_BINDING,
                                  HEADER_SERVED_MODEL, HEADER_SIGNATURE_KIND, HEADER_REQUEST_ID,
                                  HEADER_SHOULD_RETRY))
CORS_MAX_AGE_SECONDS = "600"
_HEADER_LIST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_, ")


def cors_headers(origin: str, requested_headers: str | None = None) -> dict[str, str]:
    """CORS answer headers for a configured ``origin`` (with a preflight's requested headers,
    echoed only when they are a plain list of header names)."""
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
               "Access-Control-Expose-Headers": CORS_EXPOSED_HEADERS}
    if requested_headers is not None:
        headers["Access-Control-Allow-Methods"] = CORS_ALLOWED_METHODS
        headers["Access-Control-Max-Age"] = CORS_MAX_AGE_SECONDS
        wanted = requested_headers.lower()
        if len(wanted) <= 2048 and set(wanted) <= _HEADER_LIST_CHARACTERS:
            headers["Access-Control-Allow-Headers"] = wanted
    return headers


def check_json_content_type(content_type: str | None) -> None:
    """A ``POST`` body must be declared ``application/json`` (parameters such as charset allowed).

    Raises:
        BadRequest: ``request.unsupported_media_type`` (415).
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise BadRequest("POST bodies must be Content-Type: application/json",
                         code="request.unsupported_media_type", http_status=415)
