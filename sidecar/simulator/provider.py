"""A simulated TEE provider: its state, keys, signature store and faults (spec 0-3).

Each provider profile of spec 0.1 is served by ``profiles.py`` at ``PROFILE_PREFIX[name]``. It hashes the raw request bytes it receives and the raw response bytes it sends (the whole SSE
stream through ``data: [DONE]``), signs ``"<req sha256>:<resp sha256>"`` with EIP-191 under a
secp256k1 key it generates (or ed25519 on request), keeps signatures in a TTL cache, and answers
attestation requests with real-format evidence bound to the caller's nonce (``evidence.py``).

``Faults`` breaks exactly one thing at a time, for tests and the soak run; it can be set over
HTTP at ``POST /_simulator/faults`` from another process, and ``GET /_simulator/stats`` counts
the completions served (each is counted, and signed, as its response starts).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import coincurve
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sidecar.simulator.signing import (
    checksum_address,
    eth_address,
    personal_sign_digest,
    uncompressed_public_key,
)

# Model ids. NEAR names a node's model by its canonical id (may contain "/", never ":"; spec 0.2)
# and also answers to aliases; NanoGPT names TEE models "TEE/..." and renames them to the
# upstream's id on the way in (spec 0.1); RedPill names them "phala/...".
CANONICAL_MODEL = "simulated-org/Simulated-Llama-3.3-70B-Instruct"
MODEL_ALIAS = "simulated-llama-3.3-70b"
TEE_MODEL = "TEE/simulated-llama-3.3-70b"
NANOGPT_UPSTREAM_MODEL = CANONICAL_MODEL
REDPILL_MODEL = "phala/simulated-llama-3.3-70b"
PLAIN_MODEL = "simulated/no-tee-model"

# Where each profile of spec 0.1 is served in the default app (``--profile`` serves one at /).
PROFILE_PREFIX: dict[str, str] = {
    "nanogpt": "/api",
    "private-ml-sdk": "",
    "near-cloud": "/near-cloud",
    "near-direct": "/near-direct",
    "redpill": "/redpill",
}
# Spec 0.3: "not available" answers HTTP 200 with one of these codes.
UNAVAILABLE_CODES = frozenset({"STREAM_DISCONNECTED", "SIGNATURE_UNSUPPORTED"})
SIGNATURE_TTL_SECONDS = 300.0
MAX_CACHED_SIGNATURES = 50_000


# Knobs of ``Faults.evidence``, read by ``evidence.SimulatedEvidence``.
EVIDENCE_KNOBS = frozenset({
    "shape",  # "flat" (default) or "near"
    "swap_compose_hash_payload",  # a compose-hash payload swapped under its genuine digest
    "break_replay",  # an event the quoted RTMR3 does not include
    "wrong_compose",  # info serves a compose other than the one measured
    "gpu_nonce",  # nvidia_payload.nonce other than the caller's
    "no_gpu",  # no nvidia_payload at all
    "json_address",  # the JSON names another signing address than REPORTDATA binds
    "mrtd",  # hex MRTD to embed instead of the default
    # Which entry of a NEAR/RedPill report the knobs above (and report_binds_other_address,
    # stale_nonce) hit: "model" (default), "gateway" or "compose_manager".
    "target",
    # NEAR compose-manager attestation: "absent", "field_order" (the March-2026 hash form, still
    # valid), "tampered_actions" (an action changed after hashing), "other_nonce".
    "compose_manager",
    # Another deployment (tests of deployment pinning): the measured app-compose string (its own
    # images), the os-image-hash payload (hex), the key-provider event's object.
    "app_compose", "os_image_hash", "key_provider",
})
EVIDENCE_TARGETS = frozenset({"model", "gateway", "compose_manager"})
COMPOSE_MANAGER_MODES = frozenset({"absent", "field_order", "tampered_actions", "other_nonce"})


@dataclass
class Faults:
    """One misbehaviour at a time (all off by default). Tests set a field, then ``reset``."""

    tamper_response: bool = False  # flip a byte of the body after it was hashed and signed
    alter_request: bool = False  # sign the hash of a request other than the one received
    sign_with_other_key: bool = False  # a valid signature, but by an unattested key
    replay_signature: bool = False  # answer with the previous completion's signature record
    signature_missing: bool = False  # the signature endpoint answers 404 for everything
    signature_status: int = 0  # when non-zero, the signature endpoint answers this status
    signature_late_polls: int = 0  # the first N signature fetches answer 404 (written late)
    wrong_text_hashes: bool = False  # sign a text whose hashes cover nothing that was sent
    report_binds_other_address: bool = False  # report_data binds a key the JSON does not name
    stale_nonce: bool = False  # report_data binds an old nonce instead of the caller's
    cut_stream: bool = False  # stop a stream before ``data: [DONE]``
    completion_status: int = 0  # when non-zero, completions answer this status (401, 429, 500)
    attestation_status: int = 0  # when non-zero, the attestation endpoint answers this status
    rotate_key: bool = False  # sign with a fresh key that only a new attestation reveals
    token_delay: float = 0.0  # seconds between streamed tokens
    # nanogpt: rename TEE/x to the upstream id in the forwarded body (as NanoGPT does, spec 0.1);
    # the signed request hash then covers the renamed bytes and the text is 3-part.
    rename_model: bool = True
    # near-cloud stores records late (first fetch of an id answers 404, spec 0.3); this stores
    # them at once instead.
    signature_immediate: bool = False
    # When set (a code of UNAVAILABLE_CODES), the signature endpoint answers HTTP 200
    # {error_code, message} (spec 0.3).
    signature_unavailable: str = ""
    # Sign 3-part texts naming this model instead of the node's canonical one.
    text_model: str = ""
    # near-cloud: label provider_tee records "gateway" and gateway records "provider_tee" (the
    # signature itself unchanged), so a verifier that trusts the label picks the wrong key.
    swap_signature_kind: bool = False
    # NEAR E2EE (spec 0.5), each an attack by the gateway or a lying report:
    # the gateway drops the E2EE headers (the node then answers in plaintext);
    e2ee_strip_headers: bool = False
    # the gateway swaps x-client-pub-key for its own, reads the answer and re-seals it to the
    # client (docs/e2ee.md "An active gateway swapping the client key");
    e2ee_swap_client_key: bool = False
    # the gateway flips one hex digit of a sealed answer field after the node signed it;
    e2ee_tamper_field: bool = False
    # near-cloud signs an E2EE exchange with its gateway key (signature_kind gateway);
    e2ee_gateway_signs: bool = False
    # the report serves a signing_public_key that is not the key of the attested address.
    serve_other_public_key: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)  # knobs passed to the evidence factory

    def validate(self) -> None:
        """Refuse values no knob knows (a typo would make a negative test test nothing).

        Raises:
            ValueError: an unknown evidence knob, target, compose-manager mode or
                unavailable code.
        """
        unknown = set(self.evidence) - EVIDENCE_KNOBS
        if unknown:
            raise ValueError(f"unknown evidence knobs {sorted(unknown)}")
        if self.evidence.get("target", "model") not in EVIDENCE_TARGETS:
            raise ValueError(f"evidence target must be one of {sorted(EVIDENCE_TARGETS)}")
        mode = self.evidence.get("compose_manager")
        if mode is not None and mode not in COMPOSE_MANAGER_MODES:
            raise ValueError(f"compose_manager must be one of {sorted(COMPOSE_MANAGER_MODES)}")
        if self.signature_unavailable and self.signature_unavailable not in UNAVAILABLE_CODES:
            raise ValueError(f"signature_unavailable must be one of {sorted(UNAVAILABLE_CODES)}")

    def reset(self) -> None:
        """Turn every fault off."""
        fresh = Faults()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


@dataclass
class SigningNode:
    """One serving node's signing keys."""

    ecdsa: coincurve.PrivateKey = field(default_factory=coincurve.PrivateKey)
    ed25519: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def address(self, algo: str) -> str:
        """The signing identifier the node publishes for ``algo``."""
        if algo == "ed25519":
            return self.ed25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        # EIP-55 case, as real servers publish it.
        return checksum_address(eth_address(self.ecdsa.public_key))

    def public_key_hex(self, algo: str) -> str:
        """NEAR's ``signing_public_key``: ecdsa the 64-byte X‖Y key, ed25519 the 32-byte key
        (equal to the address). Spec 0.4."""
        if algo == "ed25519":
            return self.address(algo)
        return uncompressed_public_key(self.ecdsa.public_key).hex()

    def sign(self, text: str, algo: str) -> str:
        """Sign ``text`` as the contract says (EIP-191 for ecdsa, raw ed25519 otherwise)."""
        if algo == "ed25519":
            return self.ed25519.sign(text.encode()).hex()
        raw = self.ecdsa.sign_recoverable(personal_sign_digest(text.encode()), hasher=None)
        return "0x" + raw[:64].hex() + format(raw[64] + 27, "02x")


