"""Verify one model's attestation report, node by node (spec section 2). Sans-I/O.

The I/O layer (``sidecar.proxy.attester``) fetches the report with a fresh nonce and gathers, per
node, what must come from elsewhere (DCAP collateral, the NRAS answer, the NVIDIA JWKS, the TLS
key of the connection). This module decides. For every node:

  (1) verify the TDX quote locally against the root CA and collateral (dcap-qvl), and read its
      TCB status and advisories (facts, judged in (7)), REPORTDATA, MRTD, RTMR0-3 and
      mr_config_id from it;
  (2) REPORTDATA binds the node's signing key (or, with a TLS fingerprint, sha256(key ‖ fp))
      and the nonce this session sent; every nonce echo present (``request_nonce``, ``nonce``)
      names that nonce; ``signing_public_key``, when served, is the key of the address;
  (3) with a TLS fingerprint: it equals the SPKI hash of the certificate on the connection that
      fetched the report;
  (4) the event log replays to the quote's RTMR3 and every runtime event digest is recomputed
      from its payload; only then are payloads read;
  (5) mr_config_id = 0x01 ‖ sha256(app_compose); the compose-hash, app-id and instance-id events
      agree with ``info``;
 (5b) NEAR's compose-manager attestation, when present, in full (spec 0.4): its own quote (same
      collateral path and TCB policy), REPORTDATA = actions_hash ‖ our nonce, its nonce echo,
      mr_config_id binding the node's app_compose, RTMR3 replayed from its own event log; only
      then is ``actions_hash`` checked against ``actions``;
  (6) GPU evidence: ``nvidia_payload.nonce`` is our nonce, and the NRAS answer verifies (JWT
      signatures, issuer, expiry, eat_nonce, overall result, submods, per-GPU policy claims);
  (7) the user's policy over the measured facts, TCB status and advisories included (the one
      TCB gate): the model's entry for model nodes, the gateway entry for a gateway (a model's
      measurement pins never apply to the gateway).

A node is attested only when every check passes. A check that could not be decided (no
collateral, NRAS unreachable) is ``incomplete`` and never counts as passing. Only the keys of
attested nodes may sign completions.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sidecar.providers.wire import (
    AttestationDocument,
    AttestedNodeClaim,
    NodeAttestationWire,
    compose_manager_label,
)
from sidecar.verify.binding import (
    NONCE_LENGTH,
    check_public_key_binding,
    check_report_data_binding,
)
from sidecar.verify.checks import Check, CheckedReport, Status, Verdict, combine
from sidecar.errors import VerificationFailed
from sidecar.verify.compose import (
    NodeInfo,
    check_compose_binding,
    check_compose_manager_actions,
    check_info_events,
    parse_info,
)
from sidecar.verify.eventlog import EventLogReport, verify_event_log
from sidecar.verify.identity import DeploymentFacts
from sidecar.verify.nvidia import GpuReport, check_gpu_payload_nonce, verify_nras_result
from sidecar.verify.policy import GATEWAY_DEFAULT, ModelPolicy, NodeFacts
from sidecar.verify.signature import AttestedSigner, normalise_key
from sidecar.verify.tdx import (
    TdxMeasurements,
    TdxQuoteReport,
    parse_quote_measurements,
    verify_tdx_quote,
)

@dataclass(frozen=True, slots=True)
class TrustRoots:
    """The roots this verification trusts: Intel's (or the simulator's) CA and NRAS issuer."""

    tdx_root_ca_der: bytes
    nras_issuer: str
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class NodeEvidence:
    """What the I/O layer gathered for one node; ``None`` means it could not be had.

    Attributes:
        collateral_json: DCAP collateral for the node's quote.
        collateral_error: why collateral is missing (shown in the incomplete check).
        nras_response: NRAS's answer to the node's GPU payload.
        nras_error: why it is missing.
        jwks: NVIDIA's (or the simulator's) JWKS.
        tls_spki_sha256: SPKI hash of the TLS certificate the report arrived over.
    """

    collateral_json: str | None = None
    collateral_error: str = "no collateral"
    nras_response: Sequence[Any] | None = None
    nras_error: str = "NRAS not consulted"
    jwks: Mapping[str, Any] | None = None
    tls_spki_sha256: bytes | None = None


@dataclass(frozen=True, slots=True)
class NodeReport(CheckedReport):
    """Everything checked about one node."""

    label: str
    role: str
    signing_key: str
    algo: str
    checks: tuple[Check, ...]
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    measurements: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[GpuReport, ...] = ()
    model_name: str | None = None
    # Facts only verified evidence gives (bound compose, replayed runtime events): what
    # sidecar.verify.identity reads to pin the deployment. None when not established.
    deployment: DeploymentFacts | None = None
    # The node's ``signing_public_key`` (lower-case hex), only when ``binding.public_key``
    # proved it is the key of the attested address: the one key E2EE may seal prompts to.
    public_key: str | None = None
    # The SPKI sha256 of the TLS key the quote binds, only when ``binding.tls_certificate``
    # proved it is the key of the connection the report arrived over (the I/O layer pins it).
    bound_tls_spki: bytes | None = None


@dataclass(frozen=True, slots=True)
class AttestationReport(CheckedReport):
    """The verdict on a model's report: one ``NodeReport`` per node."""

    model: str
    nonce: str
    evidence_sha256: str
    nodes: tuple[NodeReport, ...]
    verified_at: int

    empty_code: ClassVar[str] = "attestation.failed"

    @property
    def checks(self) -> tuple[Check, ...]:  # type: ignore[override]
        """Every node's checks, node by node."""
        return tuple(check for node in self.nodes for check in node.checks)

    @property
    def status(self) -> Status:
        """Every node's status combined: a report with no node, or a node with no check, fails."""
        return combine(node.status for node in self.nodes)

    @property
    def ok(self) -> bool:
        """True only when every node passed every check."""
        return self.status is Status.PASS

    @property
    def verdict(self) -> Verdict:
        """``verified`` only when every node passed every check."""
        return Verdict.of(self.status)

    @property
    def attested_keys(self) -> frozenset[str]:
        """Normalised signing keys of the model nodes that passed every check.

        A gateway node (NEAR's TLS terminator) is verified and reported, but its key never
        signs completions: the GPU requirement is waived for it, so admitting its key would let
        a report dressed as a gateway skip the GPU evidence the policy demands.
        """
        return frozenset(n.signing_key for n in self.nodes
                         if n.role == "model" and n.status is Status.PASS)

    @property
    def attested_signers(self) -> dict[str, AttestedSigner]:
        """Every node that passed every check, by normalised key: its role and model name.

        Which of them may sign which record is the signature verifier's decision
        (``signature_kind``, spec 0.2): a gateway key only ever signs gateway-kind records.
        """
        return {n.signing_key: AttestedSigner(n.signing_key, n.algo, n.role,  # type: ignore[arg-type]
                                              n.model_name)
                for n in self.nodes if n.status is Status.PASS}

    @property
    def e2ee_keys(self) -> dict[str, str]:
        """The keys E2EE may seal to: per attested model node (normalised signing key, in
        report order), its ``signing_public_key`` proved to belong to the attested address
        (``binding.public_key``). Nodes that served no such key are left out."""
        return {n.signing_key: n.public_key for n in self.nodes
                if n.role == "model" and n.status is Status.PASS and n.public_key is not None}


    def failure_message(self, check: Check | None) -> str:
        """``attestation of <model> failed|undecided: <check>: <detail>``."""
        if check is None:
            return f"attestation of {self.model} failed: no node attested"
        outcome = "undecided" if check.status is Status.INCOMPLETE else "failed"
        return f"attestation of {self.model} {outcome}: {check.name}: {check.detail}"

    def raise_unless_attested(self) -> None:
        """Return when some model node is attested (its key may sign); else raise.

        Nodes that failed beside an attested one do not raise: their keys are simply not
        admitted (``attested_keys``).

        Raises:
            VerificationIncomplete: no model node attested and the first reason is undecided.
            VerificationFailed: no model node attested (``attestation.failed`` when every node
                passed but none is a model node).
        """
        if self.attested_keys:
            return
        self.raise_for_failure()
        raise VerificationFailed(self.failure_message(None), code=self.empty_code)


