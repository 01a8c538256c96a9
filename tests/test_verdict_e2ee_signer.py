"""``verdict.check_e2ee_signer``: who may sign an end-to-end encrypted exchange (spec 0.5,
docs/e2ee.md), on the two real NEAR Cloud signature records of ``tests/assets/near/``.

Only the model node the prompt was sealed to, signing as itself (``provider_tee`` or, on a
direct node, no kind), makes an E2EE exchange genuine: a gateway-kind record, a gateway key, a
key no attestation names or another node are each refused with their own code and message.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.errors import VerificationFailed
from sidecar.providers.wire import SignatureRecordWire, parse_signature_record
from sidecar.proxy.verdict import check_e2ee_signer
from sidecar.verify.signature import AttestedSigner

RECORDS = json.loads((Path(__file__).parent / "assets" / "near"
                      / "cloud_signature_records.json").read_text())
NODE_RECORD = RECORDS["provider_tee_ed25519"]  # signed by the model node's ed25519 key
GATEWAY_RECORD = RECORDS["gateway_ed25519_two_part"]  # signed by NEAR Cloud's gateway key
NODE = NODE_RECORD["signing_address"]
GATEWAY = GATEWAY_RECORD["signing_address"]
OTHER_NODE = "11" * 32

GATEWAY_MESSAGE = ("an end-to-end encrypted exchange must be signed by the model node itself "
                   "(provider_tee), not a gateway")
NOT_RECIPIENT_MESSAGE = ("the exchange was signed by another model node than the one its prompt "
                         "was sealed to")


def record(source: dict[str, str], **changes: str | None) -> SignatureRecordWire:
    """The real record as the signature endpoint sends it, with ``changes`` (``None`` drops a
    field)."""
    fields = {k: v for k, v in source.items() if not k.startswith("_")}
    for name, value in changes.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return parse_signature_record(json.dumps(fields).encode())


def attested(**roles: str) -> Any:
    """What ``check_e2ee_signer`` reads of a cached attestation: its attested signers (key ->
    role, as ``AttestationReport.attested_signers`` builds them)."""
    signers = {key: AttestedSigner(key, "ed25519", role, "Qwen/Qwen3.6-35B-A3B-FP8")  # type: ignore[arg-type]
               for key, role in roles.items()}
    return SimpleNamespace(report=SimpleNamespace(attested_signers=signers))


CLOUD = attested(**{NODE: "model", OTHER_NODE: "model", GATEWAY: "gateway"})


@pytest.mark.parametrize("kind", ["provider_tee", None], ids=["provider_tee", "direct-no-kind"])
def test_the_node_sealed_to_signing_as_itself_is_accepted(kind: str | None) -> None:
    signed = record(NODE_RECORD, signature_kind=kind)
    check_e2ee_signer(signed, NODE, CLOUD, NODE)  # does not raise


def test_a_gateway_kind_record_is_refused_even_from_the_node_key() -> None:
    # The gateway-kind signature covers what the gateway sent, which hides a swapped client key.
    signed = record(NODE_RECORD, signature_kind="gateway")
    with pytest.raises(VerificationFailed) as exc:
        check_e2ee_signer(signed, NODE, CLOUD, NODE)
    assert (exc.value.code, exc.value.message) == ("e2ee.gateway_signature", GATEWAY_MESSAGE)


def test_the_real_gateway_record_is_refused() -> None:
    with pytest.raises(VerificationFailed) as exc:
        check_e2ee_signer(record(GATEWAY_RECORD), GATEWAY, CLOUD, NODE)
    assert (exc.value.code, exc.value.message) == ("e2ee.gateway_signature", GATEWAY_MESSAGE)


@pytest.mark.parametrize("kind", ["provider_tee", None], ids=["provider_tee", "no-kind"])
def test_an_unkinded_or_tee_record_by_the_gateway_key_is_refused(kind: str | None) -> None:
    # The record claims a node signed it, but the key is attested only as NEAR Cloud's gateway.
    signed = record(NODE_RECORD, signing_address=GATEWAY, signature_kind=kind)
    with pytest.raises(VerificationFailed) as exc:
        check_e2ee_signer(signed, GATEWAY, CLOUD, GATEWAY)
    assert (exc.value.code, exc.value.message) == ("e2ee.gateway_signature", GATEWAY_MESSAGE)


@pytest.mark.parametrize("signer", [None, "22" * 32], ids=["none", "unattested"])
def test_a_signer_no_attestation_names_is_refused(signer: str | None) -> None:
    # Even when the prompt was sealed to that very key: only an attested model node counts.
    with pytest.raises(VerificationFailed) as exc:
        check_e2ee_signer(record(NODE_RECORD), signer, CLOUD, signer or "22" * 32)
    assert (exc.value.code, exc.value.message) == ("e2ee.gateway_signature", GATEWAY_MESSAGE)


def test_another_attested_node_than_the_recipient_is_refused() -> None:
    signed = record(NODE_RECORD, signing_address=OTHER_NODE)
    with pytest.raises(VerificationFailed) as exc:
        check_e2ee_signer(signed, OTHER_NODE, CLOUD, NODE)
    assert (exc.value.code, exc.value.message) == ("e2ee.signer_not_recipient",
                                                   NOT_RECIPIENT_MESSAGE)


def test_the_recipient_must_be_the_signer_not_just_attested() -> None:
    # The node key signed, but the prompt was sealed to the other node.
    with pytest.raises(VerificationFailed) as exc:
        check_e2ee_signer(record(NODE_RECORD), NODE, CLOUD, OTHER_NODE)
    assert exc.value.code == "e2ee.signer_not_recipient"
