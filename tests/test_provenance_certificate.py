"""Step (5) of image provenance: the signing certificate's Fulcio identity extensions, one at a time.

sigstore-python has verified the bundle (signature, chain, log) before step (5) runs, so here a
stand-in verifier answers with the genuine bundle's signed statement and the bundle carries a
certificate made in the test: the real certificate's extensions, with the Fulcio identity ones
(sigstore/fulcio docs/oid-info.md: DER UTF8String values) replaced, left out or malformed. This
pins what the certificate parser accepts and what the user reads for each identity mismatch.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sidecar.verify.checks import Status
from sidecar.verify.provenance import GITHUB_ACTIONS_ISSUER, ProvenanceRequirement, check_bundle

ASSETS = Path(__file__).parent / "assets" / "provenance"
GENUINE = json.loads((ASSETS / "attest_demo_provenance.sigstore.json").read_text())
REAL_CERT = x509.load_der_x509_certificate(
    base64.b64decode(GENUINE["verificationMaterial"]["certificate"]["rawBytes"]))
DIGEST = "sha256:49a3aa6075e0f49f82843e74b5baa614ad2a588e6675612bf108a0a008c5ac25"
REPOSITORY = "https://github.com/malancas/attest-demo"
BUILD_CONFIG = f"{REPOSITORY}/.github/workflows/shared.yml@refs/heads/main"
REF = "refs/heads/main"
REQUIRED = ProvenanceRequirement(REPOSITORY, workflow=".github/workflows/shared.yml", ref=REF)

ISSUER = "1.3.6.1.4.1.57264.1.8"
SOURCE_REPOSITORY_URI = "1.3.6.1.4.1.57264.1.12"
SOURCE_REPOSITORY_REF = "1.3.6.1.4.1.57264.1.14"
BUILD_CONFIG_URI = "1.3.6.1.4.1.57264.1.18"
_KEY = ec.generate_private_key(ec.SECP256R1())


def utf8_string(text: str) -> bytes:
    """DER UTF8String, short or long form length (X.690 8.1.3)."""
    value = text.encode()
    if len(value) < 0x80:
        return bytes([0x0C, len(value)]) + value
    length = len(value).to_bytes((len(value).bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(length)]) + length + value


def certificate(**values: bytes | None) -> bytes:
    """The real leaf certificate's extensions, those named by OID replaced (``None``: left out),
    re-issued under a test key (the chain was sigstore's to check, before step (5))."""
    replaced = dict(values)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
               .public_key(_KEY.public_key()).serial_number(1)
               .not_valid_before(REAL_CERT.not_valid_before_utc)
               .not_valid_after(REAL_CERT.not_valid_after_utc))
    for extension in REAL_CERT.extensions:
        oid = extension.oid.dotted_string
        if oid in replaced or oid == "1.3.6.1.4.1.11129.2.4.2":  # SCTs are the real CA's
            continue
        builder = builder.add_extension(extension.value, extension.critical)
    for oid, value in replaced.items():
        if value is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return builder.sign(_KEY, hashes.SHA256()).public_bytes(Encoding.DER)


def bundle_with(cert: bytes) -> bytes:
    document = json.loads(json.dumps(GENUINE))
    document["verificationMaterial"]["certificate"]["rawBytes"] = base64.b64encode(cert).decode()
    return json.dumps(document).encode()


class SigstoreVerified:
    """Stands in for sigstore's verifier once it verified: answers with the genuine payload."""

    def verify_dsse(self, *_: Any) -> tuple[str, bytes]:
        return (GENUINE["dsseEnvelope"]["payloadType"],
                base64.b64decode(GENUINE["dsseEnvelope"]["payload"]))


def check(requirement: ProvenanceRequirement = REQUIRED, **values: bytes | None) -> Any:
    stub: Any = SigstoreVerified()
    return check_bundle(bundle_with(certificate(**values)), DIGEST, requirement, stub)


def test_the_reissued_certificate_passes_and_the_detail_names_the_identity() -> None:
    result = check()
    assert result.ok, result.detail
    assert (result.name, result.code) == ("provenance.image", None)
    assert result.detail == (f"image {DIGEST} built from {REPOSITORY} ({BUILD_CONFIG}, {REF}), "
                             "Sigstore-signed SLSA provenance")


def test_a_long_form_der_length_is_read() -> None:
    # A repository URI over 127 bytes has a long-form length (0x81 nn); a 256-byte one 0x82 nnnn.
    for size in (200, 300):
        repository = "https://github.com/o/" + "r" * (size - len("https://github.com/o/"))
        result = check(ProvenanceRequirement(repository),
                       **{SOURCE_REPOSITORY_URI: utf8_string(repository)})
        assert result.ok, result.detail
        assert f"built from {repository} (" in result.detail


