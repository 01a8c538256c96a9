"""``verdict.CompletionVerifier.verify``: one completion's verdict from its signature record,
signed for real by the simulator's ``SigningNode`` keys, checked against an attestation's
signers (the cache and the provider are stand-ins, so each path is reached on purpose).

Pinned: every fact of a verified verdict (signer, evidence, nonce, binding, served model), the
served-model fallback of a gateway signer, the request binding of a 2-part record over renamed
bytes, the unknown-signer re-attestation asked *by that key*, the telemetry result and latency
of each outcome, and that anything unexpected fails closed as ``verification.internal_error``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from types import SimpleNamespace
from typing import Any

from structlog.testing import capture_logs

from sidecar.errors import VerificationFailed, VerificationIncomplete
from sidecar.providers.contracts import SignerRules
from sidecar.proxy.attester import CachedAttestation
from sidecar.proxy.verdict import CompletionVerdict, CompletionVerifier
from sidecar.simulator.provider import SigningNode
from sidecar.telemetry import METRIC_PREFIX, Telemetry
from sidecar.verify.signature import AttestedSigner, RequestBinding, normalise_key

ALGO = "ecdsa"
MODEL = "zai-org/GLM-5.1-FP8"  # the model of tests/assets/near/cloud_report_gateway_and_model.json
APP_MODEL = "TEE/glm-5.1"
REQUEST = json.dumps({"model": APP_MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
RESPONSE = b'{"id":"chatcmpl-1","choices":[{"message":{"content":"hello"}}]}'
REQUEST_SHA = hashlib.sha256(REQUEST).hexdigest()
RESPONSE_SHA = hashlib.sha256(RESPONSE).hexdigest()
EVIDENCE, NONCE = "ee" * 32, "9a" * 32
RULES = SignerRules(unkinded_roles=frozenset({"model"}), accept_model_renamed=True)


def key(node: SigningNode) -> str:
    return normalise_key(node.address(ALGO), ALGO)


def attestation(*signers: tuple[SigningNode, str, str | None], evidence: str = EVIDENCE,
                canonical: str | None = MODEL) -> CachedAttestation:
    """A cached attestation whose report attests ``signers`` (node, role, model_name)."""
    attested = {key(node): AttestedSigner(key(node), ALGO, role, name)  # type: ignore[arg-type]
                for node, role, name in signers}
    report = SimpleNamespace(attested_signers=attested, evidence_sha256=evidence, nonce=NONCE)
    return CachedAttestation(report=report, body=b"{}", expires_at=1e12,  # type: ignore[arg-type]
                             model_name=canonical)


def signed(node: SigningNode, text: str, **extra: str) -> bytes:
    """A signature record as the provider's endpoint answers it."""
    return json.dumps({"text": text, "signature": node.sign(text, ALGO),
                       "signing_address": node.address(ALGO), "signing_algo": ALGO,
                       **extra}).encode()


class Upstream:
    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str, str]] = []

    async def fetch_signature(self, chat_id: str, model: str, algo: str) -> bytes:
        self.asked.append((chat_id, model, algo))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Cache:
    def __init__(self, current: CachedAttestation | Exception,
                 refreshed: CachedAttestation | Exception | None = None) -> None:
        self.current, self.refreshed = current, refreshed
        self.refreshes: list[tuple[str, str | None]] = []

    async def get(self, model: str) -> CachedAttestation:
        if isinstance(self.current, Exception):
            raise self.current
        return self.current

    async def refresh(self, model: str, signing_address: str | None = None) -> CachedAttestation:
        self.refreshes.append((model, signing_address))
        assert self.refreshed is not None, "no re-attestation expected"
        if isinstance(self.refreshed, Exception):
            raise self.refreshed
        return self.refreshed


def verify(upstream: Upstream, cache: Cache, *, rules: SignerRules = RULES,
           request: bytes = REQUEST, telemetry: Telemetry | None = None,
           **kwargs: Any) -> CompletionVerdict:
    verifier = CompletionVerifier(upstream, cache, ALGO, telemetry or Telemetry(),  # type: ignore[arg-type]
                                  rules)
    return asyncio.run(verifier.verify(
        model=APP_MODEL, chat_id="chatcmpl-1", request_body=request,
        request_sha256=hashlib.sha256(request).hexdigest(), response_sha256=RESPONSE_SHA,
        **kwargs))


def signature_metrics(telemetry: Telemetry) -> dict[str, float]:
    sample = telemetry.registry.get_sample_value
    counts = {result: sample(f"{METRIC_PREFIX}_verifications_total",
                             {"kind": "signature", "result": result}) or 0.0
              for result in ("pass", "fail", "incomplete")}
    latency = sample(f"{METRIC_PREFIX}_verification_latency_seconds_sum", {"kind": "signature"})
    return counts | {"seconds": latency or 0.0}


# -- verified -------------------------------------------------------------------------------------


