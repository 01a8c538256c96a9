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
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sidecar.config import MAX_NODES
from sidecar.errors import VerificationFailed

# --- The signature record's types, which the verifier (sidecar.verify.signature) takes ----------

# The canonical model name in a 3-part text: the same bound as a receipt's model and the proxy's
# request parser (a real name is tens of characters, e.g. "Qwen/Qwen3.5-122B-A10B").
MAX_MODEL_LENGTH = 256
# The longest text the contract produces: a model, then two digests each behind a colon. The
# bound keeps a hostile gateway from making us hash or parse megabytes per completion.
MAX_TEXT_LENGTH = MAX_MODEL_LENGTH + 2 * (1 + 64)

Role = Literal["gateway", "model"]


class SignatureKind(StrEnum):
    """Which attested key a signature record says signed it (NEAR Cloud, spec 0.2)."""

    GATEWAY = "gateway"  # the attested gateway key, 2-part text over the client's bytes
    PROVIDER_TEE = "provider_tee"  # the attested model node key, 3-part text


@dataclass(frozen=True, slots=True)
class CompletionSignature:
    """A signature as fetched from the provider's signature endpoint.

    Attributes:
        text: the signed text, 2- or 3-part (spec 0.2).
        signature: ecdsa ``0x`` + r‖s‖v hex, or ed25519 signature hex.
        signing_address: the key the record names.
        signing_algo: ``ecdsa`` or ``ed25519``.
        signature_kind: NEAR Cloud's ``signature_kind``; ``None`` when the record has none.
    """

    text: str
    signature: str
    signing_address: str
    signing_algo: str = "ecdsa"
    signature_kind: SignatureKind | None = None


# --- Attestation reports ------------------------------------------------------------------------

# Real reports are tens of KiB (a 5 KiB quote, an event log, GPU evidence of a few KiB per GPU);
# 4 MiB leaves room for eight-GPU nodes and refuses a hostile multi-gigabyte body.
MAX_REPORT_BYTES = 4 << 20
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
    # No report_data field: the JSON copy of REPORTDATA is never parsed, so nothing can read it;
    # REPORTDATA comes from the verified quote only (NEAR model entries do not even send it, 0.4).
    tls_cert_fingerprint: str | None = Field(default=None, max_length=130)
    compose_manager_attestation: dict[str, Any] | None = None
    model_name: str | None = None
    # ecdsa: 64-byte uncompressed secp256k1 key, hex without the 04 prefix; ed25519: the
    # 32-byte key (spec 0.4). Bound to signing_address by sidecar.verify.binding.
    signing_public_key: str | None = Field(default=None, max_length=260)

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


def compose_manager_label(node_label: str) -> str:
    """The evidence label of a node's compose-manager quote (its own collateral, spec 0.4)."""
    return f"{node_label}/compose-manager"


@dataclass(frozen=True, slots=True)
class AttestationDocument:
    """A parsed report: its nodes and the sha256 of the exact bytes received (the evidence digest)."""

    nodes: tuple[AttestedNodeClaim, ...]
    evidence_sha256: str

    def quotes(self) -> tuple[tuple[str, str | None], ...]:
        """Every TDX quote the report carries, by evidence label: each node's ``intel_quote``,
        then each compose-manager attestation's ``quote`` (labelled ``compose_manager_label``).

        The I/O layer fetches collateral per label; a quote that is absent or not a string is
        ``None`` here and fails in verification.
        """
        found: list[tuple[str, str | None]] = [(n.label, n.wire.intel_quote) for n in self.nodes]
        for node in self.nodes:
            cma = node.wire.compose_manager_attestation
            if cma is not None:
                quote = cma.get("quote")
                found.append((compose_manager_label(node.label),
                              quote if isinstance(quote, str) else None))
        return tuple(found)

    @property
    def model_name(self) -> str | None:
        """The canonical model the first model node names (``model_name``, spec 0.4), if any."""
        return next((n.wire.model_name for n in self.nodes
                     if n.role == "model" and n.wire.model_name), None)


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


# ecdsa names an Ethereum address; ed25519 the raw 32-byte public key (spec 0.2). EIP-55
# checksummed addresses (older servers, spec section 2) are mixed-case.
_ECDSA_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_ED25519_KEY = re.compile(r"[0-9a-fA-F]{64}")
# The provider's own "not available" code (STREAM_DISCONNECTED, SIGNATURE_UNSUPPORTED, spec 0.3)
# goes into our error message: bounded and reduced to printable ASCII so it cannot forge log lines.
MAX_PROVIDER_ERROR_CODE = 64
_SIGNATURE_FIELDS = ("text", "signature", "signing_address")


