"""The policy engine: which verified facts about a node are acceptable, per model.

Verifiers establish facts (a TDX quote verified with some TCB status, RTMR3 replayed, GPUs
attested); the policy decides whether those facts are good enough for the model a request names.
Rules are small objects that turn :class:`NodeFacts` into :class:`~sidecar.verify.checks.Check`
records and compose with :class:`AllOf` / :class:`AnyOf`. A policy passes if and only if every
check it returns passes; a composite with nothing in it fails (``policy.empty``), so a typo that
empties a rule never turns into "allow everything".

The rules are plain frozen dataclasses; the user's policy file (TOML; see
``config/policy.toml``) is read into them by :func:`sidecar.policy_file.load_policy`, outside
the verification core, which reads no files (issue 10). Facts come from *verified* evidence
only: registers from the verified quote, compose hash / app id / os image hash from an event
log that replayed to RTMR3 (provider-api.md §2), never from the report's ``info`` copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import ClassVar, Final, Literal, Protocol, get_args

from sidecar.errors import VerificationFailed
from sidecar.verify.checks import Check, CheckedReport
from sidecar.verify.identity import DeploymentIdentity, IdentityMode
from sidecar.verify.provenance import ProvenanceRequirement
from sidecar.verify.nvidia import GpuPolicy

__all__ = [
    "BUILTIN_DEFAULT",
    "FACT_FIELDS",
    "AcceptedTcbStatuses",
    "AllOf",
    "AllowedValues",
    "AnyOf",
    "E2EESetting",
    "FactField",
    "GpuRequirements",
    "ModelPolicy",
    "NodeFacts",
    "OnFailure",
    "Policy",
    "PolicyReport",
    "PolicySet",
    "RequireEvidence",
    "TcbStatus",
    "ToleratedAdvisories",
    "build_model_policy",
]

OnFailure = Literal["block", "flag"]
# End-to-end encryption to the model node (docs/e2ee.md), per model.
E2EESetting = Literal["off", "preferred", "required"]

# Facts that an allow-list can pin.
FactField = Literal["mrtd", "rtmr0", "rtmr1", "rtmr2", "compose_hash", "app_id", "os_image_hash"]
FACT_FIELDS: Final[tuple[FactField, ...]] = get_args(FactField)

# TCB statuses dcap-qvl reports. "Revoked" is deliberately absent: no policy may accept it.
TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


def _normalize_hex(value: str) -> str:
    text = value.strip().lower()
    return text[2:] if text.startswith("0x") else text


# --------------------------------------------------------------------------------------------
# Facts and rules


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What verification established about one serving node.

    Every field must come from verified evidence: ``tdx_ok``/``tcb_status``/``advisory_ids`` from
    the quote verification, ``mrtd``/``rtmr0..2`` from the verified quote body, and
    ``compose_hash``/``app_id``/``os_image_hash`` from runtime events of an event log that replayed
    to the quote's RTMR3 (provider-api.md §2). ``None`` means "not established".

    Attributes:
        has_tdx: the report carried a TDX quote.
        has_nvidia: the report carried NVIDIA GPU evidence.
        tdx_ok: the quote, its bindings and its event log verified.
        gpu_ok: every GPU attested and met the GPU requirements.
        mrtd, rtmr0, rtmr1, rtmr2: hex of the quote's registers.
        compose_hash, app_id, os_image_hash: hex payloads of the verified runtime events.
        tcb_status: the quote's TCB status (``UpToDate``, ``OutOfDate``, …).
        advisory_ids: Intel security advisories the TCB level is subject to.
    """

    has_tdx: bool
    has_nvidia: bool
    tdx_ok: bool
    gpu_ok: bool
    mrtd: str | None = None
    rtmr0: str | None = None
    rtmr1: str | None = None
    rtmr2: str | None = None
    compose_hash: str | None = None
    app_id: str | None = None
    os_image_hash: str | None = None
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()


class Policy(Protocol):
    """A rule over :class:`NodeFacts`. It passes iff every returned check passes."""

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        """Judge ``facts``; never raise for bad facts, return failing checks instead."""
        ...


