"""The simulator's attestation reports: real-format evidence under the simulator's test roots.

Each report node carries a TDX v4 quote signed through the test PCK chain (``tdx_authority``),
a dstack event log and ``info`` whose measurements the quote embeds (``dstack``), and GPU evidence
that the simulated NRAS attests (``nras``). REPORTDATA binds the node's signing key and the
caller's nonce exactly as vllm-proxy does (spec section 2), so the sidecar runs the very same
verification code against it as against a real provider.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sidecar.simulator.dstack import SimulatedNode, build_node_identity
from sidecar.simulator.nras import SimulatedNras
from sidecar.simulator.provider import EVIDENCE_KNOBS, Faults, SigningNode
from sidecar.simulator.tdx_authority import TestTdxAuthority
from sidecar.verify.binding import signing_identifier_bytes

OS_IMAGE_HASH = hashlib.sha256(b"tee-sidecar simulated dstack os image").digest()



class SimulatedEvidence:
    """Builds attestation reports for the simulator's signing nodes."""

    def __init__(self, authority: TestTdxAuthority | None = None,
                 nras: SimulatedNras | None = None) -> None:
        self.authority = authority or TestTdxAuthority()
        self.nras = nras or SimulatedNras()
        # SPKI sha256 of the simulator's TLS certificate: when set, reports bind it into
        # REPORTDATA as NEAR AI Cloud does with include_tls_fingerprint=true.
        self.tls_spki_sha256: bytes | None = None

    def identity(self, index: int, knobs: dict[str, Any]) -> SimulatedNode:
        """The dstack identity of node ``index`` (stable: same app and instance ids)."""
        swap = None
        if knobs.get("swap_compose_hash_payload"):
            swap = {"compose-hash": hashlib.sha256(b"another compose").digest()}
        served = None
        if knobs.get("wrong_compose"):
            served = '{"services": {"other": {"image": "evil@sha256:' + "0" * 64 + '"}}}'
        mrtd = bytes.fromhex(knobs["mrtd"]) if knobs.get("mrtd") else None
        return build_node_identity(
            app_compose=knobs.get("app_compose"),
            app_id=hashlib.sha256(b"tee-sidecar simulated app").hexdigest()[:40],
            instance_id=hashlib.sha256(f"instance {index}".encode()).hexdigest()[:40],
            os_image_hash=(bytes.fromhex(knobs["os_image_hash"]) if knobs.get("os_image_hash")
                           else OS_IMAGE_HASH),
            key_provider=knobs.get("key_provider"),
            mrtd=mrtd,
            swap_payloads=swap,
            break_replay=bool(knobs.get("break_replay")),
            served_app_compose=served,
        )

    def node_report(self, index: int, node: SigningNode, algo: str, nonce_hex: str,
                    bound_nonce: bytes, faults: Faults) -> dict[str, Any]:
        """One node object of the report."""
        knobs = faults.evidence
        address = node.address(algo)
        bound_address = address
        if faults.report_binds_other_address:
            bound_address = SigningNode().address(algo)
        identifier = signing_identifier_bytes(bound_address, algo)
        if self.tls_spki_sha256 is not None:
            key_half = hashlib.sha256(identifier + self.tls_spki_sha256).digest()
        else:
            key_half = identifier.ljust(32, b"\x00")
        report_data = key_half + bound_nonce
        identity = self.identity(index, knobs)
        quote = self.authority.make_quote(
            report_data=report_data, mrtd=identity.mrtd, rtmr0=identity.rtmr0,
            rtmr1=identity.rtmr1, rtmr2=identity.rtmr2, rtmr3=identity.rtmr3,
            mr_config_id=identity.mr_config_id)
        gpu_nonce = knobs.get("gpu_nonce") or nonce_hex
        obj: dict[str, Any] = {
            "signing_address": knobs.get("json_address") or address,
            "signing_algo": algo,
            "nonce": nonce_hex,
            "report_data": report_data.hex(),
            "intel_quote": quote.hex(),
            "event_log": identity.event_log,
            "info": identity.info,
        }
        if self.tls_spki_sha256 is not None:
            obj["tls_cert_fingerprint"] = self.tls_spki_sha256.hex()
        if not knobs.get("no_gpu"):
            obj["nvidia_payload"] = self.nras.make_nvidia_payload(gpu_nonce)
        return obj

    def __call__(self, nodes: Sequence[SigningNode], algo: str, nonce_hex: str,
                 bound_nonce: bytes, faults: Faults) -> dict[str, Any]:
        """The whole report, flat (private-ml-sdk) or NEAR-shaped, per ``faults.evidence``.

        Raises:
            ValueError: ``faults.evidence`` names a knob that does not exist (a typo would
                otherwise make a negative test test nothing).
        """
        unknown = set(faults.evidence) - EVIDENCE_KNOBS
        if unknown:
            raise ValueError(f"unknown evidence knobs {sorted(unknown)}")
        per_node = [self.node_report(i, node, algo, nonce_hex, bound_nonce, faults)
                    for i, node in enumerate(nodes)]
        if faults.evidence.get("shape") == "near":
            for obj in per_node:
                obj["request_nonce"] = obj.pop("nonce")
                obj["model_name"] = "simulated"
            return {"model_attestations": per_node}
        report = dict(per_node[0])
        if len(per_node) > 1:
            report["all_attestations"] = per_node
        return report

