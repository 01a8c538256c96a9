"""A real NEAR AI Cloud report (gateway + model node + compose-manager), offline (spec 0.4).

The report (tests/assets/near/README.md) came without collateral or NRAS answer, so at best it is
``incomplete``; every check that can be decided without them must pass, and copies tampered in
memory, one thing at a time, must fail with that thing's code. The quotes stay genuine: offline
the quote bodies are parsed (not verified), which is exactly what these checks must survive.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.config import TrustAnchors
from sidecar.providers.wire import compose_manager_label, parse_attestation_document
from sidecar.trust import load_anchors
from sidecar.archive import decode_context, encode_context
from sidecar.verify.attestation import (
    AttestationReport,
    NodeEvidence,
    verify_attestation,
)
from sidecar.verify.checks import Status
from sidecar.policy_file import load_policy
from sidecar.verify.policy import GATEWAY_DEFAULT, build_model_policy

ASSETS = Path(__file__).parent / "assets"
REPORT_FILE = ASSETS / "near" / "cloud_report_gateway_and_model.json"
RAW = REPORT_FILE.read_bytes()
NONCE = "9a01356cb451dc2c3c0ce9a195245a0be984a3f73617f55f87913fc2f059cba7"
MODEL = "zai-org/GLM-5.1-FP8"
ROOTS = load_anchors(TrustAnchors.PRODUCTION).roots
# The report's own era (the compose-manager's last action is of 2026-05-22).
NOW = 1779500000
# Undecided without collateral and NRAS; nothing else may be undecided.
OFFLINE_UNDECIDED = {"tdx.collateral_missing", "gpu.nras_unavailable", "policy.evidence_undecided"}


def verify(report: dict[str, Any] | None = None, *, nonce: str = NONCE,
           policy: Any = None, gateway_policy: Any = None) -> AttestationReport:
    body = RAW if report is None else json.dumps(report).encode()
    document = parse_attestation_document(body)
    return verify_attestation(document, model=MODEL, nonce=nonce, evidence={}, roots=ROOTS,
                              policy=policy or build_model_policy("*"), now=NOW,
                              gateway_policy=gateway_policy)


def tampered(edit: Callable[[dict[str, Any]], None]) -> AttestationReport:
    report = json.loads(RAW)
    edit(report)
    return verify(report)


def model_entry(report: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = report["model_attestations"][0]
    return entry


def cma(report: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = model_entry(report)["compose_manager_attestation"]
    return found


def failures(report: AttestationReport) -> dict[str, str | None]:
    return {c.name: c.code for n in report.nodes for c in n.checks if c.status is Status.FAIL}


def assert_only_failure(report: AttestationReport, code: str) -> None:
    found = failures(report)
    assert found and set(found.values()) == {code}, found
    assert report.verdict == "failed"


def sorted_actions_hash(actions: Any) -> str:
    text = json.dumps(actions, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# -- the genuine report ----------------------------------------------------------------------


def test_asset_is_the_shared_sample_unmodified() -> None:
    readme = (ASSETS / "near" / "README.md").read_text()
    assert hashlib.sha256(RAW).hexdigest() in readme


def test_real_report_is_incomplete_with_every_decidable_check_passing() -> None:
    report = verify()
    assert report.verdict == "incomplete"
    assert [(n.label, n.role) for n in report.nodes] == [("gateway", "gateway"),
                                                         ("model-0", "model")]
    for node in report.nodes:
        for check in node.checks:
            assert check.status is not Status.FAIL, check
            if check.status is Status.INCOMPLETE:
                assert check.code in OFFLINE_UNDECIDED, check
    model = report.nodes[1]
    assert model.model_name == MODEL
    passed = {c.name for c in model.checks if c.status is Status.PASS}
    assert {
        "tdx.td_attributes", "binding.signing_key", "binding.nonce",
        "binding.nonce_echo.request_nonce", "binding.public_key",
        "compose_manager.tdx.quote_format", "compose_manager.tdx.td_attributes",
        "compose_manager.report_data", "compose_manager.nonce_echo",
        "compose_manager.binding.compose", "compose_manager.eventlog.rtmr3_replay",
        "compose_manager.eventlog.event_digests", "binding.compose_manager_actions",
        "eventlog.rtmr3_replay", "binding.compose", "gpu.payload_nonce",
    } <= passed
    undecided = {c.name for c in model.checks if c.status is Status.INCOMPLETE}
    assert "compose_manager.tdx.collateral" in undecided
    # Undecided is never attested: no key may sign.
    assert report.attested_signers == {}


def test_model_entry_has_no_report_data_and_the_json_copy_is_never_read() -> None:
    report = json.loads(RAW)
    assert "report_data" not in model_entry(report)
    # A lying copy changes nothing: REPORTDATA comes from the quote only.
    report["gateway_attestation"]["report_data"] = "00" * 64
    model_entry(report)["report_data"] = "11" * 64
    cma(report)["report_data"] = "22" * 64
    assert not failures(verify(report))


@pytest.mark.parametrize("layer", ["gateway", "model"])
def test_event_log_as_string_or_list_on_either_layer(layer: str) -> None:
    def flip(report: dict[str, Any]) -> None:
        node = report["gateway_attestation"] if layer == "gateway" else model_entry(report)
        log = node["event_log"]
        node["event_log"] = json.loads(log) if isinstance(log, str) else json.dumps(log)

    report = tampered(flip)
    assert report.verdict == "incomplete" and not failures(report)


@pytest.mark.parametrize("layer", ["gateway", "model"])
def test_tcb_info_as_object_or_json_string(layer: str) -> None:
    def as_string(report: dict[str, Any]) -> None:
        node = report["gateway_attestation"] if layer == "gateway" else model_entry(report)
        node["info"]["tcb_info"] = json.dumps(node["info"]["tcb_info"])

    report = tampered(as_string)
    assert report.verdict == "incomplete" and not failures(report)


# -- nonce echoes ----------------------------------------------------------------------------


def test_wrong_request_nonce_echo_fails() -> None:
    report = tampered(lambda r: model_entry(r).update(request_nonce="00" * 32))
    assert_only_failure(report, "binding.nonce_mismatch")
    assert "binding.nonce_echo.request_nonce" in failures(report)


def test_one_right_echo_does_not_excuse_a_wrong_one() -> None:
    # request_nonce is right; a second echo, `nonce`, names another nonce.
    report = tampered(lambda r: r["gateway_attestation"].update(nonce="ab" * 32))
    assert_only_failure(report, "binding.nonce_mismatch")
    assert set(failures(report)) == {"binding.nonce_echo.nonce"}


def test_wrong_compose_manager_nonce_echo_fails() -> None:
    report = tampered(lambda r: cma(r).update(nonce="00" * 32))
    assert_only_failure(report, "binding.nonce_mismatch")
    assert set(failures(report)) == {"compose_manager.nonce_echo"}


def test_report_for_another_nonce_fails_everywhere() -> None:
    report = verify(nonce="00" * 32)
    codes = failures(report)
    assert {"binding.nonce", "binding.nonce_echo.request_nonce",
            "compose_manager.report_data", "compose_manager.nonce_echo"} <= set(codes)


# -- signing_public_key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "11" * 64,  # a well-formed key of another address
        "04" + "11" * 64,  # the same, SEC1-prefixed
        "05" + "2a1c47aad08a4f47dcb67134d77b83d8a1d5c895e37e959189249e819c393928"
               "9d8c59acb07d262db3ca946d52c51ae079fde6708cb0af7e25a57d35c8e0ac30",  # not 04
        "2a1c47aad08a4f47dcb67134d77b83d8a1d5c895e37e959189249e819c393928",  # truncated
        "not hex",
    ],
    ids=["other-key", "other-key-with-04", "wrong-prefix", "truncated", "not-hex"],
)
def test_public_key_of_another_address_fails(key: str) -> None:
    report = tampered(lambda r: model_entry(r).update(signing_public_key=key))
    assert_only_failure(report, "binding.public_key_mismatch")


def test_public_key_with_its_sec1_prefix_is_the_same_key() -> None:
    """Phala's ACI gateway serves the ecdsa key with its 04 prefix (private-ai-gateway
    handlers.rs); it is the same point, so it binds the same address."""
    from sidecar.verify.binding import check_public_key_binding

    entry = model_entry(json.loads(RAW))
    check = check_public_key_binding("04" + entry["signing_public_key"],
                                     signing_address=entry["signing_address"], algo="ecdsa")
    assert check.ok, check.detail


def test_ed25519_public_key_must_equal_the_address() -> None:
    from sidecar.verify.binding import check_public_key_binding

    key = "ab" * 32
    assert check_public_key_binding(key, signing_address=key, algo="ed25519").ok
    check = check_public_key_binding("cd" * 32, signing_address=key, algo="ed25519")
    assert check.code == "binding.public_key_mismatch"


# -- compose-manager -------------------------------------------------------------------------


def test_tampered_actions_fail() -> None:
    def edit(report: dict[str, Any]) -> None:
        cma(report)["actions"][1]["tag"] = "v6.6.6"

    report = tampered(edit)
    assert_only_failure(report, "binding.actions_hash_mismatch")


def test_actions_with_a_matching_hash_the_quote_does_not_bind_fail() -> None:
    # The attacker recomputes actions_hash for his actions: the quote's REPORTDATA still binds
    # the old hash, and the actions are then not even looked at.
    def edit(report: dict[str, Any]) -> None:
        c = cma(report)
        c["actions"] = c["actions"][:-1]
        c["actions_hash"] = sorted_actions_hash(c["actions"])

    report = tampered(edit)
    assert_only_failure(report, "compose_manager.report_data_mismatch")
    names = {c.name for n in report.nodes for c in n.checks}
    assert "binding.compose_manager_actions" not in names


def test_compose_manager_event_log_tampered_fails() -> None:
    def edit(report: dict[str, Any]) -> None:
        log = json.loads(cma(report)["event_log"])
        last = max(i for i, e in enumerate(log) if e["imr"] == 3)
        del log[last]
        cma(report)["event_log"] = json.dumps(log)

    report = tampered(edit)
    assert_only_failure(report, "measurement.rtmr3_mismatch")
    assert set(failures(report)) == {"compose_manager.eventlog.rtmr3_replay"}


def test_compose_manager_without_event_log_fails() -> None:
    report = tampered(lambda r: cma(r).pop("event_log"))
    assert failures(report)["compose_manager.eventlog.rtmr3_replay"] == "measurement.rtmr3_mismatch"


def _flip_quote_byte(quote_hex: str, body_offset: int, mask: int) -> str:
    quote = bytearray(bytes.fromhex(quote_hex))
    quote[48 + body_offset] ^= mask
    return bytes(quote).hex()


def test_compose_manager_quote_of_another_compose_fails() -> None:
    # mr_config_id sits at body offset 184 (after MRTD at 136); offline the quote is parsed, and
    # its compose binding must hold on its own.
    report = tampered(lambda r: cma(r).update(quote=_flip_quote_byte(cma(r)["quote"], 190, 1)))
    assert_only_failure(report, "binding.compose_mismatch")
    assert set(failures(report)) == {"compose_manager.binding.compose"}


def test_compose_manager_without_quote_fails() -> None:
    report = tampered(lambda r: cma(r).pop("quote"))
    assert_only_failure(report, "tdx.quote_missing")


# -- DEBUG TDs -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["gateway", "model", "compose-manager"])
def test_debug_td_fails_offline(where: str) -> None:
    def edit(report: dict[str, Any]) -> None:
        if where == "compose-manager":
            cma(report)["quote"] = _flip_quote_byte(cma(report)["quote"], 120, 1)
            return
        node = report["gateway_attestation"] if where == "gateway" else model_entry(report)
        node["intel_quote"] = _flip_quote_byte(node["intel_quote"], 120, 1)

    report = tampered(edit)
    assert_only_failure(report, "tdx.debug_enabled")


# -- the gateway's policy --------------------------------------------------------------------


def test_model_pins_never_apply_to_the_gateway(tmp_path: Path) -> None:
    model_mrtd = verify().nodes[1].measurements["mrtd"]
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(f'[models."zai-org/*"]\n[[models."zai-org/*".measurements]]\n'
                           f'mrtd = ["{model_mrtd}"]\n')
    policies = load_policy(policy_file)
    report = verify(policy=policies.for_model(MODEL), gateway_policy=policies.gateway)
    assert not failures(report)
    # The same pin as the gateway's own entry: its MRTD differs, so the gateway fails it.
    policy_file.write_text(f'[[gateway.measurements]]\nmrtd = ["{model_mrtd}"]\n')
    policies = load_policy(policy_file)
    report = verify(policy=policies.for_model(MODEL), gateway_policy=policies.gateway)
    assert failures(report) == {"policy.mrtd": "policy.mrtd_not_allowed"}
    assert report.nodes[0].status is Status.FAIL and report.nodes[1].status is Status.INCOMPLETE


def test_gateway_default_needs_no_gpu() -> None:
    assert verify(gateway_policy=GATEWAY_DEFAULT).nodes[0].status is Status.INCOMPLETE


# -- the archive context and the CLI ---------------------------------------------------------


def test_context_carries_the_compose_manager_evidence() -> None:
    document = parse_attestation_document(RAW)
    labels = [label for label, _ in document.quotes()]
    assert labels == ["gateway", "model-0", compose_manager_label("model-0")]
    evidence = {label: NodeEvidence(collateral_json=f'{{"for":"{label}"}}') for label in labels}
    report = verify()
    decoded = decode_context(encode_context(report, evidence))
    assert decoded.model == MODEL
    assert decoded.evidence["model-0/compose-manager"].collateral_json == \
        '{"for":"model-0/compose-manager"}'


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    status = main(["attest", "--report", str(REPORT_FILE), "--nonce", NONCE, *argv, "--json"])
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return status, out


def test_cli_attests_the_real_report_offline(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, "--at", str(NOW))
    assert (status, out["verdict"]) == (2, "incomplete")
    assert out["model"] == MODEL
    assert not [c for c in out["checks"] if c["status"] == "fail"]


def test_cli_text_names_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["attest", "--report", str(REPORT_FILE), "--nonce", NONCE, "--at", str(NOW)])
    assert status == 2
    assert capsys.readouterr().out.startswith(f"Attestation of {MODEL}: INCOMPLETE")


def test_cli_collateral_per_node(capsys: pytest.CaptureFixture[str]) -> None:
    # The Intel sample collateral belongs to another platform: given to the gateway only, the
    # gateway's quote is decided (and refused) while the model node stays undecided.
    other = ASSETS / "tdx" / "tdx_quote_collateral.json"
    status, out = run(capsys, "--collateral", f"gateway={other}", "--at", "1750331763")
    by_node: dict[str, dict[str, str]] = {}
    for check in out["checks"]:
        by_node.setdefault(check["node"], {})[check["name"]] = check["status"]
    assert by_node["gateway"]["tdx.collateral"] == "pass"
    assert by_node["model-0"]["tdx.collateral"] == "incomplete"
    assert by_node["model-0"]["compose_manager.tdx.collateral"] == "incomplete"
    assert status == 1


def test_cli_compose_manager_collateral_by_its_own_label(
        capsys: pytest.CaptureFixture[str]) -> None:
    other = ASSETS / "tdx" / "tdx_quote_collateral.json"
    _, out = run(capsys, "--collateral", f"model-0/compose-manager={other}", "--at", "1750331763")
    statuses = {(c["node"], c["name"]): c["status"] for c in out["checks"]}
    assert statuses[("model-0", "compose_manager.tdx.collateral")] == "pass"
    assert statuses[("model-0", "compose_manager.tdx.quote_signature")] == "fail"
    assert statuses[("model-0", "tdx.collateral")] == "incomplete"


def test_cli_node_collateral_also_serves_its_compose_manager(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.cli

    seen: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> AttestationReport:
        seen.update(kwargs["evidence"])
        return verify_attestation(*args, **kwargs)

    monkeypatch.setattr(sidecar.cli, "verify_attestation", spy)
    gateway_file, model_file = ASSETS / "tdx" / "tdx_quote_collateral.json", \
        ASSETS / "tdx" / "tdx_quote_outdated_collateral.json"
    run(capsys, "--collateral", f"gateway={gateway_file}", "--collateral", f"model-0={model_file}")
    assert seen["gateway"].collateral_json == gateway_file.read_text()
    assert seen["model-0"].collateral_json == model_file.read_text()
    assert seen["model-0/compose-manager"].collateral_json == model_file.read_text()


def test_cli_collateral_twice_for_one_label_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    other = ASSETS / "tdx" / "tdx_quote_collateral.json"
    status = main(["attest", "--report", str(REPORT_FILE), "--nonce", NONCE,
                   "--collateral", f"gateway={other}", "--collateral", f"gateway={other}"])
    assert status == 64
    assert re.search(r"--collateral given twice for gateway", capsys.readouterr().err)


def test_deep_copy_of_asset_is_untouched() -> None:
    before = copy.deepcopy(json.loads(RAW))
    tampered(lambda r: model_entry(r).update(request_nonce="00" * 32))
    assert json.loads(REPORT_FILE.read_bytes()) == before


def test_cli_one_collateral_file_serves_every_quote(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.cli

    seen: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> AttestationReport:
        seen.update(kwargs["evidence"])
        return verify_attestation(*args, **kwargs)

    monkeypatch.setattr(sidecar.cli, "verify_attestation", spy)
    collateral = ASSETS / "tdx" / "tdx_quote_collateral.json"
    run(capsys, "--collateral", str(collateral))
    assert set(seen) == {"gateway", "model-0", "model-0/compose-manager"}
    assert {e.collateral_json for e in seen.values()} == {collateral.read_text()}


async def test_gather_fetches_collateral_for_the_compose_manager_quote() -> None:
    from sidecar.proxy.attester import ModelAttester
    from sidecar.verify.policy import PolicySet

    asked: list[bytes] = []

    class Collateral:
        async def get(self, quote: bytes) -> str:
            asked.append(quote)
            return f'{{"n":{len(asked)}}}'

    class Nras:
        async def attest(self, payload: str) -> list[Any]:
            return [["JWT", "x"], {}]

        async def jwks(self, require_kids: Any = ()) -> dict[str, Any]:
            return {"keys": []}

    attester = ModelAttester(None, collateral=Collateral(), nras=Nras(),  # type: ignore[arg-type]
                             roots=ROOTS, policies=PolicySet(), signing_algo="ecdsa")
    document = parse_attestation_document(RAW)
    evidence = await attester._gather(document, None)
    assert set(evidence) == {"gateway", "model-0", "model-0/compose-manager"}
    cm_quote = bytes.fromhex(cma(json.loads(RAW))["quote"])
    assert cm_quote in asked and len(asked) == 3
    assert evidence["model-0/compose-manager"].collateral_json is not None
    # GPU evidence belongs to the node, not to its compose-manager quote.
    assert evidence["model-0"].nras_response is not None
    assert evidence["model-0/compose-manager"].nras_response is None


@pytest.mark.parametrize("text", ["[gateway]\nrequire_nvidia = true\n",
                                  "[gateway]\non_failure = \"flag\"\n"])
def test_gateway_table_takes_only_tcb_and_pin_keys(tmp_path: Path, text: str) -> None:
    from sidecar.errors import ConfigError

    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(text)
    with pytest.raises(ConfigError, match="gateway"):
        load_policy(policy_file)


def test_gateway_takes_tcb_statuses_from_defaults_but_never_their_pins(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[defaults]\naccepted_tcb_statuses = ["UpToDate", "OutOfDate"]\n'
                           '[[defaults.measurements]]\nmrtd = ["' + "ab" * 48 + '"]\n')
    policies = load_policy(policy_file)
    assert policies.gateway.accepted_tcb_statuses == {"UpToDate", "OutOfDate"}
    report = verify(policy=policies.for_model(MODEL), gateway_policy=policies.gateway)
    assert report.nodes[0].status is Status.INCOMPLETE  # the default pin is not the gateway's
    assert failures(report) == {"policy.mrtd": "policy.mrtd_not_allowed"}  # the model's is


def test_the_wire_model_has_no_report_data_to_read() -> None:
    from sidecar.providers.wire import NodeAttestationWire

    assert "report_data" not in NodeAttestationWire.model_fields


def test_cli_context_evidence_per_label(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sidecar.cli

    seen: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> AttestationReport:
        seen.update(kwargs["evidence"])
        seen["model"] = kwargs["model"]
        return verify_attestation(*args, **kwargs)

    monkeypatch.setattr(sidecar.cli, "verify_attestation", spy)
    labels = ["gateway", "model-0", "model-0/compose-manager"]
    evidence = {label: NodeEvidence(collateral_json=f'{{"for":"{label}"}}') for label in labels}
    context = tmp_path / "context.json"
    context.write_bytes(encode_context(verify(), evidence))
    status = main(["attest", "--report", str(REPORT_FILE), "--context", str(context), "--json"])
    capsys.readouterr()
    assert status == 1  # that "collateral" is no collateral
    assert seen["model"] == MODEL
    for label in labels:
        assert seen[label].collateral_json == f'{{"for":"{label}"}}'


@pytest.mark.parametrize("layer", ["gateway", "model"])
def test_node_event_log_tampered_fails(layer: str) -> None:
    def edit(report: dict[str, Any]) -> None:
        node = report["gateway_attestation"] if layer == "gateway" else model_entry(report)
        log = node["event_log"]
        events = json.loads(log) if isinstance(log, str) else log
        # Swap the compose-hash payload under its genuine digest.
        event = next(e for e in events if e.get("event") == "compose-hash")
        event["event_payload"] = "00" * 32
        node["event_log"] = json.dumps(events) if isinstance(log, str) else events

    report = tampered(edit)
    assert failures(report)["eventlog.event_digests"] == "eventlog.digest_mismatch"


@pytest.mark.parametrize("sample", [ASSETS / "tdx" / "tdx_quote", ASSETS / "tdx" / "tdx_quote_outdated",
                                    "near-gateway", "near-model", "near-compose-manager"])
def test_td_attributes_offset_agrees_with_dcap_qvl(sample: Path | str) -> None:
    # v4 and v5 (TD report 1.5) quotes: our offset reads what dcap-qvl's parser reads.
    import dcap_qvl

    from sidecar.verify.tdx import td_attributes

    if isinstance(sample, Path):
        quote = sample.read_bytes()
    else:
        report = json.loads(RAW)
        quote = bytes.fromhex({"near-gateway": report["gateway_attestation"]["intel_quote"],
                               "near-model": model_entry(report)["intel_quote"],
                               "near-compose-manager": cma(report)["quote"]}[sample])
    assert td_attributes(quote) == bytes(dcap_qvl.parse_quote(quote).report.td_attributes)