@dataclass(frozen=True, slots=True)
class RequireEvidence:
    """Demand TDX and/or NVIDIA evidence, and that whatever evidence was sent verified.

    Evidence that is present but failed verification fails even when not required: it means the
    provider served something bad, not merely less.

    Attributes:
        tdx: a verified TDX quote is required.
        nvidia: verified NVIDIA GPU evidence is required.
    """

    tdx: bool = True
    nvidia: bool = True

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        """Return ``policy.tdx_evidence`` and ``policy.gpu_evidence``.

        Codes: ``policy.tdx_required`` / ``policy.gpu_required`` (absent but required),
        ``policy.tdx_not_verified`` / ``policy.gpu_not_verified`` (present but failed).

        Raises:
            Nothing.
        """
        return (
            _evidence_check(
                "policy.tdx_evidence", "TDX", "tdx", self.tdx, facts.has_tdx, facts.tdx_ok
            ),
            _evidence_check(
                "policy.gpu_evidence",
                "NVIDIA GPU",
                "gpu",
                self.nvidia,
                facts.has_nvidia,
                facts.gpu_ok,
            ),
        )


def _evidence_check(
    name: str, label: str, short: str, required: bool, present: bool, verified: bool
) -> Check:
    if present and not verified:
        return Check.failed(
            name, f"policy.{short}_not_verified", f"{label} evidence failed verification"
        )
    if present:
        return Check.passed(name, f"{label} evidence verified")
    if required:
        return Check.failed(
            name, f"policy.{short}_required", f"{label} evidence required but absent"
        )
    return Check.passed(name, f"{label} evidence not required by policy")


@dataclass(frozen=True, slots=True)
class AllowedValues:
    """Pin one fact to an allow-list of hex values (MRTD, RTMR0-2, compose hash, app id, …).

    Attributes:
        field: which :class:`NodeFacts` field; one of ``FACT_FIELDS``.
        allowed: accepted values, hex (case and a ``0x`` prefix are ignored).
    """

    field: FactField
    allowed: frozenset[str]

    def __post_init__(self) -> None:
        """Validate ``field`` and normalise ``allowed``.

        Raises:
            ValueError: if ``field`` is not one of ``FACT_FIELDS``.
        """
        if self.field not in FACT_FIELDS:
            raise ValueError(f"cannot pin unknown fact {self.field!r}; known: {FACT_FIELDS}")
        object.__setattr__(self, "allowed", frozenset(_normalize_hex(v) for v in self.allowed))

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        """Return ``policy.<field>``; code ``policy.<field>_not_allowed`` on failure.

        An unestablished fact (``None``) fails: a pin cannot be met by missing evidence.

        Raises:
            Nothing.
        """
        name = f"policy.{self.field}"
        code = f"policy.{self.field}_not_allowed"
        value = getattr(facts, self.field)
        if value is None:
            return (Check.failed(name, code, f"{self.field} is pinned but was not established"),)
        normalized = _normalize_hex(value)
        if normalized not in self.allowed:
            return (
                Check.failed(
                    name, code, f"{self.field} {normalized} is not in the policy's allow-list"
                ),
            )
        return (Check.passed(name, f"{self.field} {normalized} is allowed"),)


@dataclass(frozen=True, slots=True)
class AcceptedTcbStatuses:
    """Accept only the listed TCB statuses of the verified quote.

    Attributes:
        statuses: accepted statuses, e.g. ``{"UpToDate"}``.
    """

    statuses: frozenset[str]

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        """Return ``policy.tcb_status``; code ``policy.tcb_status_not_allowed`` on failure.

        Raises:
            Nothing.
        """
        name = "policy.tcb_status"
        code = "policy.tcb_status_not_allowed"
        if not facts.has_tdx:
            # No quote, no TCB to judge: whether a quote was needed is RequireEvidence's call.
            return (Check.passed(name, "no TDX quote: no TCB status to judge"),)
        if facts.tcb_status is None:
            return (Check.failed(name, code, "no TCB status: no verified TDX quote"),)
        if facts.tcb_status not in self.statuses:
            accepted = ", ".join(sorted(self.statuses)) or "none"
            return (
                Check.failed(
                    name, code, f"TCB status {facts.tcb_status} not accepted (accepted: {accepted})"
                ),
            )
        return (Check.passed(name, f"TCB status {facts.tcb_status} accepted"),)


