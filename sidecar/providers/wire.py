"""JSON shapes of attestation reports and signature records, parsed at the edge (spec sections 2, 3).

Provider JSON grows new fields over time (``signing_key``, ``vpc``, ``request_nonce`` …), so these
models ignore unknown keys instead of forbidding them; every field the sidecar *uses* is typed and
bounded. Two report shapes reach the same list of nodes:

- flat (private-ml-sdk, NanoGPT): one node object, with ``all_attestations`` listing every node;
- NEAR AI Cloud: ``gateway_attestation`` plus ``model_attestations``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sidecar.errors import VerificationFailed

# Real reports are tens of KiB (a 5 KiB quote, an event log, GPU evidence of a few KiB per GPU);
# 4 MiB leaves room for eight-GPU nodes and refuses a hostile multi-gigabyte body.
MAX_REPORT_BYTES = 4 << 20
# A deployment serves from a handful of nodes; the bound caps per-node verification work (the
# ceiling and default of the setting attestation.max_nodes).
MAX_NODES = 64
MAX_SIGNATURE_RECORD_BYTES = 16 << 10


class NodeAttestationWire(BaseModel):
    """One attested node as the provider describes it (nothing here is trusted yet)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    signing_address: str = Field(min_length=1, max_length=130)
    signing_algo: Literal["ecdsa", "ed25519"] = "ecdsa"

    @field_validator("signing_algo", mode="before")
    @classmethod
    def _algo_default(cls, value: object) -> object:
        # Older servers send null (or nothing) for the default scheme.
        return "ecdsa" if value is None else value

    intel_quote: str | None = Field(default=None, max_length=1 << 20)
    nvidia_payload: str | dict[str, Any] | None = None
    event_log: list[dict[str, Any]] | str | None = None
    info: dict[str, Any] | None = None
    nonce: str | None = None
    request_nonce: str | None = None
    report_data: str | None = None
    tls_cert_fingerprint: str | None = Field(default=None, max_length=130)
    compose_manager_attestation: dict[str, Any] | None = None
    model_name: str | None = None

    def nvidia_payload_text(self) -> str | None:
        """The GPU evidence as the JSON string NRAS expects (some servers send an object)."""
        if self.nvidia_payload is None or isinstance(self.nvidia_payload, str):
            return self.nvidia_payload
        return json.dumps(self.nvidia_payload)


class _FlatReport(NodeAttestationWire):
    all_attestations: list[NodeAttestationWire] | None = Field(default=None, max_length=MAX_NODES)


class _NearReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    gateway_attestation: NodeAttestationWire | None = None
    # At least one model node: a gateway alone attests no key that may sign completions.
    model_attestations: list[NodeAttestationWire] = Field(min_length=1, max_length=MAX_NODES)


@dataclass(frozen=True, slots=True)
class AttestedNodeClaim:
    """A node to verify: where it sits (``gateway`` or ``model``) and what it claims."""

    label: str
    role: Literal["gateway", "model"]
    wire: NodeAttestationWire


@dataclass(frozen=True, slots=True)
class AttestationDocument:
    """A parsed report: its nodes and the sha256 of the exact bytes received (the evidence digest)."""

    nodes: tuple[AttestedNodeClaim, ...]
    evidence_sha256: str


def parse_attestation_document(body: bytes) -> AttestationDocument:
    """Parse a report body of either shape into its nodes.

    Raises:
        VerificationFailed: ``attestation.malformed`` for oversized, non-JSON or off-contract
            bodies, or a report that names no node.
    """
    if len(body) > MAX_REPORT_BYTES:
        raise VerificationFailed(f"attestation report exceeds {MAX_REPORT_BYTES} bytes",
                                 code="attestation.malformed")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
        raise VerificationFailed("attestation report is not JSON", code="attestation.malformed") from None
    if not isinstance(obj, dict):
        raise VerificationFailed("attestation report is not a JSON object", code="attestation.malformed")
    try:
        # JSON escapes can smuggle lone surrogates (\ud800) into strings, which later fail to
        # encode deep inside a verifier; such a body is not UTF-8 text and is refused here.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise VerificationFailed("attestation report holds strings that are not valid Unicode",
                                 code="attestation.malformed") from None
    digest = hashlib.sha256(body).hexdigest()
    try:
        if "model_attestations" in obj:
            near = _NearReport.model_validate(obj)
            nodes = [AttestedNodeClaim(f"model-{i}", "model", wire)
                     for i, wire in enumerate(near.model_attestations)]
            if near.gateway_attestation is not None:
                nodes.insert(0, AttestedNodeClaim("gateway", "gateway", near.gateway_attestation))
        else:
            flat = _FlatReport.model_validate(obj)
            listed = flat.all_attestations or [flat]
            nodes = [AttestedNodeClaim(f"node-{i}", "model", wire) for i, wire in enumerate(listed)]
            # The top-level node must be one of the listed ones: a report whose headline key is
            # not among its nodes is self-contradictory.
            if flat.all_attestations and not any(
                wire.signing_address.lower() == flat.signing_address.lower() for wire in listed
            ):
                raise VerificationFailed(
                    f"top-level signing_address {flat.signing_address} is not in all_attestations",
                    code="attestation.malformed")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise VerificationFailed(f"attestation report field {where}: {first['msg']}",
                                 code="attestation.malformed") from None
    if not nodes:
        raise VerificationFailed("attestation report names no node", code="attestation.malformed")
    return AttestationDocument(tuple(nodes), digest)


class SignatureRecordWire(BaseModel):
    """The signature endpoint's answer (spec section 3)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # The same bounds as a receipt's fields (sidecar.receipts), so any record that parses can be
    # recorded. A signed text is two digests and a colon: 129 characters.
    text: str = Field(min_length=1, max_length=256)
    signature: str = Field(min_length=1, max_length=1024)
    signing_address: str = Field(min_length=1, max_length=130)
    signing_algo: Literal["ecdsa", "ed25519"] = "ecdsa"

    @field_validator("signing_algo", mode="before")
    @classmethod
    def _algo_default(cls, value: object) -> object:
        return "ecdsa" if value is None else value


def parse_signature_record(body: bytes) -> SignatureRecordWire:
    """Parse a signature record.

    Raises:
        VerificationFailed: ``signature.record_malformed`` for anything off-contract.
    """
    if len(body) > MAX_SIGNATURE_RECORD_BYTES:
        raise VerificationFailed("signature record is too large", code="signature.record_malformed")
    try:
        return SignatureRecordWire.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise VerificationFailed(f"signature record field {where}: {first['msg']}",
                                 code="signature.record_malformed") from None
