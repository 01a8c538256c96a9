"""Property-based tests of every parser of untrusted input: nothing raises but ``SidecarError``.

Parsers under test, each fed what a hostile gateway, path or local client could send: SSE
framing (``SseFramer``, ``chat_id_of``), attestation JSON (``parse_attestation_document`` and the
whole ``verify_attestation`` recipe on mutated genuine reports), signature JSON
(``parse_signature_record``), the signature check itself with arbitrary hex fields
(``verify_completion_signature``, ``recover_eip191_signer``, ``verify_ed25519``), the REPORTDATA
binding with arbitrary addresses, GPU evidence (``check_gpu_payload_nonce``, ``token_kids``,
``verify_nras_result`` with base64/JWT garbage), the event log and info parsers, and the TDX
quote wrapper (``verify_tdx_quote``, ``parse_quote_measurements``) on random and mutated quotes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.config import TrustAnchors
from sidecar.errors import SidecarError, VerificationFailed
from sidecar.providers.wire import (
    SignatureRecordWire,
    _plain_signature_record,
    parse_attestation_document,
    parse_signature_record,
)
from sidecar.simulator.nras import SIMULATOR_NRAS_ISSUER
from sidecar.verify.binding import check_report_data_binding
from sidecar.verify.signature import (
    AttestedSigner,
    CompletionSignature,
    recover_eip191_signer,
    top_level_model_span,
    verify_completion_signature,
    verify_ed25519,
)
from sidecar.verify.sse import SseFramer, chat_id_of

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW_FUZZ = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ASSETS = Path(__file__).parent / "assets" / "tdx"
DEEP = b"[" * 100_000 + b"]" * 100_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25)
hexish = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEFx ", max_size=140),
    st.binary(max_size=70).map(lambda b: b.hex()),
    st.binary(max_size=70).map(lambda b: "0x" + b.hex()),
    st.text(max_size=40))
base64ish = st.one_of(st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
                      st.text(alphabet="ABCxyz019+/=-_.", max_size=80), st.text(max_size=20))


def only_sidecar_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a ``SidecarError`` is an answer, any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except SidecarError:
        return None


# -- SSE framing --------------------------------------------------------------------------------

sse_pieces = st.lists(st.one_of(
    st.sampled_from([b"data: ", b"\n\n", b"\r\n\r\n", b"\n", b"\r\n", b"data: [DONE]\n\n",
                     b'data: {"id": "chatcmpl-1"}\n\n', b": comment\n\n", b"event: x\n",
                     b'{"id": ', b'"x"}', b"\xff"]),
    st.binary(max_size=40)), max_size=30).map(b"".join)


@FUZZ
@given(stream=sse_pieces, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_sse_framer_is_byte_exact_and_chunking_independent(stream: bytes, cuts: list[int]) -> None:
    def frame(chunks: list[bytes]) -> tuple[list[bytes], bytes, str | None] | str:
        framer = SseFramer()
        events: list[bytes] = []
        try:
            for chunk in chunks:
                events += [e.raw for e in framer.feed(chunk)]
        except VerificationFailed as exc:
            return exc.code
        return events, framer.pending, framer.chat_id

    whole = frame([stream])
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    split = frame([stream[a:b] for a, b in zip(points, points[1:])])
    if isinstance(whole, tuple) and isinstance(split, tuple):
        # Every byte is in exactly one event or still pending, in order: nothing altered.
        assert b"".join(whole[0]) + whole[1] == stream
        assert whole == split
    # Errors may come at a different chunk, but only as the sidecar's own errors (code strings).


@FUZZ
@given(payload=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                         st.dictionaries(st.just("id"), json_values).map(
                             lambda v: json.dumps(v).encode())))
def test_chat_id_of_raises_only_verification_failed(payload: bytes) -> None:
    chat_id = only_sidecar_errors(chat_id_of, payload)
    assert chat_id is None or (isinstance(chat_id, str) and 0 < len(chat_id) <= 256)


def test_chat_id_of_deeply_nested_json() -> None:
    only_sidecar_errors(chat_id_of, DEEP)
    only_sidecar_errors(SseFramer().feed, b"data: " + DEEP + b"\n\n")


# -- attestation JSON ---------------------------------------------------------------------------

node_fields = st.fixed_dictionaries({}, optional={
    "signing_address": hexish, "signing_algo": st.sampled_from(["ecdsa", "ed25519", "rsa", ""]),
    "intel_quote": hexish, "nvidia_payload": st.one_of(st.text(max_size=50), json_values),
    "event_log": st.one_of(json_values, st.text(max_size=50)), "info": json_values,
    "nonce": hexish, "request_nonce": hexish, "report_data": hexish,
    "tls_cert_fingerprint": hexish, "compose_manager_attestation": json_values,
    "model_name": st.text(max_size=20)})
reports = st.one_of(
    node_fields,
    st.builds(lambda top, nodes: {**top, "all_attestations": nodes}, node_fields,
              st.lists(node_fields, max_size=3)),
    st.builds(lambda gw, nodes: {"gateway_attestation": gw, "model_attestations": nodes},
              st.one_of(st.none(), node_fields), st.one_of(st.lists(node_fields, max_size=3),
                                                           json_values)),
    json_values)


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), reports.map(lambda r: json.dumps(r).encode())))
def test_parse_attestation_document_raises_only_sidecar_errors(body: bytes) -> None:
    document = only_sidecar_errors(parse_attestation_document, body)
    assert document is None or len(document.nodes) >= 1


def test_parse_attestation_document_deeply_nested_json() -> None:
    only_sidecar_errors(parse_attestation_document, DEEP)


FUZZ_NOW = 1_760_000_000
FUZZ_MODEL = "TEE/simulated-llama-3.3-70b"


def _genuine_report() -> tuple[dict[str, Any], str, Any]:
    """A simulator report for a fresh nonce and the evidence the I/O layer would gather for it:
    the quote's collateral and NRAS's signed answer to its GPU payload, so that the verifier gets
    past the collateral and NRAS steps and every later check runs on the mutated report."""
    from sidecar.simulator.evidence import SimulatedEvidence
    from sidecar.simulator.provider import Faults, SigningNode
    from sidecar.trust import load_anchors
    from sidecar.verify.attestation import NodeEvidence

    nonce = secrets.token_hex(32)
    simulated = SimulatedEvidence()
    report = simulated([SigningNode()], "ecdsa", nonce, bytes.fromhex(nonce), Faults())
    document = parse_attestation_document(json.dumps(report).encode())
    (claim,) = document.nodes
    payload = claim.wire.nvidia_payload_text()
    assert payload is not None
    evidence = NodeEvidence(
        collateral_json=simulated.authority.collateral_json(FUZZ_NOW),
        nras_response=simulated.nras.attest(payload, FUZZ_NOW),
        jwks=load_anchors(TrustAnchors.SIMULATOR).pinned_jwks)
    return report, nonce, evidence


GENUINE_REPORT, GENUINE_NONCE, GENUINE_EVIDENCE = _genuine_report()


def _mutate(value: Any, path: list[int], replacement: Any) -> Any:
    """Replace the node that ``path`` walks to (indices into dict items / list elements)."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return replacement
    index = path[0] % len(value)
    if isinstance(value, dict):
        key = list(value)[index]
        return {**value, key: _mutate(value[key], path[1:], replacement)}
    return [*value[:index], _mutate(value[index], path[1:], replacement), *value[index + 1:]]