def canonical_report(body: bytes) -> bytes:
    """The report as verification reads it: only the fields the wire contract declares, each
    list of nodes without repeats, as sorted compact JSON (so equal reports archive once).

    The kept fields are those of the wire parser's own models (this module: the
    flat or NEAR report, and the node models inside them, recursively), so a field the parser
    learns is kept without a change here; values of fields it does not model (``info``,
    ``event_log``) are kept whole. The result parses to the same nodes (less duplicates) as
    ``body``; its sha256 is the report's evidence digest, and it is what the evidence archive
    keeps, so a gateway's unknown fields cost neither verification nor disk (issue 11,
    finding 3).

    Raises:
        VerificationFailed: ``attestation.malformed`` when ``body`` is not a JSON object.
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
        raise VerificationFailed("attestation report is not JSON",
                                 code="attestation.malformed") from None
    if not isinstance(obj, dict):
        raise VerificationFailed("attestation report is not a JSON object",
                                 code="attestation.malformed")
    # The same choice of shape as parse_attestation_document.
    shape: type[BaseModel] = _NearReport if "model_attestations" in obj else _FlatReport
    return json.dumps(_declared(obj, shape), sort_keys=True, separators=(",", ":")).encode()


def _declared(value: Any, model: type[BaseModel]) -> Any:
    """``value`` reduced to what ``model`` declares; lists without repeats. Anything not of
    the expected JSON type is left as it is, for the wire parser to refuse with its message."""
    if isinstance(value, list):
        return _distinct([_declared(item, model) for item in value])
    if not isinstance(value, dict):
        return value
    kept: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key in value:
            inner = _model_inside(field.annotation)
            kept[key] = value[key] if inner is None else _declared(value[key], inner)
    return kept


def _model_inside(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_inside(argument)
        if found is not None:
            return found
    return None


def _distinct(nodes: list[Any]) -> list[Any]:
    seen: set[str] = set()
    distinct = []
    for node in nodes:
        key = json.dumps(node, sort_keys=True)
        if key not in seen:
            seen.add(key)
            distinct.append(node)
    return distinct


class SignatureRecordWire(BaseModel):
    """The signature endpoint's answer (spec sections 0.2, 0.3, 3).

    Unknown fields (``api_version``, ``receipt`` of the ACI legacy record) are ignored.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    # The same bounds as a receipt's fields (sidecar.receipts), so any record that parses can be
    # recorded. The longest text is a 3-part one: a model of up to 256 characters, two digests.
    text: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH)
    signature: str = Field(min_length=1, max_length=1024)
    signing_address: str = Field(min_length=1, max_length=130)
    signing_algo: Literal["ecdsa", "ed25519"] = "ecdsa"
    # NEAR Cloud only (spec 0.2); absent on direct nodes, older rows and other providers.
    signature_kind: SignatureKind | None = None

    @field_validator("signing_algo", mode="before")
    @classmethod
    def _algo_default(cls, value: object) -> object:
        return "ecdsa" if value is None else value

    @model_validator(mode="after")
    def _address_fits_algo(self) -> SignatureRecordWire:
        pattern = _ED25519_KEY if self.signing_algo == "ed25519" else _ECDSA_ADDRESS
        if not pattern.fullmatch(self.signing_address):
            shape = "64 hex characters" if self.signing_algo == "ed25519" else "0x + 40 hex characters"
            raise ValueError(f"an {self.signing_algo} signing_address is {shape}")
        return self

    def completion_signature(self) -> CompletionSignature:
        """The record as the signature verifier takes it."""
        return CompletionSignature(self.text, self.signature, self.signing_address,
                                   self.signing_algo, self.signature_kind)


_SIGNATURE_KINDS = {kind.value: kind for kind in SignatureKind}
_SIGNING_ALGOS = frozenset({"ecdsa", "ed25519"})


def _plain_signature_record(obj: object) -> SignatureRecordWire | None:
    """The usual record, checked by hand: ``SignatureRecordWire``'s rules, field for field, on
    exact types only, then built without pydantic's validation pass (bench/profile.py showed it
    on every completion). ``None`` for anything else, which ``model_validate`` then accepts or
    refuses with its own message: this path may only accept what the model accepts.
    """
    if not isinstance(obj, dict):
        return None
    text, signature, address = obj.get("text"), obj.get("signature"), obj.get("signing_address")
    algo = obj.get("signing_algo")
    kind = obj.get("signature_kind")
    if not (type(text) is str and 1 <= len(text) <= MAX_TEXT_LENGTH
            and type(signature) is str and 1 <= len(signature) <= 1024
            and type(address) is str and 1 <= len(address) <= 130):
        return None
    if algo is None:
        algo = "ecdsa"
    elif type(algo) is not str or algo not in _SIGNING_ALGOS:
        return None
    if kind is not None and (type(kind) is not str or kind not in _SIGNATURE_KINDS):
        return None
    if not (_ED25519_KEY if algo == "ed25519" else _ECDSA_ADDRESS).fullmatch(address):
        return None
    return SignatureRecordWire.model_construct(
        text=text, signature=signature, signing_address=address, signing_algo=algo,
        signature_kind=None if kind is None else _SIGNATURE_KINDS[kind])


def parse_signature_record(body: bytes) -> SignatureRecordWire:
    """Parse a signature record.

    Raises:
        VerificationFailed: ``signature.unavailable`` for the provider's final "not available"
            answer (``{error_code, message}`` without signature fields, spec 0.3: not a retry);
            ``signature.record_malformed`` for anything else off-contract.
    """
    if len(body) > MAX_SIGNATURE_RECORD_BYTES:
        raise VerificationFailed("signature record is too large", code="signature.record_malformed")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
        raise VerificationFailed("signature record is not JSON",
                                 code="signature.record_malformed") from None
    try:
        # As for reports: a lone surrogate (\ud800) is not text, and would fail far from here.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise VerificationFailed("signature record holds strings that are not valid Unicode",
                                 code="signature.record_malformed") from None
    if isinstance(obj, dict) and "error_code" in obj \
            and not any(name in obj for name in _SIGNATURE_FIELDS):
        code = obj["error_code"]
        shown = "".join(c for c in str(code)[:MAX_PROVIDER_ERROR_CODE]
                        if c.isascii() and c.isprintable()) if isinstance(code, str | int) else ""
        raise VerificationFailed(f"the provider has no signature for this completion "
                                 f"(error_code {shown or '(unreadable)'})",
                                 code="signature.unavailable")
    fast = _plain_signature_record(obj)
    if fast is not None:
        return fast
    try:
        return SignatureRecordWire.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise VerificationFailed(f"signature record field {where}: {first['msg']}",
                                 code="signature.record_malformed") from None
