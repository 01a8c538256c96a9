"""The simulator's attestation reports: real-format evidence under the simulator's test roots.

Each report node carries a TDX v4 quote signed through the test PCK chain (``tdx_authority``),
a dstack event log and ``info`` whose measurements the quote embeds (``dstack``), and GPU evidence
that the simulated NRAS attests (``nras``). REPORTDATA binds the node's signing key and the
caller's nonce exactly as vllm-proxy does (spec section 2), so the sidecar runs the very same
verification code against it as against a real provider.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sidecar.simulator.dstack import SimulatedNode, build_node_identity, default_app_compose
from sidecar.simulator.nras import SimulatedNras
from sidecar.simulator.provider import Faults, SigningNode
from sidecar.simulator.signing import signing_identifier
from sidecar.simulator.tdx_authority import TestTdxAuthority

OS_IMAGE_HASH = hashlib.sha256(b"tee-sidecar simulated dstack os image").digest()
# The gateways run other software than the model nodes: their own compose, pinned by digest.
NEAR_GATEWAY_IMAGE_DIGEST = "sha256:" + hashlib.sha256(b"tee-sidecar simulated cloud-api").hexdigest()
ACI_GATEWAY_IMAGE_DIGEST = "sha256:" + hashlib.sha256(b"tee-sidecar simulated aci gateway").hexdigest()
# SPKI sha256 a RedPill version-2 report binds when the simulator serves no TLS of its own.
PLACEHOLDER_TLS_SPKI_SHA256 = hashlib.sha256(b"tee-sidecar simulated tls spki").digest()
STALE_NONCE = hashlib.sha256(b"an old nonce").digest()

# The compose manager's deployment log (NEAR, spec 0.4), shaped like the real report's
# ``actions`` (keys timestamp, action, container?, tag, commit, file, file_sha256?, services).
# The en dash makes ``ensure_ascii`` matter to the hash, as a real name could.
COMPOSE_MANAGER_ACTIONS: tuple[dict[str, Any], ...] = (
    {"timestamp": "2026-10-01T09:00:00.000000000+00:00", "action": "compose_up",
     "tag": "v0.1.0", "commit": hashlib.sha1(b"simulated v0.1.0").hexdigest(),
     "file": "simulated-llama–70b.yaml",
     "file_sha256": hashlib.sha256(b"simulated compose file").hexdigest(),
     "services": ["model-simulated-llama"]},
    {"timestamp": "2026-10-01T09:05:00.000000000+00:00", "action": "container_restart",
     "container": "model-simulated-llama", "tag": "v0.1.0",
     "commit": hashlib.sha1(b"simulated v0.1.0").hexdigest(), "file": "simulated.yaml",
     "services": ["model-simulated-llama"]},
)


def actions_hash(actions: Sequence[dict[str, Any]], *, sorted_keys: bool = True) -> bytes:
    """sha256 of the actions as compact JSON, ``ensure_ascii=False``: keys sorted (current
    servers) or in field order (a March-2026 server). Spec 0.4, checked on the real report.

    Raises:
        Nothing.
    """
    text = json.dumps(list(actions), separators=(",", ":"), sort_keys=sorted_keys,
                      ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()



class SimulatedEvidence:
    """Builds attestation reports for the simulator's signing nodes."""

    def __init__(self, authority: TestTdxAuthority | None = None,
                 nras: SimulatedNras | None = None) -> None:
        self.authority = authority or TestTdxAuthority()
        self.nras = nras or SimulatedNras()
        # SPKI sha256 of the simulator's TLS certificate: when set, reports bind it into
        # REPORTDATA as NEAR AI Cloud does with include_tls_fingerprint=true.
        self.tls_spki_sha256: bytes | None = None

    def identity(self, index: int, knobs: dict[str, Any], *, app: str = "app",
                 app_compose: str | None = None) -> SimulatedNode:
        """The dstack identity of node ``index`` of ``app`` (stable: same app and instance ids)."""
        swap = None
        if knobs.get("swap_compose_hash_payload"):
            swap = {"compose-hash": hashlib.sha256(b"another compose").digest()}
        served = None
        if knobs.get("wrong_compose"):
            served = '{"services": {"other": {"image": "evil@sha256:' + "0" * 64 + '"}}}'
        mrtd = bytes.fromhex(knobs["mrtd"]) if knobs.get("mrtd") else None
        app_label = b"tee-sidecar simulated app" if app == "app" else f"simulated {app}".encode()
        instance_label = f"instance {index}" if app == "app" else f"{app} instance {index}"
        return build_node_identity(
            app_compose=knobs.get("app_compose") or app_compose,
            app_id=hashlib.sha256(app_label).hexdigest()[:40],
            instance_id=hashlib.sha256(instance_label.encode()).hexdigest()[:40],
            os_image_hash=(bytes.fromhex(knobs["os_image_hash"]) if knobs.get("os_image_hash")
                           else OS_IMAGE_HASH),
            key_provider=knobs.get("key_provider"),
            mrtd=mrtd,
            swap_payloads=swap,
            break_replay=bool(knobs.get("break_replay")),
            served_app_compose=served,
        )

    def node_report(self, index: int, node: SigningNode, algo: str, nonce_hex: str,
                    bound_nonce: bytes, faults: Faults, *, knobs: dict[str, Any] | None = None,
                    report_faults: bool = True, tls: bool | None = None) -> dict[str, Any]:
        """One node object of the report (the private-ml-sdk shape).

        ``knobs`` replace ``faults.evidence``; ``report_faults`` False ignores
        ``report_binds_other_address``; ``tls`` False never binds the TLS key (None: bind it
        whenever ``tls_spki_sha256`` is set, as before).
        """
        knobs = faults.evidence if knobs is None else knobs
        address = node.address(algo)
        bound_address = address
        if faults.report_binds_other_address and report_faults:
            bound_address = SigningNode().address(algo)
        identifier = signing_identifier(bound_address, algo)
        if self.tls_spki_sha256 is not None and tls is not False:
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
        if self.tls_spki_sha256 is not None and tls is not False:
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
        faults.validate()
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


    # -- NEAR and RedPill shapes (spec 0.1, 0.4; the real report in /work/shared/samples/near) --

    @staticmethod
    def _aimed_at(faults: Faults, entry: str) -> bool:
        return bool(faults.evidence.get("target", "model") == entry)

    def _entry_knobs(self, faults: Faults, entry: str) -> dict[str, Any]:
        if not self._aimed_at(faults, entry):
            return {}
        return {k: v for k, v in faults.evidence.items() if k not in ("target", "compose_manager")}

    def _bound_nonce(self, faults: Faults, entry: str, nonce: bytes) -> bytes:
        return STALE_NONCE if faults.stale_nonce and self._aimed_at(faults, entry) else nonce

    def _quote_for(self, identity: SimulatedNode, report_data: bytes) -> bytes:
        return self.authority.make_quote(
            report_data=report_data, mrtd=identity.mrtd, rtmr0=identity.rtmr0,
            rtmr1=identity.rtmr1, rtmr2=identity.rtmr2, rtmr3=identity.rtmr3,
            mr_config_id=identity.mr_config_id)

    def _key_half(self, identifier: bytes, tls: bool) -> bytes:
        if tls and self.tls_spki_sha256 is not None:
            return hashlib.sha256(identifier + self.tls_spki_sha256).digest()
        return identifier.ljust(32, b"\x00")

    def near_gateway_entry(self, gateway: SigningNode, algo: str, nonce_hex: str, nonce: bytes,
                           faults: Faults, *, tls: bool = False) -> dict[str, Any]:
        """NEAR Cloud's ``gateway_attestation``: its own CVM (cloud-api compose), no GPU,
        ``event_log`` as a JSON *string*, a ``report_data`` copy and ``request_nonce``."""
        knobs = self._entry_knobs(faults, "gateway")
        identity = self.identity(0, knobs, app="gateway",
                                 app_compose=default_app_compose(NEAR_GATEWAY_IMAGE_DIGEST))
        address = gateway.address(algo)
        bound = address
        if faults.report_binds_other_address and self._aimed_at(faults, "gateway"):
            bound = SigningNode().address(algo)
        report_data = (self._key_half(signing_identifier(bound, algo), tls)
                       + self._bound_nonce(faults, "gateway", nonce))
        info = dict(identity.info)
        info["tcb_info"] = {**identity.info["tcb_info"], "event_log": identity.event_log}
        entry: dict[str, Any] = {
            "signing_address": knobs.get("json_address") or address,
            "signing_algo": algo,
            "intel_quote": self._quote_for(identity, report_data).hex(),
            "event_log": json.dumps(identity.event_log),
            "report_data": report_data.hex(),
            "request_nonce": nonce_hex,
            "info": info,
            "vpc": {"vpc_server_app_id": hashlib.sha256(b"simulated vpc").hexdigest()[:40],
                    "vpc_hostname": "cloud-api-simulated.dstack.internal"},
        }
        if tls and self.tls_spki_sha256 is not None:
            entry["tls_cert_fingerprint"] = self.tls_spki_sha256.hex()
        return entry

    def compose_manager_entry(self, index: int, nonce_hex: str, nonce: bytes,
                              faults: Faults) -> dict[str, Any] | None:
        """NEAR's ``compose_manager_attestation``: its own quote with REPORTDATA =
        actions_hash ‖ nonce, the model node's app_compose in ``mr_config_id``, its own event
        log (a JSON string, as in the real report). None when the knob says "absent"."""
        mode = faults.evidence.get("compose_manager")
        if mode == "absent":
            return None
        actions = [dict(action) for action in COMPOSE_MANAGER_ACTIONS]
        digest = actions_hash(actions, sorted_keys=mode != "field_order")
        if mode == "tampered_actions":
            actions[0]["tag"] = "v6.6.6"
        bound = hashlib.sha256(b"another nonce").digest() if mode == "other_nonce" else nonce
        bound = self._bound_nonce(faults, "compose_manager", bound)
        identity = self.identity(index, self._entry_knobs(faults, "compose_manager"),
                                 app="compose-manager", app_compose=default_app_compose())
        report_data = digest + bound
        vm_config = {"spec_version": 1, "os_image_hash": OS_IMAGE_HASH.hex(), "cpu_count": 8,
                     "memory_size": 1 << 34, "num_gpus": 1, "image": "dstack-nvidia-simulated"}
        return {
            "actions": actions,
            "actions_hash": digest.hex(),
            "nonce": nonce_hex,
            "nonce_source": "client",
            "quote": self._quote_for(identity, report_data).hex(),
            "event_log": json.dumps(identity.event_log),
            "report_data": report_data.hex(),
            "vm_config": json.dumps(vm_config, separators=(",", ":")),
        }

    def near_model_entry(self, index: int, node: SigningNode, algo: str, nonce_hex: str,
                         nonce: bytes, faults: Faults, *, model_name: str,
                         tls: bool = False) -> dict[str, Any]:
        """A NEAR model node's entry: ``model_name``, ``signing_public_key``, NO
        ``report_data``, ``event_log`` as a list, ``nvidia_payload``, ``request_nonce`` and a
        compose-manager attestation (key order as in the real report)."""
        flat = self.node_report(index, node, algo, nonce_hex, self._bound_nonce(faults, "model", nonce),
                                faults, knobs=self._entry_knobs(faults, "model"),
                                report_faults=self._aimed_at(faults, "model"), tls=tls)
        info = dict(flat["info"])
        info["tcb_info"] = {**info["tcb_info"], "event_log": flat["event_log"]}
        entry: dict[str, Any] = {
            "model_name": model_name,
            "signing_address": flat["signing_address"],
            "signing_algo": algo,
            "signing_public_key": node.public_key_hex(algo),
            "request_nonce": nonce_hex,
            "intel_quote": flat["intel_quote"],
        }
        if "nvidia_payload" in flat:
            entry["nvidia_payload"] = flat["nvidia_payload"]
        entry["event_log"] = flat["event_log"]
        entry["info"] = info
        if "tls_cert_fingerprint" in flat:
            entry["tls_cert_fingerprint"] = flat["tls_cert_fingerprint"]
        manager = self.compose_manager_entry(index, nonce_hex, nonce, faults)
        if manager is not None:
            entry["compose_manager_attestation"] = manager
        return entry

    def redpill_report(self, gateway: SigningNode, algo: str, nonce_hex: str, nonce: bytes,
                       faults: Faults, *, version: int) -> dict[str, Any]:
        """RedPill/Phala ACI's legacy report: the gateway's own quote and legacy key.

        Shape from Dstack-TEE/private-ai-gateway ``src/http/app/handlers.rs``
        (``report_with_legacy_attestation_fields``, read 2026-11): the ACI report plus top-level
        ``signing_public_key`` (ecdsa: the 65-byte ``04``-prefixed key), ``signing_algo``,
        ``signing_address``, ``intel_quote``, ``nvidia_payload`` (the upstream model node's GPU
        evidence for the same nonce; an empty ``evidence_list`` placeholder when there is none,
        knob ``no_gpu``) and ``all_attestations: [itself]``. Version 1 binds key ‖ nonce,
        version 2 sha256(key ‖ TLS SPKI sha256) ‖ nonce (spec 0.1). The dstack ``event_log``
        and ``info`` served beside them are the simulator's assumption (not read in the source).
        """
        knobs = self._entry_knobs(faults, "gateway") or self._entry_knobs(faults, "model")
        identity = self.identity(0, knobs, app="aci-gateway",
                                 app_compose=default_app_compose(ACI_GATEWAY_IMAGE_DIGEST))
        address = gateway.address(algo)
        bound = SigningNode().address(algo) if faults.report_binds_other_address else address
        identifier = signing_identifier(bound, algo)
        spki = self.tls_spki_sha256 or PLACEHOLDER_TLS_SPKI_SHA256
        key_half = (hashlib.sha256(identifier + spki).digest() if version == 2
                    else identifier.ljust(32, b"\x00"))
        report_data = key_half + (STALE_NONCE if faults.stale_nonce else nonce)
        quote = self._quote_for(identity, report_data).hex()
        public_key = node_key = gateway.public_key_hex(algo)
        if algo == "ecdsa":
            public_key = "04" + node_key
        if knobs.get("no_gpu"):
            gpu = json.dumps({"nonce": nonce_hex, "evidence_list": [], "arch": "HOPPER"})
        else:
            gpu = self.nras.make_nvidia_payload(knobs.get("gpu_nonce") or nonce_hex)
        report: dict[str, Any] = {
            "api_version": "aci/1",
            "attestation": {"tee_type": "tdx", "report_data": report_data.hex(),
                            "evidence": {"quote": quote}},
            "signing_public_key": public_key,
            "signing_algo": algo,
            "signing_address": knobs.get("json_address") or address,
            "intel_quote": quote,
            "nvidia_payload": gpu,
            "request_nonce": nonce_hex,
            "event_log": identity.event_log,
            "info": identity.info,
        }
        if version == 2:
            report["tls_cert_fingerprint"] = spki.hex()
        report["all_attestations"] = [dict(report)]
        return report