def _attest(report: dict[str, Any]) -> Any:
    """Parse and verify ``report`` against the genuine evidence; ``None`` if it does not parse.

    ``verify_attestation`` must not raise on any report: a verifier that raises unexpectedly is
    turned into an ``attestation.internal_error`` check (fail closed), which this returns for the
    caller to refuse, since it would hide a crash behind a refusal.
    """
    from sidecar.trust import load_anchors
    from sidecar.verify.attestation import verify_attestation
    from sidecar.policy_file import load_policy

    document = only_sidecar_errors(parse_attestation_document, json.dumps(report).encode())
    if document is None:
        return None
    anchors = load_anchors(TrustAnchors.SIMULATOR)
    return verify_attestation(
        document, model=FUZZ_MODEL, nonce=GENUINE_NONCE,
        evidence={n.label: GENUINE_EVIDENCE for n in document.nodes}, roots=anchors.roots,
        policy=load_policy(None).for_model(FUZZ_MODEL), now=FUZZ_NOW)


def _internal_errors(report: Any) -> list[str]:
    return [f"{check.name}: {check.detail}" for node in report.nodes for check in node.checks
            if (check.code or "").endswith("internal_error")]


def test_the_genuine_report_verifies_so_the_fuzz_goes_deep() -> None:
    report = _attest(GENUINE_REPORT)
    assert report.verdict == "verified", report.failure
    names = {check.name for node in report.nodes for check in node.checks}
    # Past the collateral and NRAS: the quote, the GPU tokens and the binding all ran.
    assert {"tdx.quote_signature", "tdx.tcb_status", "gpu.token.signature", "gpu.submod_digest",
            "binding.signing_key", "binding.nonce", "eventlog.rtmr3_replay"} <= names, sorted(names)


