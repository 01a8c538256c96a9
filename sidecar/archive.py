"""The evidence archive's context codec: what an attestation was verified with, stored beside
the report body (``evidence/<sha256>.context.json``) so it can be re-verified offline.

``ReceiptLog`` (``sidecar.receipts``) writes the archive; ``tee-sidecar attest --report
--context`` and the pin store read it back. The codec is data, not a check: the verification it
feeds is :func:`sidecar.verify.attestation.verify_attestation`, run again on what
``decode_context`` returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.errors import VerificationFailed
from sidecar.verify.attestation import AttestationReport, NodeEvidence

CONTEXT_FORMAT = "tee-sidecar-attestation-context/1"


def encode_context(report: AttestationReport, evidence: Mapping[str, NodeEvidence]) -> bytes:
    """What a report was verified with (per node: collateral, NRAS answer, JWKS, TLS key seen),
    as JSON, so that ``decode_context`` can re-run ``verify_attestation`` offline later."""
    nodes = {
        label: {
            "collateral": item.collateral_json,
            "nras": list(item.nras_response) if item.nras_response is not None else None,
            "jwks": dict(item.jwks) if item.jwks is not None else None,
            "tls_spki_sha256": item.tls_spki_sha256.hex() if item.tls_spki_sha256 else None,
        }
        for label, item in evidence.items()
    }
    return json.dumps({"format": CONTEXT_FORMAT, "model": report.model, "nonce": report.nonce,
                       "verified_at": report.verified_at, "nodes": nodes},
                      separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class AttestationContext:
    """A decoded context: the model, nonce and time of an attestation, and per-node evidence."""

    model: str
    nonce: str
    verified_at: int
    evidence: Mapping[str, NodeEvidence]


def decode_context(data: bytes) -> AttestationContext:
    """Read what ``encode_context`` wrote.

    Raises:
        VerificationFailed: ``attestation.context_malformed`` for anything else.
    """
    def bad(why: str) -> VerificationFailed:
        return VerificationFailed(f"attestation context {why}", code="attestation.context_malformed")

    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise bad("is not JSON") from None
    if not isinstance(obj, dict) or obj.get("format") != CONTEXT_FORMAT:
        raise bad(f"is not of format {CONTEXT_FORMAT}")
    nonce, model, verified_at, nodes = (obj.get("nonce"), obj.get("model"),
                                        obj.get("verified_at"), obj.get("nodes"))
    if not (isinstance(nonce, str) and isinstance(model, str) and isinstance(verified_at, int)
            and isinstance(nodes, dict)):
        raise bad("lacks nonce, model, verified_at or nodes")
    if len(nonce) != 64 or any(c not in "0123456789abcdef" for c in nonce):
        raise bad("nonce is not 64 lower-case hex characters")
    evidence: dict[str, NodeEvidence] = {}
    for label, item in nodes.items():
        if not isinstance(item, dict):
            raise bad(f"node {label!r} is not an object")
        collateral, nras, jwks, spki = (item.get("collateral"), item.get("nras"),
                                        item.get("jwks"), item.get("tls_spki_sha256"))
        if not ((collateral is None or isinstance(collateral, str))
                and (nras is None or isinstance(nras, list))
                and (jwks is None or isinstance(jwks, dict))
                and (spki is None or isinstance(spki, str))):
            raise bad(f"node {label!r} has fields of the wrong type")
        try:
            spki_bytes = bytes.fromhex(spki) if spki else None
        except ValueError:
            raise bad(f"node {label!r} tls_spki_sha256 is not hex") from None
        evidence[str(label)] = NodeEvidence(
            collateral_json=collateral, collateral_error="context holds no collateral",
            nras_response=nras, nras_error="context holds no NRAS answer", jwks=jwks,
            tls_spki_sha256=spki_bytes)
    return AttestationContext(model, nonce, verified_at, evidence)


__all__ = ["CONTEXT_FORMAT", "AttestationContext", "decode_context", "encode_context"]