EvidenceFactory = Callable[[list["SigningNode"], str, str, bytes, "Faults"], dict[str, Any]]
"""(nodes, algo, nonce_hex, report_data_nonce, faults) -> attestation report JSON object."""


class SimulatedProvider:
    """State of the simulator: nodes, gateways, signatures, faults and the evidence factory.

    ``nodes`` are the model nodes (their keys sign provider_tee / node records); ``gateway`` is
    NEAR Cloud's attested gateway (gateway-kind records) and ``aci_gateway`` RedPill's ACI
    gateway (its legacy key signs every RedPill record).
    """

    def __init__(self, *, evidence: EvidenceFactory, node_count: int = 1,
                 api_key: str | None = None) -> None:
        self.nodes = [SigningNode() for _ in range(node_count)]
        self.gateway = SigningNode()
        self.aci_gateway = SigningNode()
        self.faults = Faults()
        self.api_key = api_key
        self.evidence = evidence
        # chat id -> (expiry, {algo: signature record})
        self._signatures: OrderedDict[str, tuple[float, dict[str, dict[str, Any]]]] = OrderedDict()
        self._last_record: dict[str, Any] | None = None
        self._late_polls: dict[str, int] = {}
        # ids whose record is not "stored" yet: their next fetch answers 404 (spec 0.3)
        self._stored_late: set[str] = set()
        self._rotated: SigningNode | None = None
        self.completions_served = 0
        # What NEAR's cloud gateway relayed (request bodies as received, answers as sent), so
        # tests can show it only ever held ciphertext under E2EE.
        self.gateway_seen: list[bytes] = []

    # -- signing -------------------------------------------------------------------------

    def _signer(self) -> SigningNode:
        if self.faults.rotate_key:
            if self._rotated is None:
                self._rotated = SigningNode()
                self.nodes.append(self._rotated)
            return self._rotated
        # Once the rotation fault is off, the serving nodes take turns again without the rotated
        # key: it stays attestable (a later report may list it), but no longer signs.
        serving = [node for node in self.nodes if node is not self._rotated] or self.nodes
        return serving[self.completions_served % len(serving)]

    def record_signature(self, chat_id: str, request_body: bytes, response_body: bytes, *,
                         model: str | None = None, signer: SigningNode | None = None,
                         extra: dict[str, Any] | None = None, stored_late: bool = False,
                         aliases: tuple[str, ...] = ()) -> None:
        """Sign and cache the record of a finished completion.

        Args:
            request_body: the bytes whose sha256 is the text's request hash.
            response_body: the bytes whose sha256 is the text's response hash.
            model: when given, the text is 3-part ``model:req:resp`` (spec 0.2).
            signer: the signing key (default: the serving model node).
            extra: fields added to every record (``signature_kind``, ``api_version``, ...).
            stored_late: the first fetch of ``chat_id`` answers 404 (delayed storage, spec 0.3).
            aliases: further ids the same records answer to (RedPill's receipt id).
        """
        faults = self.faults
        request_hash = hashlib.sha256(request_body + (b" " if faults.alter_request else b"")).hexdigest()
        response_hash = hashlib.sha256(response_body).hexdigest()
        if faults.wrong_text_hashes:
            request_hash, response_hash = response_hash, request_hash
        text = f"{request_hash}:{response_hash}"
        if model is not None:
            text = f"{faults.text_model or model}:{text}"
        extra = dict(extra or {})
        if faults.swap_signature_kind and "signature_kind" in extra:
            extra["signature_kind"] = {"provider_tee": "gateway", "gateway": "provider_tee"}[
                extra["signature_kind"]]
        records: dict[str, dict[str, Any]] = {}
        for algo in ("ecdsa", "ed25519"):
            node = SigningNode() if faults.sign_with_other_key else (signer or self._signer())
            records[algo] = {
                "text": text,
                "signature": node.sign(text, algo),
                "signing_address": node.address(algo),
                "signing_algo": algo,
                **extra,
            }
        self.completions_served += 1
        expiry = time.monotonic() + SIGNATURE_TTL_SECONDS
        for key in (chat_id, *aliases):
            self._signatures[key] = (expiry, records)
            if stored_late and not faults.signature_immediate:
                self._stored_late.add(key)
        while len(self._signatures) > MAX_CACHED_SIGNATURES:
            evicted, _ = self._signatures.popitem(last=False)
            self._stored_late.discard(evicted)

    def signature(self, chat_id: str, algo: str) -> dict[str, Any] | None:
        """The cached record, honouring TTL, delayed storage and the signature faults."""
        if chat_id in self._stored_late:
            self._stored_late.discard(chat_id)
            return None
        entry = self._signatures.get(chat_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        record = entry[1][algo]
        if self.faults.replay_signature and self._last_record is not None:
            previous = self._last_record
            self._last_record = record
            return previous
        self._last_record = record
        return record


def build_simulator_app(provider: SimulatedProvider, *, profile: str | None = None) -> web.Application:
    """The aiohttp app: every profile at its ``PROFILE_PREFIX``, or only ``profile`` at the root.

    Raises:
        ValueError: ``profile`` is not a key of ``PROFILE_PREFIX``.
    """
    from sidecar.simulator.profiles import add_control_routes, add_profile_routes

    if profile is not None and profile not in PROFILE_PREFIX:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILE_PREFIX)}")
    app = web.Application(client_max_size=8 << 20)
    if profile is not None:
        add_profile_routes(app, provider, profile, "")
    else:
        for name, prefix in PROFILE_PREFIX.items():
            add_profile_routes(app, provider, name, prefix)
    add_control_routes(app, provider)
    return app