def verify_attestation(
    document: AttestationDocument,
    *,
    model: str,
    nonce: str,
    evidence: Mapping[str, NodeEvidence],
    roots: TrustRoots,
    policy: ModelPolicy,
    now: int,
    gateway_policy: ModelPolicy | None = None,
) -> AttestationReport:
    """Verify every node of ``document`` (see the module docstring for the recipe).

    Args:
        document: the parsed report.
        model: the model it was requested for.
        nonce: the 64-hex nonce this session sent.
        evidence: per evidence label (``AttestationDocument.quotes``), what the I/O layer
            gathered: one entry per node, one per compose-manager quote.
        roots: trust anchors.
        policy: the user's policy for ``model``, applied to model nodes.
        now: unix seconds (injected so tests can pin the clock).
        gateway_policy: the policy for a gateway node (``PolicySet.gateway``); by default
            ``GATEWAY_DEFAULT``: TDX required, UpToDate only, no pins, no GPU.

    Raises:
        Nothing: every node is reported, failed closed if its verifier raised. A ``nonce`` that
        is not 32 bytes of hex (a caller bug: ``verify_node`` raises ``ValueError``; the CLI and
        the attester never pass one) fails each node that carries a quote with
        ``attestation.internal_error``.
    """
    nodes = tuple(
        _verify_node_closed(
            claim, nonce=nonce,
            evidence=evidence.get(claim.label, NodeEvidence()),
            compose_manager_evidence=evidence.get(compose_manager_label(claim.label)),
            roots=roots,
            policy=(gateway_policy or GATEWAY_DEFAULT) if claim.role == "gateway" else policy,
            now=now)
        for claim in document.nodes
    )
    return AttestationReport(model, nonce, document.evidence_sha256, nodes, now)


