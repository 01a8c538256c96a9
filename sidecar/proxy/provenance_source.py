"""Image provenance with I/O: fetch build attestations, archive them, and judge attested nodes.

``ProvenanceSource`` finds the Sigstore bundles of an image digest: first in the archive
(``<state.dir>/provenance/<repository>/sha256-<hex>.json``, written atomically; remove a file
to fetch again), else from GitHub's
attestations API (``GET {api_url}/repos/{owner}/{repo}/attestations/sha256:{hex}``, bounded in
bytes and time), archiving what it fetched. The archive is what ``tee-sidecar attest --context``
re-checks offline. ``ProvenanceGate`` runs after a model's attestation (and its identity check)
for policy entries with a ``provenance`` table: every attested node's compose must pass
``sidecar.verify.provenance.verify_provenance``, or the node is not attested.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import structlog
from aiohttp import hdrs

from sidecar.durable import replace_durably
from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.proxy.fetch import Fetcher
from sidecar.verify.attestation import AttestationReport
from sidecar.verify.checks import Check, Status
from sidecar.verify.compose import compose_images
from sidecar.verify.policy import PolicySet
from sidecar.verify.provenance import (
    MAX_BUNDLE_BYTES,
    MAX_BUNDLES_PER_DIGEST,
    ImageAttestations,
    ProvenanceRequirement,
    verify_provenance,
)

if TYPE_CHECKING:
    from sigstore.verify import Verifier

__all__ = ["ProvenanceGate", "ProvenanceSource", "archived_attestations", "load_verifier",
           "provenance_checks", "recheck_archived"]

log = structlog.get_logger("tee_sidecar.provenance")

# The API answers one page of at most this many attestations, each a bundle of ~10 KiB.
MAX_API_RESPONSE_BYTES: Final = MAX_BUNDLES_PER_DIGEST * MAX_BUNDLE_BYTES
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")
_GITHUB_REPOSITORY: Final = re.compile(r"https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)")


def _archive_path(directory: Path, repository: str, digest: str) -> Path:
    # One folder per source repository: the API is asked per repository, and a policy that
    # names another repository must not be answered from bundles fetched for the old one.
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", repository.removeprefix("https://"))
    return directory / folder / f"{digest.replace(':', '-')}.json"


def archived_attestations(directory: Path, repository: str,
                          digests: Sequence[str]) -> dict[str, list[bytes]]:
    """The archived bundles of ``digests`` fetched for ``repository`` (a digest without an
    archive maps to ``[]``).

    Raises:
        Nothing: an unreadable archive file counts as no bundle (the check then fails).
    """
    found: dict[str, list[bytes]] = {}
    for digest in digests:
        try:
            items = json.loads(_archive_path(directory, repository, digest).read_bytes())
        except (OSError, ValueError, RecursionError):
            items = []
        found[digest] = [json.dumps(item).encode() for item in items][:MAX_BUNDLES_PER_DIGEST] \
            if isinstance(items, list) else []
    return found


def load_verifier(trusted_root: Path | None) -> Verifier:
    """sigstore-python's verifier over ``trusted_root`` (a ``trusted_root.json``), or over the
    public-good root shipped with sigstore-python (offline: no TUF update over the network).

    Raises:
        OSError, ValueError: the trusted root cannot be read.
    """
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier

    if trusted_root is not None:
        return Verifier(trusted_root=TrustedRoot.from_file(str(trusted_root)))
    return Verifier.production(offline=True)


class ProvenanceSource:
    """Bundles per image digest: archived, else fetched once from GitHub's attestations API."""

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, archive_dir: Path,
                 timeout: float, token: str | None = None) -> None:
        self._fetcher = Fetcher(session)
        self._api_url = api_url.rstrip("/")
        self.archive_dir = archive_dir
        self._timeout = timeout
        self._token = token

    async def bundles(self, digest: str, requirement: ProvenanceRequirement) -> list[bytes] | None:
        """The bundles of ``digest``; ``None`` when they could not be fetched (undecided).

        Raises:
            Nothing: transport failures give ``None``.
        """
        if not _DIGEST.fullmatch(digest):
            return []
        archived = archived_attestations(self.archive_dir, requirement.repository,
                                         [digest])[digest]
        if archived:
            return archived
        match = _GITHUB_REPOSITORY.fullmatch(requirement.repository)
        if match is None:
            return []  # only GitHub's API is known; an archived bundle is the other way in
        try:
            items = await self._fetch(f"{self._api_url}/repos/{match[1]}/{match[2]}"
                                      f"/attestations/{digest}")
        except VerificationIncomplete as exc:
            log.warning("provenance_fetch_failed", digest=digest, error=exc.message)
            return None
        if items:
            await asyncio.to_thread(self._archive, _archive_path(
                self.archive_dir, requirement.repository, digest), items)
        return [json.dumps(item).encode() for item in items]

    async def _fetch(self, url: str) -> list[Any]:
        headers = {hdrs.ACCEPT: "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28"}
        if self._token:
            headers[hdrs.AUTHORIZATION] = f"Bearer {self._token}"
        fetched = await self._fetcher.fetch(
            url, params={"per_page": str(MAX_BUNDLES_PER_DIGEST)}, headers=headers,
            timeout=self._timeout, limit=MAX_API_RESPONSE_BYTES,
            purpose="attestations API", code="provenance.attestation_unavailable")
        if fetched.status == 404:
            return []  # no attestation for this digest in that repository
        if fetched.status != 200:
            raise VerificationIncomplete(f"attestations API answered {fetched.status}",
                                         code="provenance.attestation_unavailable")
        body = fetched.body
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise VerificationIncomplete("attestations API answered no JSON",
                                         code="provenance.attestation_unavailable") from None
        attestations = document.get("attestations") if isinstance(document, dict) else None
        if not isinstance(attestations, list):
            return []
        return [a["bundle"] for a in attestations[:MAX_BUNDLES_PER_DIGEST]
                if isinstance(a, dict) and isinstance(a.get("bundle"), dict)]

    def _archive(self, target: Path, items: list[Any]) -> None:
        """Write the bundles atomically (temporary file, fsync, rename, directory fsync)."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_durably(target, json.dumps(items, indent=1).encode())
        except OSError as exc:  # the check still runs on what was fetched; the archive is lost
            log.error("provenance_not_archived", path=str(target), error=exc.strerror)


def provenance_checks(report: AttestationReport, requirement: ProvenanceRequirement,
                      attestations: ImageAttestations, verifier: Verifier
                      ) -> AttestationReport:
    """The report with one ``provenance.images`` check added to every attested node. Sans-I/O.

    Raises:
        Nothing.
    """
    nodes = []
    for node in report.nodes:
        if node.status is not Status.PASS:
            nodes.append(node)
            continue
        if node.deployment is None:
            check = Check.failed("provenance.images", "provenance.image_not_pinned",
                                 "no verified compose names the node's images")
        else:
            result = verify_provenance(node.deployment.app_compose, attestations, requirement,
                                       verifier)
            failure = result.failure
            check = (Check.passed("provenance.images",
                                  f"{len(result.checks)} image(s) built from "
                                  f"{requirement.repository}")
                     if failure is None else Check(failure.name, failure.status, failure.detail,
                                                   failure.code))
        nodes.append(replace(node, checks=node.checks + (check,)))
    return replace(report, nodes=tuple(nodes))


class ProvenanceGate:
    """Applies a policy entry's ``provenance`` requirement to a model's attested nodes."""

    def __init__(self, source: ProvenanceSource, policies: PolicySet,
                 trusted_root: Path | None) -> None:
        self._source = source
        self._policies = policies
        self._trusted_root = trusted_root
        self._verifier: Verifier | None = None

    async def enforce(self, model: str, report: AttestationReport) -> AttestationReport:
        """The report with provenance checks on its attested nodes (unchanged when the policy
        requires none).

        Raises:
            VerificationFailed: (or ``VerificationIncomplete``) no model node is still attested.
        """
        requirement = self._policies.for_model(model).provenance
        if requirement is None:
            return report
        digests = sorted({digest for node in report.nodes
                          if node.status is Status.PASS and node.deployment is not None
                          for digest in _digests(node.deployment.app_compose)})
        fetched = await asyncio.gather(*(self._source.bundles(d, requirement) for d in digests))
        attestations: Mapping[str, Sequence[bytes] | None] = dict(zip(digests, fetched))
        if self._verifier is None:
            self._verifier = await asyncio.to_thread(load_verifier, self._trusted_root)
        judged = await asyncio.to_thread(provenance_checks, report, requirement, attestations,
                                         self._verifier)
        if not judged.attested_keys:
            failure = judged.failure
            detail = failure.detail if failure else "no node"
            code = failure.code if failure and failure.code else "provenance.image_not_pinned"
            error = VerificationIncomplete if (failure is not None
                                               and failure.status is Status.INCOMPLETE) \
                else VerificationFailed
            raise error(f"image provenance of {model}: {detail}", code=code)
        return judged


def _digests(app_compose: str) -> tuple[str, ...]:
    try:
        return compose_images(app_compose).digests
    except VerificationFailed:
        return ()


def recheck_archived(report: AttestationReport, requirement: ProvenanceRequirement,
                     archive_dir: Path, trusted_root: Path | None) -> AttestationReport:
    """``provenance_checks`` with the archived bundles only, offline (``attest --context``).

    Raises:
        OSError, ValueError: the trusted root cannot be read.
    """
    digests = sorted({digest for node in report.nodes if node.deployment is not None
                      for digest in _digests(node.deployment.app_compose)})
    return provenance_checks(report, requirement,
                             archived_attestations(archive_dir, requirement.repository, digests),
                             load_verifier(trusted_root))