@dataclass(frozen=True, slots=True)
class ToleratedAdvisories:
    """Every Intel advisory the platform is subject to must be explicitly tolerated.

    Attributes:
        advisory_ids: tolerated ids, e.g. ``{"INTEL-SA-00837"}``.
    """

    advisory_ids: frozenset[str]

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        """Return ``policy.advisories``; code ``policy.advisory_not_tolerated`` on failure.

        Raises:
            Nothing.
        """
        untolerated = sorted(set(facts.advisory_ids) - self.advisory_ids)
        if untolerated:
            return (
                Check.failed(
                    "policy.advisories",
                    "policy.advisory_not_tolerated",
                    f"advisories not tolerated by policy: {', '.join(untolerated)}",
                ),
            )
        listed = ", ".join(facts.advisory_ids) or "none"
        return (Check.passed("policy.advisories", f"advisories tolerated: {listed}"),)


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every rule must pass. Empty fails (``policy.empty``).

    Attributes:
        rules: the rules, evaluated in order; all their checks are returned.
    """

    rules: tuple[Policy, ...]

    def __init__(self, rules: Iterable[Policy]) -> None:
        object.__setattr__(self, "rules", tuple(rules))

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        """Return the checks of every rule, or ``policy.all_of`` failing when empty.

        Raises:
            Nothing.
        """
        if not self.rules:
            return (Check.failed("policy.all_of", "policy.empty", "all-of with no rules"),)
        return tuple(check for rule in self.rules for check in rule.evaluate(facts))


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one rule must pass. Empty fails (``policy.empty``).

    Attributes:
        rules: the alternatives, tried in order.
    """

    rules: tuple[Policy, ...]

    def __init__(self, rules: Iterable[Policy]) -> None:
        object.__setattr__(self, "rules", tuple(rules))

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        """Return ``policy.any_of`` followed by the checks of the first passing alternative.

        When none passes, only ``policy.any_of`` is returned, failing with code
        ``policy.any_of_failed`` and a detail naming each alternative's failures; the failing
        checks of the alternatives are not returned separately, because a failure of one
        alternative does not fail an any-of.

        Raises:
            Nothing.
        """
        name = "policy.any_of"
        if not self.rules:
            return (Check.failed(name, "policy.empty", "any-of with no alternatives"),)
        reasons: list[str] = []
        for index, rule in enumerate(self.rules, start=1):
            checks = rule.evaluate(facts)
            failures = [check for check in checks if not check.ok]
            if checks and not failures:
                return (
                    Check.passed(name, f"alternative {index} of {len(self.rules)} passed"),
                    *checks,
                )
            reasons.append(
                f"alternative {index}: "
                + ("; ".join(f"{c.code}: {c.detail}" for c in failures) or "no checks")
            )
        return (
            Check.failed(
                name, "policy.any_of_failed", "no alternative passed (" + " | ".join(reasons) + ")"
            ),
        )


# --------------------------------------------------------------------------------------------
# Per-model policies


# What each attested GPU must show: the NVIDIA verifier's own policy type, one definition.
GpuRequirements = GpuPolicy