def _verify_node_closed(claim: AttestedNodeClaim, **kwargs: Any) -> NodeReport:
    """``verify_node``, failing the node (never passing it) if a verifier raises unexpectedly."""
    try:
        return verify_node(claim, **kwargs)
    except Exception as exc:  # a bug or an input no verifier foresaw: fail closed, keep going
        wire = claim.wire
        failed = Check.failed("attestation.internal", "attestation.internal_error",
                              f"verification raised {type(exc).__name__}")
        return NodeReport(claim.label, claim.role,
                          normalise_key(wire.signing_address, wire.signing_algo),
                          wire.signing_algo, (failed,), model_name=wire.model_name)


def verify_node(
    claim: AttestedNodeClaim,
    *,
    nonce: str,
    evidence: NodeEvidence,
    roots: TrustRoots,
    policy: ModelPolicy,
    now: int,
    compose_manager_evidence: NodeEvidence | None = None,
) -> NodeReport:
    """Verify one node; bad evidence becomes failed checks (``verify_attestation`` also turns
    any unexpected exception into a failed node).

    Raises:
        ValueError: ``nonce`` is not 32 bytes of hex (a caller bug).
    """
    wire = claim.wire
    algo = wire.signing_algo
    key = normalise_key(wire.signing_address, algo)
    checks: list[Check] = []

    def report(**extra: Any) -> NodeReport:
        return NodeReport(claim.label, claim.role, key, algo, tuple(checks),
                          model_name=wire.model_name, **extra)

    # (1) The quote, verified, is the only source of measurements.
    quote_checks, tdx, measurements = _verify_quote(wire.intel_quote, evidence, roots, now)
    checks.extend(quote_checks)
    if tdx is None or measurements is None:
        # No quote, or one that failed: nothing it carries is read (a quote that did not
        # verify has no TCB status either: verify_tdx_quote reports one only with measurements).
        return report()
    measured = _measured(measurements)
    extra: dict[str, Any] = {"tcb_status": tdx.tcb_status, "advisory_ids": tdx.advisory_ids,
                             "measurements": measured}

    # (2) REPORTDATA binds the signing key and our nonce.
    tls_fingerprint = _hex_or_none(wire.tls_cert_fingerprint)
    if wire.tls_cert_fingerprint is not None and tls_fingerprint is None:
        checks.append(Check.failed("binding.tls", "binding.tls_malformed",
                                   "tls_cert_fingerprint is not hex"))
        return report(**extra)
    nonce_bytes = bytes.fromhex(nonce)
    if len(nonce_bytes) != NONCE_LENGTH:
        raise ValueError(f"the session nonce must be {NONCE_LENGTH} bytes")  # a caller bug
    binding_checks, public_key = _check_binding(wire, measurements.report_data, nonce_bytes,
                                                tls_fingerprint)
    checks.extend(binding_checks)
    if public_key is not None:
        extra["public_key"] = public_key

    # (3) The TLS key of the connection is the attested one.
    if tls_fingerprint is not None:
        checks.append(tls_check := _check_tls(tls_fingerprint, evidence.tls_spki_sha256))
        extra["bound_tls_spki"] = tls_fingerprint if tls_check.ok else None

    # (4) The event log replays to RTMR3; payloads are believed only after.
    eventlog = verify_event_log(wire.event_log if wire.event_log is not None else [],
                                rtmr3=measurements.rtmr3)
    checks.extend(eventlog.checks)

    # (5) The compose file and dstack identity events.
    compose_checks, info, facts_compose, deployment = _check_compose(
        wire.info, measurements.mr_config_id, eventlog)
    checks.extend(compose_checks)
    if deployment is not None:
        extra["deployment"] = deployment
    # (5b) The compose-manager attestation: a quote of its own, then its actions.
    if wire.compose_manager_attestation is not None:
        checks.extend(_verify_compose_manager(
            wire.compose_manager_attestation, app_compose=info.app_compose if info else None,
            nonce=nonce_bytes, evidence=compose_manager_evidence or NodeEvidence(),
            roots=roots, policy=policy, now=now))

    # (6) GPU evidence.
    payload = wire.nvidia_payload_text()
    gpu_checks, gpus = _check_gpus(payload, nonce, evidence, roots, policy, now)
    checks.extend(gpu_checks)
    gpu_status = combine(c.status for c in gpu_checks)
    extra["gpus"] = gpus

    # (7) The user's policy over what was measured.
    tdx_status = combine(c.status for c in tdx.checks)
    facts = _node_facts(tdx, measured, facts_compose, has_nvidia=payload is not None,
                        tdx_status=tdx_status, gpu_status=gpu_status)
    checks.extend(_policy_checks(policy, facts, claim.role, tdx_status, gpu_status))
    return report(**extra)