@SLOW_FUZZ
@given(path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=6),
       replacement=st.one_of(json_values, hexish, base64ish))
def test_verify_attestation_on_mutated_genuine_reports(path: list[int], replacement: Any) -> None:
    mutated = _mutate(GENUINE_REPORT, path, replacement)
    report = _attest(mutated)
    if report is None:
        return
    assert _internal_errors(report) == []
    if mutated != GENUINE_REPORT:
        # A changed report may still verify only if the change is outside what is attested
        # (e.g. an ignored field); it never yields a key the genuine report did not attest.
        genuine = _attest(GENUINE_REPORT)
        assert set(report.attested_keys) <= set(genuine.attested_keys)


# -- signature JSON and the signature check -----------------------------------------------------

records = st.fixed_dictionaries({}, optional={
    "text": st.one_of(st.text(max_size=200), json_values), "signature": hexish,
    "signing_address": hexish, "signing_algo": st.one_of(st.text(max_size=10), json_values),
    "signature_kind": st.one_of(st.sampled_from(["gateway", "provider_tee"]), json_values),
    "error_code": st.one_of(st.text(max_size=80), json_values)})


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), records.map(lambda r: json.dumps(r).encode()),
                      json_values.map(lambda v: json.dumps(v).encode())))
@example(body=DEEP)
def test_parse_signature_record_raises_only_sidecar_errors(body: bytes) -> None:
    only_sidecar_errors(parse_signature_record, body)


@FUZZ
@given(record=records | json_values)
@example(record={"text": "a:" + "0" * 64, "signature": "0x1", "signing_address": "0x" + "a" * 40})
@example(record={"text": "t", "signature": "s", "signing_address": "b" * 64,
                 "signing_algo": "ed25519", "signature_kind": "gateway"})
def test_the_plain_signature_record_path_accepts_only_what_pydantic_accepts(record: Any) -> None:
    """``parse_signature_record``'s hand-checked fast path (bench/profile.py: pydantic was on
    every completion) builds exactly the record ``model_validate`` builds, and nothing else."""
    fast = _plain_signature_record(record)
    if fast is None:
        return
    validated = SignatureRecordWire.model_validate(record)
    assert fast.model_dump() == validated.model_dump()
    assert type(fast.signature_kind) is type(validated.signature_kind)


texts = st.one_of(
    st.text(max_size=300),
    st.builds(lambda m, a, b: f"{m}:{a.hex()}:{b.hex()}", st.text(max_size=40),
              st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)),
    st.builds(lambda a, b: f"{a}:{b}", hexish, hexish),
    st.builds(lambda a, b: f"{a.hex()}:{b.hex()}", st.binary(min_size=32, max_size=32),
              st.binary(min_size=32, max_size=32)))


@FUZZ
@given(text=texts, signature=hexish, address=hexish,
       algo=st.sampled_from(["ecdsa", "ed25519", "", "rsa", "ECDSA"]),
       keys=st.lists(hexish, max_size=3))
# compare_digest refuses non-ASCII str: a 3-part text hands the model to a hash comparison.
@example(text=f"\u00a1:{'0' * 64}:{'0' * 64}", signature="", address="", algo="ecdsa", keys=[])
def test_verify_completion_signature_never_raises(text: str, signature: str, address: str,
                                                  algo: str, keys: list[str]) -> None:
    signed = CompletionSignature(text, signature, address, algo)
    halves = text.split(":") + ["", ""]
    attested = {key: AttestedSigner(key, algo, "model") for key in keys}
    report = verify_completion_signature(signed, request_sha256=halves[0],
                                         response_sha256=halves[1], attested=attested,
                                         expected_model=None, unkinded_roles={"model"})
    # Random bytes never verify against random keys.
    assert not report.ok or report.signer in keys


