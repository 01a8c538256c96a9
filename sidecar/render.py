"""Attestation reports for people (text) and programs (JSON), as ``tee-sidecar attest`` prints them."""

from __future__ import annotations

from typing import Any

from sidecar.verify.attestation import AttestationReport
from sidecar.verify.checks import Status

_MARK = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.INCOMPLETE: "INCOMPLETE"}


def attestation_json(report: AttestationReport) -> dict[str, Any]:
    """The report as one JSON object: verdict, a flat list of checks, and per-node detail."""
    return {
        "verdict": report.verdict,
        "model": report.model,
        "nonce": report.nonce,
        "evidence_sha256": report.evidence_sha256,
        "verified_at": report.verified_at,
        "checks": [
            {"name": c.name, "node": node.label, "status": str(c.status), "detail": c.detail,
             "code": c.code}
            for node in report.nodes for c in node.checks
        ],
        "nodes": [
            {
                "node": node.label,
                "role": node.role,
                "signing_key": node.signing_key,
                "signing_algo": node.algo,
                "status": str(node.status),
                "tcb_status": node.tcb_status,
                "advisory_ids": list(node.advisory_ids),
                "measurements": dict(node.measurements),
                "gpus": [{"gpu": g.gpu_id, "ok": g.ok, "claims": dict(g.claims)} for g in node.gpus],
            }
            for node in report.nodes
        ],
    }


def attestation_text(report: AttestationReport) -> str:
    """A readable report: every check with its reason, the measurements, TCB and GPU verdicts."""
    lines = [
        f"Attestation of {report.model}: {report.verdict.upper()}",
        f"  nonce           {report.nonce}",
        f"  evidence sha256 {report.evidence_sha256}",
    ]
    for node in report.nodes:
        lines += ["", f"Node {node.label} ({node.role}) {node.algo} key {node.signing_key}: "
                      f"{_MARK[node.status]}"]
        for check in node.checks:
            lines.append(f"  [{_MARK[check.status]:>10}] {check.name}: {check.detail}")
        if node.tcb_status:
            advisories = ", ".join(node.advisory_ids) or "none"
            lines.append(f"  TCB status {node.tcb_status} (advisories: {advisories})")
        for name, value in node.measurements.items():
            lines.append(f"  {name:<13}{value}")
        for gpu in node.gpus:
            claims = ", ".join(f"{k}={v}" for k, v in gpu.claims.items()
                               if k in ("measres", "secboot", "dbgstat",
                                        "x-nvidia-gpu-driver-version",
                                        "x-nvidia-gpu-vbios-version"))
            lines.append(f"  GPU {gpu.gpu_id}: {'PASS' if gpu.ok else 'FAIL'} {claims}")
    return "\n".join(lines)
