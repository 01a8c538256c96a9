"""Image provenance: every image of the attested compose was built from the expected source. Sans-I/O.

The attested app-compose names the container images a node runs; a digest pins the bytes, but
not who built them. A policy entry with ``[models."…".provenance]`` requires, for every image,
a Sigstore-signed SLSA build-provenance attestation (an in-toto statement in a DSSE envelope, as
GitHub's ``actions/attest-build-provenance`` makes and its attestations API serves) whose signing
certificate names the expected source repository (and, if asked, workflow and ref). The bundles
are fetched by the I/O layer (``sidecar.proxy.provenance_source``), archived, and can be checked
here again offline at any time: Sigstore verification uses the bundle's own transparency-log
inclusion proof and signed timestamps, and a trust root given by the caller.

Recipe of :func:`verify_provenance` (each block tagged ``# (n)``):

  (1) every image reference is pinned by ``@sha256:`` (a tag can be re-pointed after the
      measurement): ``provenance.image_not_pinned``;
  (2) each digest has at least one bundle: ``provenance.attestation_missing`` (or, when the
      fetch failed, ``provenance.attestation_unavailable``, undecided);
  (3) per bundle, sigstore-python verifies the DSSE signature, the certificate chain to the
      trust root (Fulcio) and the transparency-log entry: ``provenance.bundle_malformed``,
      ``provenance.signature_invalid``;
  (4) the payload is an in-toto statement with a SLSA provenance predicate
      (``provenance.predicate_unexpected``) whose subjects include the image digest
      (``provenance.digest_mismatch``);
  (5) the certificate's OIDC issuer (GitHub Actions), Source Repository URI, Build Config URI
      (workflow) and Source Repository Ref are the expected ones: ``provenance.issuer_mismatch``,
      ``provenance.repository_mismatch``, ``provenance.workflow_mismatch``,
      ``provenance.ref_mismatch``.

A digest passes when one of its bundles passes every step; otherwise the first bundle's failure
is reported. One ``provenance.image`` check per image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat import asn1
from cryptography.x509 import Certificate, ExtensionNotFound, ObjectIdentifier

from sidecar.errors import VerificationFailed
from sidecar.verify.checks import Check, CheckedReport
from sidecar.verify.compose import compose_images

if TYPE_CHECKING:  # sigstore is imported when a bundle is checked (it takes 0.2 s to import)
    from sigstore.verify import Verifier

__all__ = [
    "GITHUB_ACTIONS_ISSUER",
    "SLSA_PROVENANCE_TYPES",
    "ImageAttestations",
    "ProvenanceReport",
    "ProvenanceRequirement",
    "check_bundle",
    "verify_provenance",
]

# The OIDC issuer of GitHub Actions' workload identity tokens (Fulcio certificate extension
# 1.3.6.1.4.1.57264.1.8, sigstore/fulcio docs/oid-info.md).
GITHUB_ACTIONS_ISSUER: Final = "https://token.actions.githubusercontent.com"
SLSA_PROVENANCE_TYPES: Final = frozenset({"https://slsa.dev/provenance/v1",
                                          "https://slsa.dev/provenance/v0.2"})
_IN_TOTO_PAYLOAD: Final = "application/vnd.in-toto+json"
_IN_TOTO_STATEMENTS: Final = frozenset({"https://in-toto.io/Statement/v1",
                                        "https://in-toto.io/Statement/v0.1"})
# Fulcio certificate extensions (sigstore/fulcio docs/oid-info.md), DER UTF8String values.
_SOURCE_REPOSITORY_URI: Final = ObjectIdentifier("1.3.6.1.4.1.57264.1.12")
_SOURCE_REPOSITORY_REF: Final = ObjectIdentifier("1.3.6.1.4.1.57264.1.14")
_BUILD_CONFIG_URI: Final = ObjectIdentifier("1.3.6.1.4.1.57264.1.18")
_ISSUER_V2: Final = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


@cache
def _identity_judged_next() -> Any:
    """A sigstore ``VerificationPolicy`` that leaves the certificate identity to step (5).

    It is judged right after ``verify_dsse``, one field at a time, so that each mismatch has
    its own code; sigstore checks everything else (signature, chain, log, timestamps).
    """
    from sigstore.verify.policy import VerificationPolicy

    class IdentityJudgedNext(VerificationPolicy):
        def verify(self, cert: Certificate) -> None:
            """Accept any identity here: :func:`check_bundle` step (5) judges it."""

    return IdentityJudgedNext()

# Bounds that stop abuse: a GitHub provenance bundle is about 10 KiB; an image has a handful.
MAX_BUNDLE_BYTES: Final = 1 << 20
MAX_BUNDLES_PER_DIGEST: Final = 32

ImageAttestations = Mapping[str, Sequence[bytes] | None]
"""Per ``sha256:<hex>`` digest, the bundles fetched for it (``None``: the fetch failed)."""


@dataclass(frozen=True, slots=True)
class ProvenanceRequirement:
    """Who must have built every image.

    Attributes:
        repository: the Source Repository URI the certificate must name
            (``https://github.com/owner/repo``).
        workflow: optional workflow path in that repository (``.github/workflows/build.yml``):
            the certificate's Build Config URI must be ``<repository>/<workflow>@…``.
        ref: optional Source Repository Ref (``refs/heads/main``, ``refs/tags/v1.2.3``).
        issuer: the OIDC issuer of the signing identity (GitHub Actions by default).
    """

    repository: str
    workflow: str | None = None
    ref: str | None = None
    issuer: str = GITHUB_ACTIONS_ISSUER


@dataclass(frozen=True, slots=True)
class ProvenanceReport(CheckedReport):
    """One ``provenance.image`` check per image of the compose (or one failing check)."""

    checks: tuple[Check, ...]


def _utf8_extension(cert: Certificate, oid: ObjectIdentifier) -> str | None:
    """A Fulcio extension whose value is a DER UTF8String, decoded; ``None`` when absent.

    Decoded by cryptography's strict DER parser, as sigstore-python decodes the same extensions
    (``sigstore.verify.policy._SingleX509ExtPolicyV2``): another tag, a non-minimal or wrong
    length, trailing bytes or invalid UTF-8 are refused.

    Raises:
        ValueError: the value is not a well-formed DER UTF8String.
    """
    try:
        raw: bytes = cert.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]
    except ExtensionNotFound:
        return None
    value: str = asn1.decode_der(str, raw)
    return value


def check_bundle(bundle_json: bytes, digest: str, requirement: ProvenanceRequirement,
                 verifier: Verifier) -> Check:
    """Steps (3)-(5) for one bundle and one image digest.

    Args:
        bundle_json: a Sigstore bundle (JSON) as fetched.
        digest: ``sha256:<hex>`` of the image.
        requirement: who must have built it.
        verifier: a sigstore ``Verifier`` over the trust root to use (``Verifier.production``
            with its shipped root, or one made from an archived ``trusted_root.json``).

    Returns:
        ``provenance.image`` passing, or failing with the step's code.

    Raises:
        Nothing.
    """
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle

    name = "provenance.image"
    # (3)
    if len(bundle_json) > MAX_BUNDLE_BYTES:
        return Check.failed(name, "provenance.bundle_malformed",
                            f"bundle for {digest} is over {MAX_BUNDLE_BYTES} bytes")
    try:
        bundle = Bundle.from_json(bundle_json)
    except (SigstoreError, ValueError, TypeError, KeyError) as exc:
        return Check.failed(name, "provenance.bundle_malformed",
                            f"bundle for {digest} is not a Sigstore bundle: {exc}")
    except Exception as exc:  # the parser's own failures come in several types: fail closed
        return Check.failed(name, "provenance.bundle_malformed",
                            f"bundle for {digest} is not a Sigstore bundle: "
                            f"{type(exc).__name__}")
    try:
        payload_type, payload = verifier.verify_dsse(bundle, _identity_judged_next())
    except Exception as exc:  # sigstore raises VerificationError, and others on odd input
        return Check.failed(name, "provenance.signature_invalid",
                            f"bundle for {digest} does not verify: {exc}")
    # (4)
    try:
        statement = json.loads(payload) if payload_type == _IN_TOTO_PAYLOAD else None
    except (ValueError, RecursionError):
        statement = None
    if (not isinstance(statement, dict) or statement.get("_type") not in _IN_TOTO_STATEMENTS
            or statement.get("predicateType") not in SLSA_PROVENANCE_TYPES):
        return Check.failed(name, "provenance.predicate_unexpected",
                            f"bundle for {digest} is not SLSA build provenance "
                            f"({payload_type})")
    algorithm, _, hex_digest = digest.partition(":")
    subjects = statement.get("subject")
    subject_digests = {
        str(s["digest"][algorithm]).lower() for s in subjects
        if isinstance(s, dict) and isinstance(s.get("digest"), dict) and algorithm in s["digest"]
    } if isinstance(subjects, list) else set()
    if hex_digest.lower() not in subject_digests:
        shown = ", ".join(sorted(subject_digests)) or "none"
        return Check.failed(name, "provenance.digest_mismatch",
                            f"the provenance is for {algorithm} {shown}, not image {digest}")
    # (5)
    cert = bundle.signing_certificate
    try:
        issuer = _utf8_extension(cert, _ISSUER_V2)
        repository = _utf8_extension(cert, _SOURCE_REPOSITORY_URI)
        build_config = _utf8_extension(cert, _BUILD_CONFIG_URI)
        ref = _utf8_extension(cert, _SOURCE_REPOSITORY_REF)
    except ValueError as exc:
        return Check.failed(name, "provenance.bundle_malformed",
                            f"certificate extension malformed: {exc}")
    if issuer != requirement.issuer:
        return Check.failed(name, "provenance.issuer_mismatch",
                            f"image {digest} was signed by an identity of issuer {issuer}, not "
                            f"{requirement.issuer}")
    if repository != requirement.repository:
        return Check.failed(name, "provenance.repository_mismatch",
                            f"image {digest} was built from {repository}, not "
                            f"{requirement.repository}")
    if requirement.workflow is not None:
        expected = f"{requirement.repository}/{requirement.workflow}@"
        if build_config is None or not build_config.startswith(expected):
            return Check.failed(name, "provenance.workflow_mismatch",
                                f"image {digest} was built by workflow {build_config}, not "
                                f"{expected}…")
    if requirement.ref is not None and ref != requirement.ref:
        return Check.failed(name, "provenance.ref_mismatch",
                            f"image {digest} was built from ref {ref}, not {requirement.ref}")
    return Check.passed(name, f"image {digest} built from {repository} ({build_config}, "
                              f"{ref}), Sigstore-signed SLSA provenance")


def verify_provenance(app_compose: str, attestations: ImageAttestations,
                      requirement: ProvenanceRequirement, verifier: Verifier
                      ) -> ProvenanceReport:
    """Check every image of ``app_compose`` (see the module docstring for the recipe).

    Args:
        app_compose: the app-compose the verified quote's ``mr_config_id`` binds.
        attestations: per image digest, the bundles fetched (``None`` when the fetch failed).
        requirement: who must have built the images.
        verifier: sigstore's verifier over the trust root to use.

    Raises:
        Nothing: every failure is a check.
    """
    try:
        images = compose_images(app_compose)
    except VerificationFailed as exc:
        return ProvenanceReport((Check.failed("provenance.images", exc.code, exc.message),))
    # (1)
    if not images.references:
        return ProvenanceReport((Check.failed("provenance.images", "provenance.image_not_pinned",
                                              "the compose names no image"),))
    checks: list[Check] = [
        Check.failed("provenance.image", "provenance.image_not_pinned",
                     f"image {reference} is not pinned by digest: its bytes are not measured")
        for reference in images.unpinned]
    for digest in images.digests:
        # (2)
        bundles = attestations.get(digest, ())
        if bundles is None:
            checks.append(Check.incomplete("provenance.image", "provenance.attestation_unavailable",
                                           f"the attestations of {digest} could not be fetched"))
            continue
        if not bundles:
            checks.append(Check.failed("provenance.image", "provenance.attestation_missing",
                                       f"no build attestation for image {digest}"))
            continue
        results = [check_bundle(bundle, digest, requirement, verifier)
                   for bundle in list(bundles)[:MAX_BUNDLES_PER_DIGEST]]
        checks.append(next((r for r in results if r.ok), results[0]))
    return ProvenanceReport(tuple(checks))