def test_a_verified_verdict_carries_every_fact_it_established() -> None:
    node = SigningNode()
    record = signed(node, f"{MODEL}:{REQUEST_SHA}:{RESPONSE_SHA}")
    upstream, telemetry = Upstream(record), Telemetry()
    started = time.perf_counter()
    verdict = verify(upstream, Cache(attestation((node, "model", MODEL))), telemetry=telemetry,
                     e2ee="false")
    elapsed = time.perf_counter() - started
    assert upstream.asked == [("chatcmpl-1", APP_MODEL, ALGO)]
    assert (verdict.verified, verdict.failure, verdict.chat_id) == (True, None, "chatcmpl-1")
    assert (verdict.request_sha256, verdict.response_sha256) == (REQUEST_SHA, RESPONSE_SHA)
    assert verdict.signer == key(node)
    assert (verdict.evidence_sha256, verdict.nonce) == (EVIDENCE, NONCE)
    assert verdict.request_binding is RequestBinding.EXACT and not verdict.request_unbound
    assert verdict.served_model == MODEL
    assert verdict.record is not None and verdict.record.signature == json.loads(record)["signature"]
    assert (verdict.e2ee, verdict.e2ee_model_key) == ("false", None)
    metrics = signature_metrics(telemetry)
    assert (metrics["pass"], metrics["fail"], metrics["incomplete"]) == (1, 0, 0)
    assert 0 < metrics["seconds"] <= elapsed


def test_a_gateway_signer_serves_the_model_the_report_resolved() -> None:
    # A gateway's attestation names no model: the one it routes to is the report's.
    gateway = SigningNode()
    verdict = verify(Upstream(signed(gateway, f"{REQUEST_SHA}:{RESPONSE_SHA}",
                                     signature_kind="gateway")),
                     Cache(attestation((gateway, "gateway", None))))
    assert verdict.verified and verdict.served_model == MODEL


def test_the_served_model_is_the_one_the_signers_attestation_names() -> None:
    # A report whose model nodes name no model resolves none; a signer that names its model
    # (here a gateway's attestation that does) is what the verdict records as served.
    gateway = SigningNode()
    verdict = verify(Upstream(signed(gateway, f"{REQUEST_SHA}:{RESPONSE_SHA}",
                                     signature_kind="gateway")),
                     Cache(attestation((gateway, "gateway", MODEL), canonical=None)))
    assert verdict.verified and verdict.served_model == MODEL
    node = SigningNode()
    unnamed = verify(Upstream(signed(node, f"{REQUEST_SHA}:{RESPONSE_SHA}")),
                     Cache(attestation((node, "model", None), canonical=None)))
    assert unnamed.verified and unnamed.served_model is None


def test_a_two_part_record_over_the_bytes_renamed_to_the_attested_model() -> None:
    # A 2-part text names no model: the rename is found with the model the attestation names.
    node = SigningNode()
    renamed = REQUEST.replace(json.dumps(APP_MODEL).encode(), json.dumps(MODEL).encode())
    record = signed(node, f"{hashlib.sha256(renamed).hexdigest()}:{RESPONSE_SHA}")
    cache = Cache(attestation((node, "model", MODEL)))
    verdict = verify(Upstream(record), cache)
    assert verdict.verified and verdict.request_binding is RequestBinding.MODEL_RENAMED
    refused = verify(Upstream(record), cache,
                     rules=SignerRules(unkinded_roles=frozenset({"model"}),
                                       accept_model_renamed=False))
    assert not refused.verified and refused.failure is not None
    assert refused.failure.code == "signature.request_model_renamed"
    assert refused.request_unbound and refused.request_binding is RequestBinding.MODEL_RENAMED
    assert refused.request_binding_label() == "signature.request_model_renamed"


# -- failed ---------------------------------------------------------------------------------------


def test_a_request_hash_mismatch_is_unbound_and_counted_failed() -> None:
    node, telemetry = SigningNode(), Telemetry()
    record = signed(node, f"{MODEL}:{'00' * 32}:{RESPONSE_SHA}")
    verdict = verify(Upstream(record), Cache(attestation((node, "model", MODEL))),
                     telemetry=telemetry, e2ee="unavailable")
    assert not verdict.verified and verdict.failure is not None
    assert verdict.failure.code == "signature.request_hash_mismatch"
    assert verdict.request_unbound and verdict.request_binding is None
    assert verdict.request_binding_label() == "signature.request_hash_mismatch"
    # What the verdict knows of a failure: the record, but no signer, evidence or model.
    assert verdict.record is not None and verdict.record.text == json.loads(record)["text"]
    assert (verdict.signer, verdict.evidence_sha256, verdict.nonce, verdict.served_model) == (
        None, None, None, None)
    assert (verdict.chat_id, verdict.request_sha256, verdict.response_sha256, verdict.e2ee) == (
        "chatcmpl-1", REQUEST_SHA, RESPONSE_SHA, "unavailable")
    metrics = signature_metrics(telemetry)
    assert (metrics["pass"], metrics["fail"], metrics["incomplete"]) == (0, 1, 0)
    assert 0 < metrics["seconds"] < 60