def _measured(measurements: TdxMeasurements) -> dict[str, str]:
    """The registers of a quote as lower-case hex, as reports and the policy show them."""
    return {
        "mrtd": measurements.mrtd.hex(), "rtmr0": measurements.rtmr0.hex(),
        "rtmr1": measurements.rtmr1.hex(), "rtmr2": measurements.rtmr2.hex(),
        "rtmr3": measurements.rtmr3.hex(), "mr_config_id": measurements.mr_config_id.hex(),
    }


def _node_facts(tdx: TdxQuoteReport, measured: Mapping[str, str],
                facts_compose: Mapping[str, str | None], *, has_nvidia: bool,
                tdx_status: Status, gpu_status: Status) -> NodeFacts:
    """Step (7)'s input: what the node's evidence measured, for the policy to judge."""
    return NodeFacts(
        has_tdx=True,
        has_nvidia=has_nvidia,
        tdx_ok=tdx_status is not Status.FAIL,
        gpu_ok=gpu_status is not Status.FAIL,
        mrtd=measured["mrtd"], rtmr0=measured["rtmr0"], rtmr1=measured["rtmr1"],
        rtmr2=measured["rtmr2"],
        compose_hash=facts_compose["compose_hash"], app_id=facts_compose["app_id"],
        os_image_hash=facts_compose["os_image_hash"],
        tcb_status=tdx.tcb_status, advisory_ids=tuple(tdx.advisory_ids),
    )


