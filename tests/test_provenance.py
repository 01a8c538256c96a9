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
    MAX_BUNDLE_BYTES,
    MAX_BUNDLES_PER_DIGEST,
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


_SHOWN = DIGEST.removeprefix("sha256:")
_OTHER_ISSUER = "https://token.actions.githubusercontent.com/hammer-time"


@pytest.mark.parametrize(("bundle", "digest", "requirement", "code", "detail"), [
    # The genuine bundle for another artifact, presented for our image.
    (GENUINE, OTHER_DIGEST, REQUIRED, "provenance.digest_mismatch",
     f"the provenance is for sha256 {_SHOWN}, not image {OTHER_DIGEST}"),
    # Genuine, but built from another repository than the policy names.
    (GENUINE, DIGEST, ProvenanceRequirement("https://github.com/nearai/private-ml-sdk"),
     "provenance.repository_mismatch",
     f"image {DIGEST} was built from {REPOSITORY}, not https://github.com/nearai/private-ml-sdk"),
    (GENUINE, DIGEST, ProvenanceRequirement(REPOSITORY, workflow=".github/workflows/release.yml"),
     "provenance.workflow_mismatch",
     f"image {DIGEST} was built by workflow {REPOSITORY}/.github/workflows/shared.yml"
     f"@refs/heads/main, not {REPOSITORY}/.github/workflows/release.yml@…"),
    (GENUINE, DIGEST, ProvenanceRequirement(REPOSITORY, ref="refs/tags/v1.0.0"),
     "provenance.ref_mismatch",
     f"image {DIGEST} was built from ref refs/heads/main, not refs/tags/v1.0.0"),
    # Genuine and public-good, but signed by another OIDC issuer (a GitHub Enterprise tenant).
    (CUSTOM_ISSUER, OTHER_DIGEST, ProvenanceRequirement("https://github.com/too-legit/attest"),
     "provenance.issuer_mismatch",
     f"image {OTHER_DIGEST} was signed by an identity of issuer {_OTHER_ISSUER}, not "
     "https://token.actions.githubusercontent.com"),
    # Tampered: the subject rewritten to our digest, the signature flipped, another
    # certificate, the transparency-log entry removed.
    (edited(GENUINE, _swap_subject), OTHER_DIGEST, REQUIRED, "provenance.signature_invalid",
     f"bundle for {OTHER_DIGEST} does not verify: "),
    (edited(GENUINE, _flip_signature), DIGEST, REQUIRED, "provenance.signature_invalid",
     f"bundle for {DIGEST} does not verify: "),
    (edited(GENUINE, _other_certificate), DIGEST, REQUIRED, "provenance.signature_invalid",
     f"bundle for {DIGEST} does not verify: "),
    (edited(GENUINE, _bend_inclusion_proof), DIGEST, REQUIRED, "provenance.signature_invalid",
     f"bundle for {DIGEST} does not verify: "),
    (edited(GENUINE, _drop_tlog), DIGEST, REQUIRED, "provenance.bundle_malformed",
     f"bundle for {DIGEST} is not a Sigstore bundle: expected exactly one log entry"),
    (b"{not json", DIGEST, REQUIRED, "provenance.bundle_malformed",
     f"bundle for {DIGEST} is not a Sigstore bundle: failed to load bundle"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}', DIGEST, REQUIRED,
     "provenance.bundle_malformed",
     f"bundle for {DIGEST} is not a Sigstore bundle: failed to load bundle"),
    # One byte over the bound (the genuine bundle, padded): refused before it is parsed.
    (b" " * (MAX_BUNDLE_BYTES + 1 - len(GENUINE)) + GENUINE, DIGEST, REQUIRED,
     "provenance.bundle_malformed", f"bundle for {DIGEST} is over 1048576 bytes"),
], ids=["another-digest", "another-repository", "another-workflow", "another-ref",
        "another-issuer", "subject-rewritten", "signature-flipped", "certificate-swapped",
        "inclusion-proof-bent", "no-tlog-entry", "not-json", "not-a-bundle", "oversized"])
def test_each_forgery_fails_with_its_own_code(verifier: Verifier, bundle: bytes, digest: str,
                                              requirement: ProvenanceRequirement,
                                              code: str, detail: str) -> None:
    check = check_bundle(bundle, digest, requirement, verifier)
    assert (check.name, check.status, check.code) == ("provenance.image", Status.FAIL, code), \
        check.detail
    assert check.detail.startswith(detail), check.detail