@FUZZ
@given(text=st.binary(max_size=100), signature=hexish, key=hexish)
def test_signature_primitives_raise_only_verification_failed(text: bytes, signature: str,
                                                             key: str) -> None:
    only_sidecar_errors(recover_eip191_signer, text, signature)
    only_sidecar_errors(verify_ed25519, text, signature, key)


@FUZZ
@given(report_data=st.binary(max_size=80), address=hexish,
       algo=st.sampled_from(["ecdsa", "ed25519", "other"]), nonce=st.binary(max_size=40),
       fingerprint=st.one_of(st.none(), st.binary(max_size=40)))
def test_report_data_binding_never_raises(report_data: bytes, address: str, algo: str,
                                          nonce: bytes, fingerprint: bytes | None) -> None:
    checks = check_report_data_binding(report_data, signing_address=address, algo=algo,
                                       nonce=nonce, tls_fingerprint=fingerprint)
    assert checks and all(c.code or c.ok for c in checks)


# -- GPU evidence: hex nonces, base64 evidence, JWT lists -----------------------------------------

gpu_payloads = st.one_of(
    st.text(max_size=100), json_values.map(json.dumps),
    st.fixed_dictionaries({}, optional={
        "nonce": hexish, "arch": st.text(max_size=10),
        "evidence_list": st.lists(st.fixed_dictionaries(
            {}, optional={"evidence": base64ish, "certificate": base64ish}), max_size=3)}
    ).map(json.dumps))
jwtish = st.one_of(
    st.text(max_size=60),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", base64ish, base64ish, base64ish),
    st.builds(lambda claims: "eyJhbGciOiJFUzM4NCJ9." + base64.urlsafe_b64encode(
        json.dumps(claims).encode()).decode().rstrip("=") + ".c2ln", json_values))
nras_answers = st.one_of(
    st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda overall, gpus: json.dumps([["JWT", overall], gpus]).encode(), jwtish,
              st.dictionaries(st.text(max_size=8), jwtish, max_size=3)))


@FUZZ
@given(payload=gpu_payloads, nonce=hexish)
def test_gpu_payload_nonce_check_never_raises(payload: str, nonce: str) -> None:
    from sidecar.verify.nvidia import check_gpu_payload_nonce

    only_sidecar_errors(check_gpu_payload_nonce, payload, nonce)


@FUZZ
@given(answer=nras_answers, nonce=hexish)
def test_nras_answer_parsers_never_raise(answer: bytes, nonce: str) -> None:
    from sidecar.trust import load_anchors
    from sidecar.verify.nvidia import GpuPolicy, token_kids, verify_nras_result

    only_sidecar_errors(token_kids, answer)
    # The enum, not the string "simulator": a plain string silently selected the production
    # anchors, whose JWKS is None, so every token met an empty key set.
    jwks = load_anchors(TrustAnchors.SIMULATOR).pinned_jwks
    assert jwks and jwks["keys"]
    report = only_sidecar_errors(verify_nras_result, answer, expected_nonce=nonce, jwks=jwks,
                                 expected_issuer="https://nras.attestation.nvidia.com",
                                 now=1_760_000_000, policy=GpuPolicy())
    assert report is None or not report.ok


@FUZZ
@given(raw=st.one_of(json_values, st.text(max_size=100), json_values.map(json.dumps),
                     st.lists(st.fixed_dictionaries({}, optional={
                         "imr": json_values, "event_type": json_values, "digest": hexish,
                         "event": st.text(max_size=20), "event_payload": hexish}), max_size=4)))
def test_event_log_and_info_parsers_raise_only_sidecar_errors(raw: Any) -> None:
    from sidecar.verify.compose import parse_info
    from sidecar.verify.eventlog import parse_event_log

    only_sidecar_errors(parse_event_log, raw)
    only_sidecar_errors(parse_info, raw)


# -- the TDX quote wrapper ------------------------------------------------------------------------

REAL_QUOTE = (ASSETS / "tdx_quote").read_bytes()
REAL_COLLATERAL = (ASSETS / "tdx_quote_collateral.json").read_text()
INTEL_ROOT = (Path(__file__).parent.parent / "sidecar" / "anchors" /
              "intel_sgx_root_ca.der").read_bytes()