def _verify_quote(intel_quote: str | None, evidence: NodeEvidence, roots: TrustRoots, now: int
                  ) -> tuple[list[Check], TdxQuoteReport | None, TdxMeasurements | None]:
    """Step (1): the node's quote, verified; its measurements, or the parsed ones when undecided.

    Returns the checks, the quote report (``None`` when there is no hex quote to verify) and the
    measurements (``None`` when the quote failed or cannot be parsed).
    """
    if not intel_quote:
        return [Check.failed("tdx.quote", "tdx.quote_missing", "node carries no intel_quote")], \
            None, None
    try:
        quote = bytes.fromhex(intel_quote.removeprefix("0x"))
    except ValueError:
        return [Check.failed("tdx.quote", "tdx.quote_malformed", "intel_quote is not hex")], \
            None, None
    tdx = verify_tdx_quote(quote, evidence.collateral_json, root_ca_der=roots.tdx_root_ca_der,
                           now=now)
    checks = _explain_incomplete(tdx.checks, evidence.collateral_error)
    measurements: TdxMeasurements | None = tdx.measurements
    if measurements is None and not any(c.status is Status.FAIL for c in tdx.checks):
        # Undecided (offline, no collateral): keep checking the rest against the parsed quote,
        # so an offline report shows every check; the verdict stays "incomplete" at best.
        measurements = parse_quote_measurements(quote)
    return checks, tdx, measurements


def _check_binding(wire: NodeAttestationWire, report_data: bytes, nonce: bytes,
                   tls_fingerprint: bytes | None) -> tuple[list[Check], str | None]:
    """Step (2): REPORTDATA, the nonce echoes and ``signing_public_key``.

    Returns the checks and the node's public key (lower-case hex) when it is proven to be the
    key of the attested address, else ``None``.
    """
    algo = wire.signing_algo
    checks = list(check_report_data_binding(report_data, signing_address=wire.signing_address,
                                            algo=algo, nonce=nonce,
                                            tls_fingerprint=tls_fingerprint))
    # Every echo present must name our nonce: one right echo does not excuse a wrong one.
    for echo_field in ("request_nonce", "nonce"):
        echoed = getattr(wire, echo_field)
        if echoed is not None:
            checks.append(_check_nonce_echo(f"binding.nonce_echo.{echo_field}", echo_field,
                                            echoed, nonce))
    public_key: str | None = None
    if wire.signing_public_key is not None:
        key_binding = check_public_key_binding(wire.signing_public_key,
                                               signing_address=wire.signing_address, algo=algo)
        checks.append(key_binding)
        if key_binding.ok:
            public_key = wire.signing_public_key.strip().removeprefix("0x").lower()
            if algo == "ecdsa" and len(public_key) == 130:
                public_key = public_key[2:]  # ACI's 04-prefixed form of the same point
    return checks, public_key


def _check_compose(info_raw: Mapping[str, Any] | None, mr_config_id: bytes,
                   eventlog: EventLogReport) -> tuple[list[Check], NodeInfo | None,
                                                      dict[str, str | None],
                                                      DeploymentFacts | None]:
    """Step (5): ``info`` parsed, its compose bound to mr_config_id, its events to the log.

    Returns the checks, the parsed info (``None`` if it does not parse), the compose facts for
    the policy and the deployment facts (both only from a replayed event log).
    """
    checks: list[Check] = []
    facts_compose: dict[str, str | None] = {"compose_hash": None, "app_id": None,
                                            "os_image_hash": None}
    deployment: DeploymentFacts | None = None
    info: NodeInfo | None
    try:
        info = parse_info(info_raw or {})
    except VerificationFailed as exc:
        checks.append(Check.failed("info.parse", exc.code, exc.message))
        info = None
    if info is not None:
        checks.append(check_compose_binding(info.app_compose, mr_config_id))
        if eventlog.ok:
            checks.extend(check_info_events(info, eventlog.runtime_events))
            events = eventlog.runtime_events
            facts_compose = {
                "compose_hash": events["compose-hash"].hex() if "compose-hash" in events else None,
                "app_id": events["app-id"].hex() if "app-id" in events else None,
                "os_image_hash": events["os-image-hash"].hex() if "os-image-hash" in events else None,
            }
            deployment = DeploymentFacts.from_verified(info.app_compose, events)
    return checks, info, facts_compose, deployment


