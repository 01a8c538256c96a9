"""``tee-sidecar verify``: one saved exchange re-checked offline, as the proxy checks it."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.simulator.evidence import SimulatedEvidence
from sidecar.simulator.provider import Faults, SigningNode

ASSETS = Path(__file__).parent / "assets" / "near"
EXCHANGE = json.loads((ASSETS / "direct_stream_exchange.json").read_text())
NODE_KEY = "0x6525e128afcffebf7eed05d485d7be983cdae934"
REPORT_NONCE = "9a01356cb451dc2c3c0ce9a195245a0be984a3f73617f55f87913fc2f059cba7"


def save(directory: Path, request: bytes, response: bytes, record: dict[str, Any] | bytes) -> list[str]:
    files = {"request": request, "response": response,
             "signature": record if isinstance(record, bytes) else json.dumps(record).encode()}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return [arg for name in files for arg in (f"--{name}", str(directory / name))]


@pytest.fixture()
def near(tmp_path: Path) -> list[str]:
    """The real NEAR direct-node stream exchange, saved as the proxy would have it."""
    return save(tmp_path, base64.b64decode(EXCHANGE["request_body_b64"]),
                base64.b64decode(EXCHANGE["response_body_b64"]), EXCHANGE["signature_response"])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    status = main(["verify", *argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


def failure_code(out: dict[str, Any]) -> str | None:
    return next((c["code"] for c in out["signature"]["checks"] if c["status"] != "pass"), None)


def test_the_real_near_stream_verifies_with_its_node_key(
        near: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, *near, "--attested-key", NODE_KEY.upper().replace("0X", "0x"))
    assert (status, out["verdict"]) == (0, "verified")
    signature = out["signature"]
    assert all(c["status"] == "pass" for c in signature["checks"])
    assert (signature["signer"], signature["request_binding"], signature["text_model"],
            signature["expected_model"]) == (NODE_KEY, "exact", "Qwen/Qwen3.5-122B-A10B",
                                             "Qwen/Qwen3.5-122B-A10B")


def test_the_text_output_names_every_check(near: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", *near, "--attested-key", NODE_KEY]) == 0
    text = capsys.readouterr().out
    assert "Signature: VERIFIED" in text
    for name in ("signature.record", "signature.text", "signature.request_hash",
                 "signature.response_hash", "signature.cryptographic", "signature.signer",
                 "signature.attested_key", "signature.kind", "signature.model"):
        assert f"] {name}: " in text


@pytest.mark.parametrize("which, code", [("request", "signature.request_hash_mismatch"),
                                         ("response", "signature.response_hash_mismatch")])
def test_a_changed_byte_in_a_saved_body_fails(near: list[str], which: str, code: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(near[near.index(f"--{which}") + 1])
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x20
    path.write_bytes(bytes(data))
    status, out = run(capsys, *near, "--attested-key", NODE_KEY)
    assert (status, out["verdict"], failure_code(out)) == (1, "failed", code)
    status = main(["verify", *near, "--attested-key", NODE_KEY])
    assert status == 1 and f"({code})" in capsys.readouterr().out


@pytest.mark.parametrize("argv, code", [
    (["--attested-key", "0x" + "11" * 20], "signature.address_not_attested"),
    (["--attested-key", NODE_KEY, "--model", "zai-org/GLM-5.1-FP8"], "signature.text_model_mismatch"),
])
def test_the_wrong_key_or_model_fails(near: list[str], argv: list[str], code: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, *near, *argv)
    assert (status, failure_code(out)) == (1, code)


def test_against_a_real_report_whose_keys_did_not_sign(near: list[str],
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEE_SIDECAR_TRUST__ANCHORS", "production")
    status, out = run(capsys, *near, "--report", str(ASSETS / "cloud_report_gateway_and_model.json"),
                      "--nonce", REPORT_NONCE)
    assert (status, out["verdict"], failure_code(out)) == (1, "failed",
                                                           "signature.address_not_attested")
    assert out["attestation"]["nonce"] == REPORT_NONCE


def test_a_not_available_answer_fails_with_its_provider_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = save(tmp_path, b"{}", b"{}", {"error_code": "STREAM_DISCONNECTED", "message": "gone"})
    status, out = run(capsys, *files, "--attested-key", NODE_KEY)
    assert (status, failure_code(out)) == (1, "signature.unavailable")
    assert "STREAM_DISCONNECTED" in out["signature"]["checks"][0]["detail"]


# --- NanoGPT's rename, signed for real by a simulated node ---------------------------------

UPSTREAM = "Qwen/Qwen3.5-122B-A10B"
SENT = b'{"model":"TEE/qwen3.5","messages":[{"role":"user","content":"hi"}]}'
ANSWER = b'{"id":"chatcmpl-1","choices":[]}'


def signed_exchange(directory: Path, node: SigningNode, signed_request: bytes,
                    model: str | None = UPSTREAM, algo: str = "ecdsa") -> list[str]:
    digests = f"{hashlib.sha256(signed_request).hexdigest()}:{hashlib.sha256(ANSWER).hexdigest()}"
    text = f"{model}:{digests}" if model else digests
    return save(directory, SENT, ANSWER, {"text": text, "signature": node.sign(text, algo),
                                          "signing_address": node.address(algo),
                                          "signing_algo": algo})


def test_a_renamed_model_is_accepted_for_nanogpt_only(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    node = SigningNode()
    files = signed_exchange(tmp_path, node, SENT.replace(b"TEE/qwen3.5", UPSTREAM.encode()))
    key = ["--attested-key", node.address("ecdsa"), "--model", UPSTREAM]
    status, out = run(capsys, *files, *key)
    assert (status, failure_code(out)) == (1, "signature.request_model_renamed")
    assert out["signature"]["request_binding"] == "model_renamed"
    status, out = run(capsys, *files, *key, "--provider", "near-cloud")
    assert (status, failure_code(out)) == (1, "signature.request_model_renamed")
    status, out = run(capsys, *files, *key, "--provider", "nanogpt")
    assert (status, out["verdict"], out["signature"]["request_binding"]) == (
        0, "verified", "model_renamed")
    # Without --model the request's own model is expected, which the node does not serve.
    status, out = run(capsys, *files, "--attested-key", node.address("ecdsa"), "--provider", "nanogpt")
    assert (status, failure_code(out)) == (1, "signature.text_model_mismatch")


def test_an_ed25519_key_is_recognised_by_its_form(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    node = SigningNode()
    files = signed_exchange(tmp_path, node, SENT, model="TEE/qwen3.5", algo="ed25519")
    status, out = run(capsys, *files, "--attested-key", node.address("ed25519"))
    assert (status, out["signature"]["algo"]) == (0, "ed25519")


# --- against a saved (simulated) report: verified, undecided offline, or not its key --------

@pytest.fixture()
def saved_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SigningNode, list[str], list[str]]:
    """A simulated node, its saved report with nonce, and the collateral and NRAS answer."""
    monkeypatch.setenv("TEE_SIDECAR_TRUST__ANCHORS", "simulator")
    evidence = SimulatedEvidence()
    node = SigningNode()
    nonce = secrets.token_hex(32)
    report = evidence([node], "ecdsa", nonce, bytes.fromhex(nonce), Faults())
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "collateral.json").write_text(evidence.authority.collateral_json(int(time.time())))
    (tmp_path / "nras.json").write_text(
        json.dumps(evidence.nras.attest(report["nvidia_payload"], int(time.time()))))
    return (node, ["--report", str(tmp_path / "report.json"), "--nonce", nonce],
            ["--collateral", str(tmp_path / "collateral.json"), "--nras", str(tmp_path / "nras.json")])


def test_signed_by_a_node_of_a_fully_verified_report(
        saved_report: tuple[SigningNode, list[str], list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    node, report, offline = saved_report
    files = signed_exchange(tmp_path, node, SENT, model=None)
    status, out = run(capsys, *files, *report, *offline)
    assert (status, out["verdict"], out["attestation"]["verdict"]) == (0, "verified", "verified")


def test_offline_without_collateral_is_undecided_never_verified(
        saved_report: tuple[SigningNode, list[str], list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    node, report, _ = saved_report
    files = signed_exchange(tmp_path, node, SENT, model=None)
    status, out = run(capsys, *files, *report)
    assert (status, out["verdict"], out["attestation"]["verdict"]) == (2, "undecided", "incomplete")
    assert all(c["status"] == "pass" for c in out["signature"]["checks"])
    assert main(["verify", *files, *report]) == 2
    assert "Signature: UNDECIDED" in capsys.readouterr().out


def test_signed_by_a_key_the_report_does_not_attest(
        saved_report: tuple[SigningNode, list[str], list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, report, offline = saved_report
    files = signed_exchange(tmp_path, SigningNode(), SENT, model=None)
    status, out = run(capsys, *files, *report, *offline)
    assert (status, failure_code(out)) == (1, "signature.address_not_attested")


def test_a_failed_attestation_attests_no_key(
        saved_report: tuple[SigningNode, list[str], list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    node, report, offline = saved_report
    report[report.index("--nonce") + 1] = "ab" * 32  # not the nonce the report binds
    files = signed_exchange(tmp_path, node, SENT, model=None)
    status, out = run(capsys, *files, *report, *offline)
    assert (status, out["attestation"]["verdict"], failure_code(out)) == (
        1, "failed", "signature.address_not_attested")


@pytest.mark.parametrize("extra, message", [
    (["--attested-key", "0x1234"], "neither an ecdsa address"),
    (["--attested-key", NODE_KEY, "--nonce", "ab" * 32], "--nonce only go with --report"),
    (["--report", "missing.json"], "needs --nonce"),
    (["--report", "missing.json", "--nonce", "zz"], "64 hex"),
    (["--report", "missing.json", "--nonce", "ab" * 32], "cannot read input"),
])
def test_usage_errors(near: list[str], extra: list[str], message: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", *near, *extra]) == 64
    assert message in capsys.readouterr().err


def test_a_missing_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nothing")
    assert main(["verify", "--request", missing, "--response", missing, "--signature", missing,
                 "--attested-key", NODE_KEY]) == 64
    assert "cannot read input" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--report", "r.json", "--attested-key", NODE_KEY],
                                   ["--attested-key", NODE_KEY, "--provider", "acme"]])
def test_argument_errors_exit_64(near: list[str], extra: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["verify", *near, *extra])
    assert info.value.code == 64