def test_a_response_hash_mismatch_keeps_the_request_binding() -> None:
    node = SigningNode()
    verdict = verify(Upstream(signed(node, f"{MODEL}:{REQUEST_SHA}:{'00' * 32}")),
                     Cache(attestation((node, "model", MODEL))))
    assert verdict.failure is not None
    assert verdict.failure.code == "signature.response_hash_mismatch"
    assert not verdict.request_unbound and verdict.request_binding is RequestBinding.EXACT
    assert verdict.request_binding_label() == "exact"


def test_an_unavailable_signature_is_incomplete() -> None:
    telemetry = Telemetry()
    verdict = verify(Upstream(VerificationIncomplete("signature endpoint answered 503",
                                                     code="signature.fetch_failed")),
                     Cache(attestation()), telemetry=telemetry)
    assert verdict.failure is not None and verdict.failure.code == "signature.fetch_failed"
    assert verdict.record is None and verdict.request_binding_label() == "unchecked"
    metrics = signature_metrics(telemetry)
    assert (metrics["pass"], metrics["fail"], metrics["incomplete"]) == (0, 0, 1)


def test_anything_unexpected_fails_closed_as_an_internal_error() -> None:
    node = SigningNode()
    telemetry = Telemetry()
    with capture_logs() as logs:
        verdict = verify(Upstream(signed(node, f"{MODEL}:{REQUEST_SHA}:{RESPONSE_SHA}")),
                         Cache(RuntimeError("a bug with a secret in it")), telemetry=telemetry)
    # The bug is logged for the operator (with its traceback); the app only reads the class.
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("verification_internal_error", "error")]
    assert logs[0].get("exc_info") is True
    assert not verdict.verified and verdict.failure is not None
    assert verdict.failure.code == "verification.internal_error"
    assert verdict.failure.message == "verification raised RuntimeError"
    assert verdict.record is not None  # fetched and parsed before the fault
    assert signature_metrics(telemetry)["fail"] == 1


def test_bad_evidence_is_a_verdict_not_a_logged_error() -> None:
    node = SigningNode()
    with capture_logs() as logs:
        verdict = verify(Upstream(signed(node, f"{MODEL}:{REQUEST_SHA}:{'00' * 32}")),
                         Cache(attestation((node, "model", MODEL))))
    assert verdict.failure is not None and logs == []


# -- a signer the cache lacks ---------------------------------------------------------------------


def test_an_unknown_signer_is_reattested_by_its_own_key() -> None:
    old, new = SigningNode(), SigningNode()
    record = signed(new, f"{MODEL}:{REQUEST_SHA}:{RESPONSE_SHA}")
    cache = Cache(attestation((old, "model", MODEL)),
                  attestation((old, "model", MODEL), (new, "model", MODEL), evidence="ff" * 32))
    verdict = verify(Upstream(record), cache)
    assert cache.refreshes == [(APP_MODEL, new.address(ALGO))]
    assert verdict.verified and verdict.signer == key(new)
    assert verdict.evidence_sha256 == "ff" * 32  # the attestation that named the new key


def test_an_unknown_signer_stays_unattested_when_reattestation_fails() -> None:
    old, new = SigningNode(), SigningNode()
    cache = Cache(attestation((old, "model", MODEL)),
                  VerificationFailed("quote invalid", code="tdx.quote_invalid"))
    verdict = verify(Upstream(signed(new, f"{MODEL}:{REQUEST_SHA}:{RESPONSE_SHA}")), cache)
    assert len(cache.refreshes) == 1
    assert verdict.failure is not None
    assert verdict.failure.code == "signature.address_not_attested"


def test_a_signature_that_does_not_verify_triggers_no_reattestation() -> None:
    node, other = SigningNode(), SigningNode()
    text = f"{MODEL}:{REQUEST_SHA}:{RESPONSE_SHA}"
    forged = json.dumps({"text": text, "signature": other.sign(text + "x", ALGO),
                         "signing_address": other.address(ALGO), "signing_algo": ALGO}).encode()
    cache = Cache(attestation((node, "model", MODEL)))
    verdict = verify(Upstream(forged), cache)
    assert cache.refreshes == [] and not verdict.verified


# -- end-to-end encryption: only the node sealed to -----------------------------------------------


def test_an_e2ee_exchange_must_be_signed_by_its_recipient() -> None:
    node, other = SigningNode(), SigningNode()
    cache = Cache(attestation((node, "model", MODEL), (other, "model", MODEL)))
    record = signed(node, f"{MODEL}:{REQUEST_SHA}:{RESPONSE_SHA}", signature_kind="provider_tee")
    genuine = verify(Upstream(record), cache, e2ee_recipient=key(node), e2ee="true",
                     e2ee_model_key="ab" * 32)
    assert genuine.verified and (genuine.e2ee, genuine.e2ee_model_key) == ("true", "ab" * 32)
    refused = verify(Upstream(record), cache, e2ee_recipient=key(other), e2ee="true",
                     e2ee_model_key="ab" * 32)
    assert refused.failure is not None and refused.failure.code == "e2ee.signer_not_recipient"
    assert (refused.e2ee, refused.e2ee_model_key) == ("true", "ab" * 32)
    # Without a recipient (no E2EE) the same record by the other node verifies.
    assert verify(Upstream(record), cache).verified