@dataclass(frozen=True, slots=True)
class PolicyReport(CheckedReport):
    """A model policy's verdict on one node.

    Attributes:
        pattern: the glob of the policy entry that judged.
        checks: every check the rule returned.
        on_failure: what the entry says to do when not ``ok`` (``block`` or ``flag``).
    """

    pattern: str
    checks: tuple[Check, ...]
    on_failure: OnFailure

    empty_code: ClassVar[str] = "policy.empty"

    def failure_message(self, check: Check | None) -> str:
        """The failing check's detail; for no checks, that the policy returned none."""
        return check.detail if check is not None else "policy returned no checks"


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """The policy for the models whose names match ``pattern``.

    Build with :func:`build_model_policy` so ``rule`` agrees with the plain fields.

    Attributes:
        pattern: fnmatch glob on the model name (``"TEE/*"``; ``*`` also matches ``/``).
        rule: the composed rule the node's facts must pass.
        attestation_ttl_seconds: how long a node's verdict may be reused.
        on_failure: ``block`` (never deliver) or ``flag`` (deliver, marked unverified).
        gpu: per-GPU claim requirements, for the NVIDIA verifier.
        accepted_tcb_statuses: the TCB statuses ``rule`` accepts (``AcceptedTcbStatuses``); also
            what :meth:`tcb_checks` judges a compose-manager quote by.
        tolerated_advisories: the advisories ``rule`` tolerates (``ToleratedAdvisories``); idem.
        requires_attestation: false only for the unattested entry of a permissive policy set.
        identity: which deployments are trusted (``sidecar.verify.identity``): ``tofu`` (the
            first one attested, kept in the pin store, plus ``identity_pins``), ``pinned``
            (only ``identity_pins``) or ``any`` (no deployment pinning).
        identity_pins: deployment identities the policy file lists for the model.
        provenance: who must have built every image of the attested compose
            (``sidecar.verify.provenance``); ``None``: not required.
        e2ee: end-to-end encryption for the model (``off``, ``preferred``, ``required``;
            docs/e2ee.md); ``None``: the ``[upstream] e2ee`` setting decides.
    """

    pattern: str
    rule: Policy
    attestation_ttl_seconds: int = 3600
    on_failure: OnFailure = "block"
    gpu: GpuRequirements = field(default_factory=GpuRequirements)
    accepted_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    tolerated_advisories: frozenset[str] = frozenset()
    requires_attestation: bool = True
    identity: IdentityMode = "tofu"
    identity_pins: tuple[DeploymentIdentity, ...] = ()
    provenance: ProvenanceRequirement | None = None
    e2ee: E2EESetting | None = None

    def evaluate(self, facts: NodeFacts) -> tuple[Check, ...]:
        """Evaluate ``rule`` (so a ``ModelPolicy`` is itself a :class:`Policy`).

        Raises:
            Nothing.
        """
        return self.rule.evaluate(facts)

    def tcb_checks(self, tcb_status: str | None, advisory_ids: Sequence[str]) -> tuple[Check, ...]:
        """Judge one more verified quote's TCB facts (a compose-manager quote) as ``rule`` judges
        the node's: ``policy.tcb_status`` and ``policy.advisories``.

        Raises:
            Nothing.
        """
        facts = NodeFacts(has_tdx=True, has_nvidia=False, tdx_ok=True, gpu_ok=True,
                          tcb_status=tcb_status, advisory_ids=tuple(advisory_ids))
        return (AcceptedTcbStatuses(self.accepted_tcb_statuses).evaluate(facts)
                + ToleratedAdvisories(self.tolerated_advisories).evaluate(facts))

    def report(self, facts: NodeFacts) -> PolicyReport:
        """Evaluate ``rule`` and wrap the checks with this entry's failure handling.

        Raises:
            Nothing.
        """
        return PolicyReport(self.pattern, self.evaluate(facts), self.on_failure)


def build_model_policy(
    pattern: str,
    *,
    require_tdx: bool = True,
    require_nvidia: bool = True,
    accepted_tcb_statuses: Iterable[str] = ("UpToDate",),
    tolerated_advisories: Iterable[str] = (),
    measurement_sets: Sequence[Mapping[FactField, Iterable[str]]] = (),
    attestation_ttl_seconds: int = 3600,
    on_failure: OnFailure = "block",
    gpu: GpuRequirements | None = None,
    identity: IdentityMode | None = None,
    identity_pins: Sequence[DeploymentIdentity] = (),
    provenance: ProvenanceRequirement | None = None,
    e2ee: E2EESetting | None = None,
) -> ModelPolicy:
    """Compose a :class:`ModelPolicy` from plain settings.

    The rule is ``AllOf[RequireEvidence, AcceptedTcbStatuses, ToleratedAdvisories, pins]``. The
    TCB rules are always there: the quote verifier only reports TCB status and advisories, so
    this is their one gate (a node without a quote passes them; RequireEvidence decides whether
    it needed one). ``measurement_sets`` are alternatives: each set pins
    facts together (``AllOf`` of ``AllowedValues``), and the node must match one set (``AnyOf``);
    a single set is added directly so its failures keep their specific codes.

    Raises:
        ValueError: if a measurement set is empty or names an unknown fact, or measurements are
            pinned while TDX is not required (pins can only be met by a verified quote); if
            ``identity`` is ``pinned`` without ``identity_pins`` or ``any`` with them, or
            ``tofu``/``pinned`` are asked for while TDX is not required. ``identity`` left out
            means ``tofu``, or ``any`` when TDX is not required (no quote, no identity).
    """
    if identity is None:
        identity = "tofu" if require_tdx else "any"
    if identity != "any" and not require_tdx:
        raise ValueError(f'identity = "{identity}" needs a verified TDX quote, but TDX is not '
                         "required")
    if identity == "pinned" and not identity_pins:
        raise ValueError('identity = "pinned" needs at least one pin')
    if identity == "any" and identity_pins:
        raise ValueError('identity = "any" ignores pins: list none, or choose "tofu"/"pinned"')
    if provenance is not None and not require_tdx:
        raise ValueError("image provenance needs the compose a verified TDX quote binds")

    statuses = frozenset(accepted_tcb_statuses)
    advisories = frozenset(tolerated_advisories)
    rules: list[Policy] = [RequireEvidence(tdx=require_tdx, nvidia=require_nvidia),
                           AcceptedTcbStatuses(statuses), ToleratedAdvisories(advisories)]
    if measurement_sets and not require_tdx:
        raise ValueError("measurements are pinned but TDX evidence is not required")
    alternatives: list[Policy] = []
    for index, pins in enumerate(measurement_sets):
        if not pins:
            raise ValueError(f"measurement set {index} pins nothing")
        alternatives.append(
            AllOf(AllowedValues(name, frozenset(values)) for name, values in pins.items())
        )
    if len(alternatives) == 1:
        rules.append(alternatives[0])
    elif alternatives:
        rules.append(AnyOf(alternatives))
    return ModelPolicy(
        pattern=pattern,
        rule=AllOf(rules),
        attestation_ttl_seconds=attestation_ttl_seconds,
        on_failure=on_failure,
        gpu=gpu if gpu is not None else GpuRequirements(),
        accepted_tcb_statuses=statuses,
        tolerated_advisories=advisories,
        e2ee=e2ee,
        requires_attestation=require_tdx or require_nvidia,
        identity=identity,
        identity_pins=tuple(identity_pins),
        provenance=provenance,
    )