def _check_gpus(payload: str | None, nonce: str, evidence: NodeEvidence, roots: TrustRoots,
                policy: ModelPolicy, now: int) -> tuple[list[Check], tuple[GpuReport, ...]]:
    """Step (6): the GPU payload's nonce and NRAS's answer; returns the checks and GPU reports.

    No payload gives no checks (the policy decides whether GPU evidence is required).
    """
    gpus: tuple[GpuReport, ...] = ()
    gpu_checks: list[Check] = []
    if payload is not None:
        gpu_checks.append(check_gpu_payload_nonce(payload, nonce))
        if evidence.nras_response is None or evidence.jwks is None:
            gpu_checks.append(Check.incomplete("gpu.nras", "gpu.nras_unavailable",
                                               evidence.nras_error))
        else:
            gpu = verify_nras_result(list(evidence.nras_response), expected_nonce=nonce,
                                     jwks=evidence.jwks, expected_issuer=roots.nras_issuer,
                                     now=now, policy=policy.gpu)
            gpu_checks.extend(gpu.all_checks())
            if not gpu.gpus:
                gpu_checks.append(Check.failed("gpu.count", "gpu.nras_response_malformed",
                                               "NRAS answer verified no GPU"))
            gpus = gpu.gpus
    return gpu_checks, gpus


# Policy checks over facts that only a verified quote with collateral provides.
_NEEDS_VERIFIED_TCB = frozenset({"policy.tcb_status", "policy.advisories"})


def _policy_checks(policy: ModelPolicy, facts: NodeFacts, role: str, tdx_status: Status,
                   gpu_status: Status) -> list[Check]:
    """The policy's checks, read with what the facts cannot say on their own.

    Evidence that was present but undecided (offline, NRAS unreachable) keeps the policy's
    evidence check undecided rather than passed; a gateway (TLS terminator) node runs no GPUs,
    so the GPU requirement does not apply to it (spec section 2, NEAR AI Cloud's shape).
    """
    adjusted = []
    for check in policy.evaluate(facts):
        if check.name == "policy.gpu_evidence" and role == "gateway" and not facts.has_nvidia:
            check = Check.passed(check.name, "gateway node: no GPU evidence expected")
        elif check.ok and ((check.name == "policy.tdx_evidence" and tdx_status is Status.INCOMPLETE)
                           or (check.name == "policy.gpu_evidence" and facts.has_nvidia
                               and gpu_status is Status.INCOMPLETE)):
            check = Check.incomplete(check.name, "policy.evidence_undecided",
                                     "evidence present but its verification was not decided")
        elif (not check.ok and tdx_status is Status.INCOMPLETE
              and check.name in _NEEDS_VERIFIED_TCB):
            # No collateral, so no TCB status: undecided, not a policy violation.
            check = Check.incomplete(check.name, "policy.evidence_undecided",
                                     f"{check.detail} (quote verification undecided)")
        adjusted.append(check)
    return adjusted


_CM = "compose_manager."