@pytest.mark.parametrize(("value", "reason"), [
    (b"", "ShortData"),
    (b"\x0c", "ShortData"),
    (b"\x13\x05refs/", "UnexpectedTag"),  # PrintableString: another tag
    (b"\x0c\x80", "InvalidLength"),  # indefinite length: BER, not DER
    (b"\x0c\x81\x05refs/", "InvalidLength"),  # long form for a short length: not DER
    (b"\x0c\x82\x00\x05refs/", "InvalidLength"),  # a leading zero length byte: not DER
    (b"\x0c\x82\x01", "ShortData"),  # the length bytes cut short
    (b"\x0c\x06refs/", "ShortData"),  # one byte short
    (b"\x0c\x04refs/", "ExtraData"),  # one byte over
    (b"\x0c\x02\xc3\x28", "InvalidValue"),  # not UTF-8
])
def test_a_malformed_extension_is_a_malformed_bundle(value: bytes, reason: str) -> None:
    result = check(**{SOURCE_REPOSITORY_REF: value})
    assert (result.name, result.status, result.code) == (
        "provenance.image", Status.FAIL, "provenance.bundle_malformed")
    assert result.detail.startswith("certificate extension malformed: error parsing asn1 value")
    assert reason in result.detail


def test_an_empty_extension_value_is_read_as_empty() -> None:
    result = check(**{SOURCE_REPOSITORY_REF: b"\x0c\x00"})
    assert (result.code, result.detail) == (
        "provenance.ref_mismatch", f"image {DIGEST} was built from ref , not {REF}")


@pytest.mark.parametrize("oid", [ISSUER, SOURCE_REPOSITORY_URI, SOURCE_REPOSITORY_REF,
                                 BUILD_CONFIG_URI])
def test_each_identity_extension_is_parsed(oid: str) -> None:
    result = check(**{oid: b"\x0c\x01"})  # says one byte, has none
    assert result.code == "provenance.bundle_malformed", oid


def test_a_short_form_value_of_127_bytes_is_read() -> None:
    repository = "https://github.com/o/" + "r" * (127 - len("https://github.com/o/"))
    assert check(ProvenanceRequirement(repository),
                 **{SOURCE_REPOSITORY_URI: utf8_string(repository)}).ok


@pytest.mark.parametrize(("values", "requirement", "code", "detail"), [
    ({ISSUER: None}, REQUIRED, "provenance.issuer_mismatch",
     f"image {DIGEST} was signed by an identity of issuer None, not {GITHUB_ACTIONS_ISSUER}"),
    ({ISSUER: utf8_string(GITHUB_ACTIONS_ISSUER + "/tenant")}, REQUIRED,
     "provenance.issuer_mismatch",
     f"image {DIGEST} was signed by an identity of issuer {GITHUB_ACTIONS_ISSUER}/tenant, not "
     f"{GITHUB_ACTIONS_ISSUER}"),
    ({SOURCE_REPOSITORY_URI: None}, REQUIRED, "provenance.repository_mismatch",
     f"image {DIGEST} was built from None, not {REPOSITORY}"),
    ({SOURCE_REPOSITORY_URI: utf8_string(REPOSITORY + "-fork")}, REQUIRED,
     "provenance.repository_mismatch",
     f"image {DIGEST} was built from {REPOSITORY}-fork, not {REPOSITORY}"),
    ({BUILD_CONFIG_URI: None}, REQUIRED, "provenance.workflow_mismatch",
     f"image {DIGEST} was built by workflow None, not {REPOSITORY}/.github/workflows/shared.yml@…"),
    # The workflow must be the whole path up to '@': a longer name sharing the prefix is another.
    ({BUILD_CONFIG_URI: utf8_string(f"{REPOSITORY}/.github/workflows/shared.yml.bak@refs/x")},
     REQUIRED, "provenance.workflow_mismatch",
     f"image {DIGEST} was built by workflow {REPOSITORY}/.github/workflows/shared.yml.bak@refs/x,"
     f" not {REPOSITORY}/.github/workflows/shared.yml@…"),
    ({SOURCE_REPOSITORY_REF: None}, REQUIRED, "provenance.ref_mismatch",
     f"image {DIGEST} was built from ref None, not {REF}"),
])
def test_each_identity_mismatch_reads(values: dict[str, bytes | None],
                                      requirement: ProvenanceRequirement, code: str,
                                      detail: str) -> None:
    result = check(requirement, **values)
    assert (result.status, result.code, result.detail) == (Status.FAIL, code, detail)


def test_no_workflow_or_ref_required_accepts_any() -> None:
    result = check(ProvenanceRequirement(REPOSITORY),
                   **{BUILD_CONFIG_URI: None, SOURCE_REPOSITORY_REF: None})
    assert result.ok
    assert result.detail.endswith(f"built from {REPOSITORY} (None, None), "
                                  "Sigstore-signed SLSA provenance")