def test_a_bundle_of_exactly_the_bound_is_checked(verifier: Verifier) -> None:
    padded = b" " * (MAX_BUNDLE_BYTES - len(GENUINE)) + GENUINE
    assert len(padded) == MAX_BUNDLE_BYTES
    assert check_bundle(padded, DIGEST, REQUIRED, verifier).ok


def test_an_unexpected_parser_error_fails_closed(verifier: Verifier,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The parser's failures come in several types; one none of the listed ones is still a
    # malformed bundle (named by type only), never an exception out of the check.
    from sigstore.models import Bundle

    def broken(_: bytes) -> Bundle:
        raise RuntimeError("parser state")
    monkeypatch.setattr(Bundle, "from_json", staticmethod(broken))
    check = check_bundle(GENUINE, DIGEST, REQUIRED, verifier)
    assert (check.name, check.status, check.code, check.detail) == (
        "provenance.image", Status.FAIL, "provenance.bundle_malformed",
        f"bundle for {DIGEST} is not a Sigstore bundle: RuntimeError")


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
    assert [(c.name, c.status, c.code, c.detail) for c in report.checks] == [
        ("provenance.images", Status.FAIL, "provenance.image_not_pinned",
         "the compose names no image")]
    report = verify_provenance("not json", {}, REQUIRED, verifier)
    assert [(c.name, c.status, c.code, c.detail) for c in report.checks] == [
        ("provenance.images", Status.FAIL, "info.malformed",
         "app_compose is not valid JSON: Expecting value: line 1 column 1 (char 0)")]


class _VerifiedStatement:
    """Stands in for sigstore's verifier when the signature verified but the statement is not
    build provenance (an SBOM, say): only the payload reaches step (4)."""

    def __init__(self, payload_type: str, statement: dict[str, Any] | bytes) -> None:
        payload = statement if isinstance(statement, bytes) else json.dumps(statement).encode()
        self.answer = (payload_type, payload)

    def verify_dsse(self, *_: Any) -> tuple[str, bytes]:
        return self.answer


_GENUINE_STATEMENT = _payload(json.loads(GENUINE))
_IN_TOTO = "application/vnd.in-toto+json"


@pytest.mark.parametrize(("payload_type", "statement"), [
    (_IN_TOTO,
     {"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://spdx.dev/Document",
      "subject": [{"name": "x", "digest": {"sha256": DIGEST.removeprefix("sha256:")}}]}),
    # The genuine SLSA statement, signed under another payload type: not an in-toto statement.
    ("text/plain", _GENUINE_STATEMENT),
    (_IN_TOTO, {"_type": "something else", "predicateType": "https://slsa.dev/provenance/v1",
                "subject": _GENUINE_STATEMENT["subject"]}),
    (_IN_TOTO, {"_type": "https://in-toto.io/Statement/v1", "subject": _GENUINE_STATEMENT["subject"]}),
    (_IN_TOTO, b'{"_type": "https://in-toto.io/Statement/v1"'),
    (_IN_TOTO, b"[" * 100_000),
    (_IN_TOTO, b'["https://in-toto.io/Statement/v1"]'),
], ids=["sbom", "not-in-toto", "not-a-statement", "no-predicate-type", "not-json", "too-deep",
        "not-an-object"])
def test_a_statement_that_is_not_build_provenance_fails(payload_type: str,
                                                        statement: dict[str, Any] | bytes
                                                        ) -> None:
    stub: Any = _VerifiedStatement(payload_type, statement)
    check = check_bundle(GENUINE, DIGEST, REQUIRED, stub)
    assert (check.name, check.status, check.code, check.detail) == (
        "provenance.image", Status.FAIL, "provenance.predicate_unexpected",
        f"bundle for {DIGEST} is not SLSA build provenance ({payload_type})")


def _statement(subject: Any) -> dict[str, Any]:
    return {**_GENUINE_STATEMENT, "subject": subject}


_HEX = DIGEST.removeprefix("sha256:")
_OTHER_HEX = OTHER_DIGEST.removeprefix("sha256:")


@pytest.mark.parametrize(("subject", "shown"), [
    (None, "none"),
    ({"digest": {"sha256": _HEX}}, "none"),  # an object, not a list of subjects
    (["x", {"name": "n"}, {"digest": _HEX}, {"digest": {"sha512": _HEX}}], "none"),
    ([{"digest": {"sha256": _OTHER_HEX.upper()}}, {"digest": {"sha256": "ab" * 32}}],
     f"{'ab' * 32}, {_OTHER_HEX}"),
], ids=["no-subject", "subject-object", "no-sha256-subject", "two-other-subjects"])
def test_a_statement_for_other_subjects_names_them(subject: Any, shown: str) -> None:
    stub: Any = _VerifiedStatement(_IN_TOTO, _statement(subject))
    check = check_bundle(GENUINE, DIGEST, REQUIRED, stub)
    assert (check.name, check.status, check.code, check.detail) == (
        "provenance.image", Status.FAIL, "provenance.digest_mismatch",
        f"the provenance is for sha256 {shown}, not image {DIGEST}")


def test_a_subject_among_others_in_any_case_matches() -> None:
    # Hex digests compare case-insensitively; entries that are not subjects are skipped.
    subject = ["x", {"digest": {"sha512": "00"}}, {"digest": {"sha256": "ab" * 32}},
               {"name": "wheel", "digest": {"sha256": _HEX.upper()}}]
    stub: Any = _VerifiedStatement(_IN_TOTO, _statement(subject))
    assert check_bundle(GENUINE, DIGEST, REQUIRED, stub).ok


def test_a_verifier_failure_of_any_type_is_an_invalid_signature() -> None:
    class Refusing:
        def verify_dsse(self, *_: Any) -> tuple[str, bytes]:
            raise ValueError("odd input")
    stub: Any = Refusing()
    check = check_bundle(GENUINE, DIGEST, REQUIRED, stub)
    assert (check.name, check.status, check.code, check.detail) == (
        "provenance.image", Status.FAIL, "provenance.signature_invalid",
        f"bundle for {DIGEST} does not verify: odd input")


def test_the_report_has_one_check_per_image_in_order(verifier: Verifier) -> None:
    unavailable, absent, empty = ("sha256:" + c * 64 for c in "345")
    report = verify_provenance(
        compose("redis:7", f"a@{OTHER_DIGEST}", f"b@{DIGEST}", f"c@{empty}", f"d@{absent}",
                f"e@{unavailable}", "busybox"),
        # absent: not in the map at all (nothing was fetched for it) is missing, not undecided.
        {DIGEST: [b"{}", GENUINE], OTHER_DIGEST: [b"{}", CUSTOM_ISSUER], unavailable: None,
         empty: []},
        REQUIRED, verifier)
    rows = [(c.name, c.status, c.code, c.detail) for c in report.checks]
    assert rows[:-1] == [
        ("provenance.image", Status.FAIL, "provenance.image_not_pinned",
         "image redis:7 is not pinned by digest: its bytes are not measured"),
        ("provenance.image", Status.FAIL, "provenance.image_not_pinned",
         "image busybox is not pinned by digest: its bytes are not measured"),
        ("provenance.image", Status.INCOMPLETE, "provenance.attestation_unavailable",
         f"the attestations of {unavailable} could not be fetched"),
        ("provenance.image", Status.FAIL, "provenance.attestation_missing",
         f"no build attestation for image {absent}"),
        ("provenance.image", Status.PASS, None, check_bundle(GENUINE, DIGEST, REQUIRED,
                                                               verifier).detail),
        ("provenance.image", Status.FAIL, "provenance.attestation_missing",
         f"no build attestation for image {empty}"),
    ]
    # No bundle passes: the first bundle's failure is the one reported.
    assert rows[-1][:3] == ("provenance.image", Status.FAIL, "provenance.bundle_malformed")
    assert rows[-1][3].startswith(f"bundle for {OTHER_DIGEST} is not a Sigstore bundle: ")
    assert report.failure is not None and report.failure.detail == rows[0][3]


def test_only_the_first_bundles_of_a_digest_are_checked(verifier: Verifier) -> None:
    bundles = [b"{}"] * MAX_BUNDLES_PER_DIGEST
    assert not verify_provenance(compose(f"app@{DIGEST}"), {DIGEST: [*bundles, GENUINE]},
                                 REQUIRED, verifier).ok
    assert verify_provenance(compose(f"app@{DIGEST}"), {DIGEST: [*bundles[1:], GENUINE]},
                             REQUIRED, verifier).ok


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