# The built-in default (no policy file): require TDX and NVIDIA, UpToDate only, no measurement
# pins, verdicts reused for an hour, failures block.
BUILTIN_DEFAULT: Final[ModelPolicy] = build_model_policy("*")

# The policy of a gateway node (NEAR Cloud's TLS terminator, spec 0.1) when the file has no
# [gateway] table: a verified TDX quote at TCB status UpToDate, no GPU (a gateway runs none), and
# no measurement pins: a model's pins describe the model's CVM, never the gateway's.
GATEWAY_DEFAULT: Final[ModelPolicy] = build_model_policy("(gateway)", require_nvidia=False)

# What a strict set that allows unattested models gives a model no entry names: nothing is
# required, present-but-bad evidence still fails, and the result is only ever flagged.
_UNATTESTED: Final[ModelPolicy] = build_model_policy(
    "*", require_tdx=False, require_nvidia=False, on_failure="flag"
)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every model policy of one file, and how unmatched models are treated.

    Attributes:
        models: per-model entries, in file order; the first glob that matches wins.
        default: the entry for models no glob matches (unless ``strict``).
        strict: only models that match an entry are served.
        allow_unattested_models: whether a model may pass without TEE attestation at all.
        source: where the set came from, for messages.
        gateway: the policy of gateway nodes (the ``[gateway]`` table), whatever the model:
            per-model entries and their pins never apply to a gateway.
    """

    models: tuple[ModelPolicy, ...] = ()
    default: ModelPolicy = BUILTIN_DEFAULT
    strict: bool = False
    allow_unattested_models: bool = False
    source: str = "<built-in default>"
    gateway: ModelPolicy = GATEWAY_DEFAULT

    def for_model(self, model: str) -> ModelPolicy:
        """The policy entry for ``model``.

        Case-sensitive ``fnmatch`` in file order; no match → ``default``, or under a strict set
        the unattested entry (if ``allow_unattested_models``) or a refusal.

        Raises:
            VerificationFailed: code ``policy.model_not_allowed`` when the set is strict, no entry
                matches and unattested models are not allowed.
        """
        for entry in self.models:
            if fnmatchcase(model, entry.pattern):
                return entry
        if not self.strict:
            return self.default
        if self.allow_unattested_models:
            return _UNATTESTED
        raise VerificationFailed(
            f"model {model!r} matches no entry of the strict policy {self.source}",
            code="policy.model_not_allowed",
        )

    def may_pass_unattested(self, model: str) -> bool:
        """Whether ``model`` may be used without TEE attestation (the provider has none).

        Only with ``allow_unattested_models``, and only when the entry that applies requires no
        attestation, with the usual precedence: a ``[models."…"]`` entry, else ``[defaults]``
        (its own values, else the built-in ones, which require TDX and GPU evidence), else under
        a strict set the unattested entry. An earlier rule let any model no entry named through
        in a non-strict set, ignoring ``[defaults] require_tdx = true`` (issue 11, finding 5).

        Raises:
            VerificationFailed: ``policy.model_not_allowed`` as for ``for_model``.
        """
        return self.allow_unattested_models and not self.for_model(model).requires_attestation