def _verify_compose_manager(cma: Mapping[str, Any], *, app_compose: str | None, nonce: bytes,
                            evidence: NodeEvidence, roots: TrustRoots, policy: ModelPolicy,
                            now: int) -> list[Check]:
    """Step (5b): NEAR's ``compose_manager_attestation`` verified in full (spec 0.4).

    Its checks are named ``compose_manager.<check>`` and keep the codes of the shared steps
    (``tdx.*``, ``eventlog.*``); ``actions_hash`` is checked against ``actions`` only when
    nothing before it failed, because until the quote binds it the hash proves nothing.
    """
    checks: list[Check] = []
    quote_hex = cma.get("quote")
    if not isinstance(quote_hex, str) or not quote_hex:
        return [Check.failed(_CM + "tdx.quote", "tdx.quote_missing",
                             "compose_manager_attestation carries no quote")]
    try:
        quote = bytes.fromhex(quote_hex.removeprefix("0x"))
    except ValueError:
        return [Check.failed(_CM + "tdx.quote", "tdx.quote_malformed",
                             "compose_manager_attestation quote is not hex")]
    # (a) The quote: same collateral path as any node's, and its TCB facts judged by the same
    # policy (undecided without collateral: the quote's own check says so).
    tdx = verify_tdx_quote(quote, evidence.collateral_json, root_ca_der=roots.tdx_root_ca_der,
                           now=now)
    checks.extend(_renamed(_explain_incomplete(tdx.checks, evidence.collateral_error)))
    if tdx.ok:
        checks.extend(_renamed(policy.tcb_checks(tdx.tcb_status, tdx.advisory_ids)))
    measurements = tdx.measurements
    if measurements is None:
        if any(c.status is Status.FAIL for c in tdx.checks):
            return checks
        measurements = parse_quote_measurements(quote)  # undecided: keep checking, stays incomplete
        if measurements is None:
            return checks
    # (b) REPORTDATA = actions_hash ‖ the nonce sent (never the JSON report_data copy).
    claimed = cma.get("actions_hash")
    actions_hash = _hex_or_none(claimed) if isinstance(claimed, str) else None
    if actions_hash is None or len(actions_hash) != 32:
        checks.append(Check.failed(_CM + "report_data", "binding.actions_malformed",
                                   "actions_hash is not 32 bytes of hex"))
        return checks
    if hmac.compare_digest(measurements.report_data, actions_hash + nonce):
        checks.append(Check.passed(_CM + "report_data",
                                   "report_data = actions_hash ‖ this session's nonce"))
    else:
        checks.append(Check.failed(
            _CM + "report_data", "compose_manager.report_data_mismatch",
            f"report_data {measurements.report_data.hex()} is not actions_hash ‖ nonce "
            f"{(actions_hash + nonce).hex()}"))
    echoed = cma.get("nonce")
    if echoed is not None:
        checks.append(_check_nonce_echo(_CM + "nonce_echo", "compose_manager_attestation.nonce",
                                        echoed, nonce))
    # (c) mr_config_id binds the same app_compose as the node.
    if app_compose is None:
        checks.append(Check.failed(_CM + "binding.compose", "binding.compose_mismatch",
                                   "the node serves no app_compose to bind the quote to"))
    else:
        checks.extend(_renamed([check_compose_binding(app_compose, measurements.mr_config_id)]))
    # (d) Its own event log replays to its own RTMR3.
    log_raw = cma.get("event_log")
    eventlog = verify_event_log(log_raw if log_raw is not None else [], rtmr3=measurements.rtmr3)
    checks.extend(_renamed(eventlog.checks))
    # (e) Only now does actions_hash authenticate actions.
    if not any(c.status is Status.FAIL for c in checks):
        checks.append(check_compose_manager_actions(cma))
    return checks


def _renamed(checks: Iterable[Check]) -> list[Check]:
    return [Check(_CM + c.name, c.status, c.detail, c.code) for c in checks]


def _check_nonce_echo(name: str, field_name: str, echoed: object, nonce: bytes) -> Check:
    if isinstance(echoed, str) and _same_nonce(echoed, nonce):
        return Check.passed(name, f"{field_name} echoes the nonce sent")
    shown = echoed[:80] if isinstance(echoed, str) else type(echoed).__name__
    return Check.failed(name, "binding.nonce_mismatch",
                        f"{field_name} echoes {shown}, not the nonce sent")


def _same_nonce(echoed: str, nonce: bytes) -> bool:
    """The echoed nonce names ours: as hex (any case) or, as NanoGPT's examples show, base64
    (spec section 1). REPORTDATA is what binds the nonce; the echo only must not contradict it."""
    text = echoed.strip()
    try:
        if bytes.fromhex(text.removeprefix("0x")) == nonce:
            return True
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True) == nonce
    except ValueError:
        return False


def _check_tls(fingerprint: bytes, live_spki_sha256: bytes | None) -> Check:
    if live_spki_sha256 is None:
        return Check.failed("binding.tls_certificate", "binding.tls_not_observed",
                            "report binds a TLS key but the report did not arrive over TLS")
    if hmac.compare_digest(fingerprint, live_spki_sha256):
        return Check.passed("binding.tls_certificate",
                            f"the connection's TLS key {live_spki_sha256.hex()} is the attested one")
    return Check.failed("binding.tls_certificate", "binding.tls_mismatch",
                        f"connection's TLS key {live_spki_sha256.hex()} != attested {fingerprint.hex()}")


def _hex_or_none(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        return None


def _explain_incomplete(checks: Sequence[Check], why: str) -> list[Check]:
    return [Check(c.name, c.status, f"{c.detail} ({why})", c.code)
            if c.status is Status.INCOMPLETE else c for c in checks]
