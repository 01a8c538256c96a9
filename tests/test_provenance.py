"""Image provenance (sidecar.verify.provenance) on real public-good Sigstore bundles and forgeries.

The bundles and the trust root are committed (tests/assets/provenance/README.md); every test runs
offline, and one proves it with the network shut.
"""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from sigstore.models import TrustedRoot
from sigstore.verify import Verifier

from sidecar.verify.checks import Status
from sidecar.verify.provenance import (
    ProvenanceRequirement,
    check_bundle,
    verify_provenance,
)

ASSETS = Path(__file__).parent / "assets" / "provenance"
GENUINE = (ASSETS / "attest_demo_provenance.sigstore.json").read_bytes()
CUSTOM_ISSUER = (ASSETS / "custom_issuer_provenance.sigstore.json").read_bytes()
DIGEST = "sha256:49a3aa6075e0f49f82843e74b5baa614ad2a588e6675612bf108a0a008c5ac25"
OTHER_DIGEST = "sha256:afa27b44d43b02a9fea41d13cedc2e4016cfcf87c5dbf990e593669aa8ce286d"
REPOSITORY = "https://github.com/malancas/attest-demo"
REQUIRED = ProvenanceRequirement(REPOSITORY, workflow=".github/workflows/shared.yml",
                                 ref="refs/heads/main")


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier(trusted_root=TrustedRoot.from_file(str(ASSETS / "trusted_root.json")))


def compose(*images: str) -> str:
    services = "".join(f"  s{i}:\n    image: {image}\n" for i, image in enumerate(images))
    return json.dumps({"runner": "docker-compose", "docker_compose_file": f"services:\n{services}"})


def edited(bundle: bytes, change: Any) -> bytes:
    document = json.loads(bundle)
    change(document)
    return json.dumps(document).encode()


