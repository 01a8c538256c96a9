"""Wiring: from settings to the objects the proxy handlers share (one ``ClientSession``)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from sidecar.config import Settings
from sidecar.errors import ConfigError
from sidecar.providers.contracts import ProviderContract, SignerRules, signer_rules
from sidecar.proxy.admin import attestation_times
from sidecar.proxy.app import ProxyState, StateFactory
from sidecar.proxy.attester import AttestationCache, CachedAttestation, ModelAttester
from sidecar.proxy.collateral import CollateralSource
from sidecar.proxy.model_names import KnownModelNames, exact_names, provider_model_list
from sidecar.proxy.fetch import PeerRecordingConnector
from sidecar.proxy.nras_client import NrasClient
from sidecar.proxy.provenance_source import ProvenanceGate, ProvenanceSource
from sidecar.proxy.upstream import UpstreamClient
from sidecar.proxy.verdict import CompletionVerifier
from sidecar.pins import IdentityGate, PinStore, pins_dir
from sidecar.receipts import ReceiptLog, RecentChatIds
from sidecar.telemetry import Telemetry
from sidecar.policy_file import load_policy
from sidecar.trust import load_anchors
from sidecar.verify.policy import PolicySet


def build_attester(settings: Settings, session: aiohttp.ClientSession,
                   policies: PolicySet) -> tuple[UpstreamClient, ModelAttester]:
    """The upstream client and the attester (also used alone by ``tee-sidecar attest``)."""
    upstream_settings = settings.upstream
    upstream = UpstreamClient(
        session, ProviderContract(upstream_settings.provider, upstream_settings.base_url),
        upstream_settings.resolved_api_key(),
        signature_retries=upstream_settings.signature_retries,
        signature_retry_delay=upstream_settings.signature_retry_delay,
        signature_deadline=upstream_settings.signature_deadline,
        evidence_timeout=settings.attestation.timeout,
        ssl_context=provider_tls(upstream_settings.ca_file))
    anchors = load_anchors(settings.trust.anchors)
    attestation = settings.attestation
    collateral = CollateralSource(session, pccs_url=attestation.pccs_url,
                                  offline_path=attestation.collateral_dir,
                                  cache_dir=settings.state.resolved_cache_dir() / "collateral",
                                  timeout=attestation.timeout)
    nras = NrasClient(session, attestation.nras_url, attestation.nvidia_jwks_url,
                      attestation.timeout)
    attester = ModelAttester(upstream, collateral=collateral, nras=nras, roots=anchors.roots,
                             policies=policies, signing_algo=settings.verification.signing_algo,
                             pinned_jwks=anchors.pinned_jwks, max_nodes=attestation.max_nodes)
    return upstream, attester


def signer_rules_for(settings: Settings) -> SignerRules:
    """The profile's signer rules with ``verification.model_renamed`` applied."""
    rules = signer_rules(settings.upstream.provider)
    choice = settings.verification.model_renamed
    if choice == "profile":
        return rules
    return dataclasses.replace(rules, accept_model_renamed=choice == "accept")


def provider_tls(ca_file: Path | None) -> ssl.SSLContext | None:
    """The provider's TLS trust: the system store plus ``upstream.ca_file`` (``None``: system).

    Only the provider's connections use it: PCS, NRAS and NVIDIA's JWKS, whose TLS is part of
    the GPU trust chain, stay on the system store.
    """
    if ca_file is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(ca_file))
    return context


def client_session(settings: Settings) -> aiohttp.ClientSession:
    """The one outgoing ``ClientSession``: no transparent decompression (the enclave hashes
    bodies as produced) and header bounds from ``limits``."""
    limits = settings.limits
    # Records each connection's TLS certificate for the fetch using it (the TLS binding).
    connector = PeerRecordingConnector(limit=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                 max_line_size=limits.max_header_bytes,
                                 max_field_size=limits.max_header_bytes)


def state_factory(settings: Settings, policies: PolicySet) -> StateFactory:
    """A ``StateFactory`` for ``build_proxy_app`` bound to ``settings`` and ``policies``.

    Raises:
        ConfigError: the pin store exists but cannot be read (start-up stops before serving).
    """
    pins = PinStore(pins_dir(settings.state.dir))
    provenance_settings = settings.provenance
    try:
        token = (provenance_settings.api_token_file.read_text(encoding="utf-8").strip()
                 if provenance_settings.api_token_file is not None else None)
    except OSError as exc:
        raise ConfigError(f"provenance.api_token_file: cannot read it: {exc.strerror}") from None

    async def make_state(app: web.Application, session: aiohttp.ClientSession) -> ProxyState:
        telemetry = Telemetry()
        receipts = (ReceiptLog(settings.receipts_path(), max_bytes=settings.receipts.max_bytes,
                               backups=settings.receipts.backups,
                               evidence_max_bytes=settings.receipts.evidence_max_bytes,
                               evidence_max_age=settings.receipts.evidence_max_age_days * 86400)
                    if settings.receipts.enabled else None)

        async def archive(entry: CachedAttestation) -> None:
            if receipts is not None:
                digest = entry.report.evidence_sha256
                await receipts.archive_evidence_async(digest, entry.body)
                await asyncio.to_thread(receipts.archive_context, digest, entry.context)

        upstream, attester = build_attester(settings, session, policies)
        identity = IdentityGate(pins, policies, on_change=telemetry.observe_identity_change)
        provenance = ProvenanceGate(
            ProvenanceSource(session, api_url=provenance_settings.api_url,
                             archive_dir=settings.state.dir / "provenance",
                             timeout=provenance_settings.timeout, token=token),
            policies, provenance_settings.trusted_root)
        known = KnownModelNames(
            provider_model_list(upstream, settings.attestation.timeout),
            exact_names(entry.pattern for entry in policies.models)
            | frozenset(settings.attestation.warm_models))
        cache = AttestationCache(
            attester, lambda model: policies.for_model(model).attestation_ttl_seconds,
            telemetry=telemetry, on_attested=archive, identity=identity, provenance=provenance,
            admit=known.admit if settings.attestation.only_known_models else None)
        telemetry.watch_attestations(lambda: attestation_times(cache))
        verifier = CompletionVerifier(upstream, cache, settings.verification.signing_algo,
                                      telemetry, signer_rules_for(settings))
        return ProxyState(settings, upstream, cache, verifier, policies, telemetry, receipts,
                          identity,
                          receipts.recent_chat_ids if receipts is not None else RecentChatIds())

    return make_state


def load_policies(settings: Settings) -> PolicySet:
    """The policy set named by ``policy.file`` (or the strict built-in default).

    Raises:
        ConfigError: the file is unreadable or invalid.
    """
    return load_policy(settings.policy.file)
