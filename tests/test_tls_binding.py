"""TLS binding end to end: a report that binds the server's TLS key pins that certificate.

The simulator serves HTTPS with a certificate from a test CA the sidecar trusts, and binds the
certificate's SPKI into REPORTDATA (NEAR's include_tls_fingerprint=true). After attestation the
sidecar must accept only that certificate: a second certificate from the same trusted CA, as a
man in the middle with a mis-issued certificate would present, is refused before any request
byte is sent.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.simulator.evidence import SimulatedEvidence
from sidecar.simulator.server import build_simulator
from tests.stack import Stack
from tests.conftest import TEE_MODEL

MESSAGES = [{"role": "user", "content": "hello over TLS"}]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_server_cert(directory: Path, name: str, ca_key: ec.EllipticCurvePrivateKey
                       ) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(name, key, "tee-sidecar test CA", ca_key, ca=False)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert


def _spki_sha256(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


@pytest.fixture()
def tls_stack(tmp_path: Path) -> Iterator[tuple[Stack, ssl.SSLContext, Path, Path, Path]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("tee-sidecar test CA", ca_key, "tee-sidecar test CA", ca_key, ca=True)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    genuine_cert, genuine_key, genuine = _write_server_cert(tmp_path, "enclave", ca_key)
    mitm_cert, mitm_key, _ = _write_server_cert(tmp_path, "mitm", ca_key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(genuine_cert, genuine_key)
    stack = Stack(tmp_path / "state", tls=context)
    cast(SimulatedEvidence, stack.provider.evidence).tls_spki_sha256 = _spki_sha256(genuine)
    # upstream.ca_file covers the provider only; collateral and NRAS come from a plain-HTTP
    # simulator (same deterministic test roots), as they come from Intel and NVIDIA for real.
    evidence_url = stack.run(stack.serve(build_simulator()[0]))
    stack.defaults = {"attestation": {"pccs_url": evidence_url + "/pcs",
                                      "nras_url": evidence_url + "/nras/v3/attest/gpu"}}
    try:
        yield stack, context, ca_path, mitm_cert, mitm_key
    finally:
        stack.close()


def test_attested_tls_key_is_pinned_and_a_second_certificate_refused(
        tls_stack: tuple[Stack, ssl.SSLContext, Path, Path, Path]) -> None:
    stack, context, ca_path, mitm_cert, mitm_key = tls_stack
    url = stack.sidecar(upstream={"ca_file": str(ca_path)})
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)

    raw = client.chat.completions.with_raw_response.create(model=TEE_MODEL, messages=MESSAGES)
    assert raw.headers["x-tee-verified"] == "true"
    state = stack.sidecar_state(url)
    report = state.cache.peek(TEE_MODEL)
    assert report is not None
    checks = {c.name: c for c in report.report.nodes[0].checks}
    assert checks["binding.tls_certificate"].ok
    # The report says which TLS key it bound, as a fact (the attester pins on it).
    assert report.report.nodes[0].bound_tls_spki is not None
    assert state.upstream.pinned_certificate is not None

    # A certificate the CA store accepts, but not the attested one.
    stack.call(lambda: context.load_cert_chain(mitm_cert, mitm_key))
    time.sleep(1.0)  # the server closes idle connections after 0.3 s; the next one handshakes
    served_before = stack.call(lambda: stack.simulator.completions_served)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=TEE_MODEL, messages=MESSAGES)
    assert info.value.status_code == 502
    assert info.value.response.json()["error"]["code"] == "upstream.tls_pin_mismatch"
    assert stack.call(lambda: stack.simulator.completions_served) == served_before


def test_report_bound_to_another_tls_key_fails_attestation(
        tls_stack: tuple[Stack, ssl.SSLContext, Path, Path, Path]) -> None:
    stack, _, ca_path, _, _ = tls_stack
    cast(SimulatedEvidence, stack.provider.evidence).tls_spki_sha256 = b"\x01" * 32
    url = stack.sidecar(upstream={"ca_file": str(ca_path)}, fresh=True)
    with pytest.raises(openai.APIStatusError) as info:
        openai.OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(
            model=TEE_MODEL, messages=MESSAGES)
    assert info.value.response.json()["error"]["code"] == "binding.tls_mismatch"