def _payload(document: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    return result


def _set_payload(document: dict[str, Any], statement: dict[str, Any]) -> None:
    document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


def test_genuine_bundle_passes(verifier: Verifier) -> None:
    report = verify_provenance(compose(f"ghcr.io/malancas/attest-demo@{DIGEST}"),
                               {DIGEST: [GENUINE]}, REQUIRED, verifier)
    assert report.ok, report.checks
    assert REPOSITORY in report.checks[0].detail


def test_archived_bundle_reverifies_with_the_network_down(verifier: Verifier,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_: Any, **__: Any) -> None:
        raise OSError("network is down (test)")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert check_bundle(GENUINE, DIGEST, REQUIRED, verifier).ok
    # The trust root shipped with sigstore-python verifies it offline too.
    assert check_bundle(GENUINE, DIGEST, ProvenanceRequirement(REPOSITORY),
                        Verifier.production(offline=True)).ok


def _swap_subject(document: dict[str, Any]) -> None:
    statement = _payload(document)
    statement["subject"][0]["digest"]["sha256"] = OTHER_DIGEST.removeprefix("sha256:")
    _set_payload(document, statement)


def _flip_signature(document: dict[str, Any]) -> None:
    sig = base64.b64decode(document["dsseEnvelope"]["signatures"][0]["sig"])
    document["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(
        sig[:-1] + bytes([sig[-1] ^ 1])).decode()


def _other_certificate(document: dict[str, Any]) -> None:
    document["verificationMaterial"]["certificate"] = \
        json.loads(CUSTOM_ISSUER)["verificationMaterial"]["certificate"]


def _drop_tlog(document: dict[str, Any]) -> None:
    document["verificationMaterial"]["tlogEntries"] = []


def _bend_inclusion_proof(document: dict[str, Any]) -> None:
    proof = document["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    first = base64.b64decode(proof["hashes"][0])
    proof["hashes"][0] = base64.b64encode(bytes([first[0] ^ 1]) + first[1:]).decode()


@pytest.mark.parametrize(("bundle", "digest", "requirement", "code"), [
    # The genuine bundle for another artifact, presented for our image.
    (GENUINE, OTHER_DIGEST, REQUIRED, "provenance.digest_mismatch"),
    # Genuine, but built from another repository than the policy names.
    (GENUINE, DIGEST, ProvenanceRequirement("https://github.com/nearai/private-ml-sdk"),
     "provenance.repository_mismatch"),
    (GENUINE, DIGEST, ProvenanceRequirement(REPOSITORY, workflow=".github/workflows/release.yml"),
     "provenance.workflow_mismatch"),
    (GENUINE, DIGEST, ProvenanceRequirement(REPOSITORY, ref="refs/tags/v1.0.0"),
     "provenance.ref_mismatch"),
    # Genuine and public-good, but signed by another OIDC issuer (a GitHub Enterprise tenant).
    (CUSTOM_ISSUER, OTHER_DIGEST, ProvenanceRequirement("https://github.com/too-legit/attest"),
     "provenance.issuer_mismatch"),
    # Tampered: the subject rewritten to our digest, the signature flipped, another
    # certificate, the transparency-log entry removed.
    (edited(GENUINE, _swap_subject), OTHER_DIGEST, REQUIRED, "provenance.signature_invalid"),
    (edited(GENUINE, _flip_signature), DIGEST, REQUIRED, "provenance.signature_invalid"),
    (edited(GENUINE, _other_certificate), DIGEST, REQUIRED, "provenance.signature_invalid"),
    (edited(GENUINE, _bend_inclusion_proof), DIGEST, REQUIRED, "provenance.signature_invalid"),
    (edited(GENUINE, _drop_tlog), DIGEST, REQUIRED, "provenance.bundle_malformed"),
    (b"{not json", DIGEST, REQUIRED, "provenance.bundle_malformed"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}', DIGEST, REQUIRED,
     "provenance.bundle_malformed"),
    (b" " * (1 << 20) + b"{}", DIGEST, REQUIRED, "provenance.bundle_malformed"),
], ids=["another-digest", "another-repository", "another-workflow", "another-ref",
        "another-issuer", "subject-rewritten", "signature-flipped", "certificate-swapped",
        "inclusion-proof-bent", "no-tlog-entry", "not-json", "not-a-bundle", "oversized"])
def test_each_forgery_fails_with_its_own_code(verifier: Verifier, bundle: bytes, digest: str,
                                              requirement: ProvenanceRequirement,
                                              code: str) -> None:
    check = check_bundle(bundle, digest, requirement, verifier)
    assert check.status is Status.FAIL
    assert check.code == code, check.detail


def test_custom_issuer_bundle_is_itself_genuine(verifier: Verifier) -> None:
    # So the issuer case above fails on the issuer, not on the signature.
    requirement = ProvenanceRequirement("https://github.com/too-legit/attest",
                                        issuer="https://token.actions.githubusercontent.com/"
                                               "hammer-time")
    assert check_bundle(CUSTOM_ISSUER, OTHER_DIGEST, requirement, verifier).ok


def test_every_image_must_be_pinned_and_attested(verifier: Verifier) -> None:
    report = verify_provenance(
        compose(f"ghcr.io/malancas/attest-demo@{DIGEST}", "docker.io/library/redis:7",
                f"ghcr.io/x/y@{OTHER_DIGEST}"),
        {DIGEST: [GENUINE], OTHER_DIGEST: []}, REQUIRED, verifier)
    codes = sorted(str(c.code) for c in report.checks if not c.ok)
    assert codes == ["provenance.attestation_missing", "provenance.image_not_pinned"]
    assert not report.ok


def test_one_good_bundle_among_bad_ones_passes(verifier: Verifier) -> None:
    report = verify_provenance(compose(f"app@{DIGEST}"),
                               {DIGEST: [b"{}", CUSTOM_ISSUER, GENUINE]}, REQUIRED, verifier)
    assert report.ok


def test_unfetched_attestations_are_undecided(verifier: Verifier) -> None:
    report = verify_provenance(compose(f"app@{DIGEST}"), {DIGEST: None}, REQUIRED, verifier)
    assert report.checks[0].status is Status.INCOMPLETE
    assert report.checks[0].code == "provenance.attestation_unavailable"


def test_a_compose_without_images_fails(verifier: Verifier) -> None:
    report = verify_provenance(json.dumps({"runner": "bash"}), {}, REQUIRED, verifier)
    assert report.failure is not None and report.failure.code == "provenance.image_not_pinned"
    report = verify_provenance("not json", {}, REQUIRED, verifier)
    assert report.failure is not None and report.failure.code == "info.malformed"


class _VerifiedStatement:
    """Stands in for sigstore's verifier when the signature verified but the statement is not
    build provenance (an SBOM, say): only the payload reaches step (4)."""

    def __init__(self, payload_type: str, statement: dict[str, Any]) -> None:
        self.answer = (payload_type, json.dumps(statement).encode())

    def verify_dsse(self, *_: Any) -> tuple[str, bytes]:
        return self.answer


@pytest.mark.parametrize(("payload_type", "statement"), [
    ("application/vnd.in-toto+json",
     {"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://spdx.dev/Document",
      "subject": [{"name": "x", "digest": {"sha256": DIGEST.removeprefix("sha256:")}}]}),
    ("text/plain", {}),
    ("application/vnd.in-toto+json", {"_type": "something else",
                                      "predicateType": "https://slsa.dev/provenance/v1"}),
], ids=["sbom", "not-in-toto", "not-a-statement"])
def test_a_statement_that_is_not_build_provenance_fails(payload_type: str,
                                                        statement: dict[str, Any]) -> None:
    stub: Any = _VerifiedStatement(payload_type, statement)
    check = check_bundle(GENUINE, DIGEST, REQUIRED, stub)
    assert check.code == "provenance.predicate_unexpected"


def test_policy_file_provenance_table(tmp_path: Path) -> None:
    from sidecar.errors import ConfigError
    from sidecar.policy_file import load_policy

    path = tmp_path / "policy.toml"
    path.write_text(f'[models."TEE/x".provenance]\nrepository = "{REPOSITORY}"\n'
                    'workflow = ".github/workflows/shared.yml"\nref = "refs/heads/main"\n')
    assert load_policy(path).for_model("TEE/x").provenance == REQUIRED
    assert load_policy(path).for_model("TEE/y").provenance is None
    for bad in ('repository = "github.com/x/y"', 'repository = "https://github.com/x/y"\n'
                'ref = "main"', 'repository = "https://github.com/x/y"\nextra = 1'):
        path.write_text(f'[models."TEE/x".provenance]\n{bad}\n')
        with pytest.raises(ConfigError, match="provenance"):
            load_policy(path)
    path.write_text('allow_unattested_models = true\n[models."TEE/x"]\nrequire_tdx = false\n'
                    f'[models."TEE/x".provenance]\nrepository = "{REPOSITORY}"\n')
    with pytest.raises(ConfigError, match="needs a TDX quote"):
        load_policy(path)