quotes = st.one_of(
    st.binary(max_size=700),
    st.builds(lambda cut: REAL_QUOTE[:cut], st.integers(min_value=0, max_value=len(REAL_QUOTE))),
    st.builds(lambda pos, xor: REAL_QUOTE[:pos] + bytes([REAL_QUOTE[pos] ^ xor]) +
              REAL_QUOTE[pos + 1:], st.integers(min_value=0, max_value=len(REAL_QUOTE) - 1),
              st.integers(min_value=1, max_value=255)),
    st.builds(lambda extra: REAL_QUOTE + extra, st.binary(min_size=1, max_size=64)))
collaterals = st.one_of(st.none(), st.just(REAL_COLLATERAL), st.text(max_size=100),
                        json_values.map(json.dumps),
                        st.builds(lambda pos: REAL_COLLATERAL[:pos],
                                  st.integers(min_value=0, max_value=len(REAL_COLLATERAL))))


@SLOW_FUZZ
@given(quote=quotes, collateral=collaterals)
def test_tdx_quote_wrapper_never_raises_on_any_input(quote: bytes, collateral: str | None) -> None:
    from sidecar.verify.tdx import parse_quote_measurements, verify_tdx_quote

    report = verify_tdx_quote(quote, collateral, root_ca_der=INTEL_ROOT, now=1750331763)
    if quote.rstrip(b"\0") != REAL_QUOTE.rstrip(b"\0"):  # zero padding after the data is legal
        assert not report.ok
    only_sidecar_errors(report.raise_for_failure)
    parse_quote_measurements(quote)


request_bodies = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.sampled_from(["model", "messages", "x"]), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.builds(lambda m, ws: f'{{{ws}"model"{ws}:{ws}{json.dumps(m)}{ws}}}'.encode(),
              st.text(max_size=20), st.sampled_from(["", " ", "\n\t"])))


@FUZZ
@given(body=request_bodies)
@example(body=DEEP)
@example(body=b'{"model":"a","x":' + DEEP + b"}")
def test_top_level_model_span_is_the_model_token_or_none(body: bytes) -> None:
    span = top_level_model_span(body)
    if span is not None:
        obj = json.loads(body)
        assert json.loads(body[span[0]:span[1]]) == obj["model"]


@FUZZ
@given(body=request_bodies, model=st.text(max_size=30))
def test_rename_search_never_raises(body: bytes, model: str) -> None:
    from sidecar.simulator.provider import SigningNode

    node = SigningNode()
    renamed = json.dumps({"model": model}).encode()
    text = f"{model or 'm'}:{hashlib.sha256(renamed).hexdigest()}:{'0' * 64}"
    report = verify_completion_signature(
        CompletionSignature(text, "0x" + "11" * 65, node.address("ecdsa")),
        request_sha256=hashlib.sha256(body).hexdigest(), response_sha256="0" * 64, attested={},
        expected_model=model, unkinded_roles={"model"}, request_body=body,
        accept_model_renamed=True)
    assert not report.ok


@FUZZ
@given(path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=3),
       replacement=st.one_of(json_values, jwtish, base64ish))
def test_nras_verifier_on_mutated_genuine_answers(path: list[int], replacement: Any) -> None:
    from sidecar.verify.nvidia import GpuPolicy, verify_nras_result

    genuine = list(GENUINE_EVIDENCE.nras_response)
    mutated = _mutate(genuine, path, replacement)
    report = verify_nras_result(mutated, expected_nonce=GENUINE_NONCE, jwks=GENUINE_EVIDENCE.jwks,
                                expected_issuer=SIMULATOR_NRAS_ISSUER, now=FUZZ_NOW,
                                policy=GpuPolicy())
    assert report.ok is (mutated == genuine)
    assert all(check.ok or check.code for check in report.all_checks())


def test_the_genuine_nras_answer_verifies() -> None:
    from sidecar.verify.nvidia import GpuPolicy, verify_nras_result

    report = verify_nras_result(list(GENUINE_EVIDENCE.nras_response), expected_nonce=GENUINE_NONCE,
                                jwks=GENUINE_EVIDENCE.jwks, expected_issuer=SIMULATOR_NRAS_ISSUER,
                                now=FUZZ_NOW, policy=GpuPolicy())
    assert report.ok, report.failures
