"""``tee-sidecar attest``: online against the simulator, and offline on a saved report."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.simulator.evidence import SimulatedEvidence
from sidecar.simulator.provider import Faults, SigningNode
from tests.stack import Stack
from tests.conftest import TEE_MODEL


@pytest.fixture()
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, Path, Path]:
    """A saved report, its nonce, its collateral and a saved NRAS answer (simulator roots)."""
    monkeypatch.setenv("TEE_SIDECAR_TRUST__ANCHORS", "simulator")
    evidence = SimulatedEvidence()
    nonce = secrets.token_hex(32)
    report = evidence([SigningNode()], "ecdsa", nonce, bytes.fromhex(nonce), Faults())
    report_file = tmp_path / "report.json"
    report_file.write_text(json.dumps(report))
    collateral = tmp_path / "collateral.json"
    collateral.write_text(evidence.authority.collateral_json(int(time.time())))
    nras = tmp_path / "nras.json"
    nras.write_text(json.dumps(evidence.nras.attest(report["nvidia_payload"], int(time.time()))))
    return report_file, nonce, collateral, nras


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    status = main(list(argv))
    return status, json.loads(capsys.readouterr().out)


def test_offline_with_everything_verifies(saved: tuple[Path, str, Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    report, nonce, collateral, nras = saved
    status, out = run(capsys, "attest", "--report", str(report), "--nonce", nonce,
                      "--collateral", str(collateral), "--nras", str(nras), "--json")
    assert (status, out["verdict"]) == (0, "verified")
    checks = out["checks"]
    assert isinstance(checks, list) and all(c["status"] == "pass" for c in checks)
    assert {"name", "node", "status", "detail"} <= set(checks[0])


def test_offline_without_collateral_is_incomplete_never_verified(
        saved: tuple[Path, str, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    report, nonce, _, _ = saved
    status, out = run(capsys, "attest", "--report", str(report), "--nonce", nonce, "--json")
    assert (status, out["verdict"]) == (2, "incomplete")
    incomplete = {c["name"] for c in out["checks"] if c["status"] == "incomplete"}  # type: ignore[union-attr]
    assert {"tdx.collateral", "gpu.nras"} <= incomplete


def test_offline_with_another_nonce_fails(saved: tuple[Path, str, Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    report, _, collateral, nras = saved
    status, out = run(capsys, "attest", "--report", str(report), "--nonce", "ab" * 32,
                      "--collateral", str(collateral), "--nras", str(nras), "--json")
    assert (status, out["verdict"]) == (1, "failed")
    failed = {c["code"] for c in out["checks"] if c["status"] == "fail"}  # type: ignore[union-attr]
    assert "binding.nonce_mismatch" in failed


def test_offline_at_a_time_after_the_collateral_expired_fails(
        saved: tuple[Path, str, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    report, nonce, collateral, nras = saved
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 90 * 86400))
    status, out = run(capsys, "attest", "--report", str(report), "--nonce", nonce,
                      "--collateral", str(collateral), "--nras", str(nras), "--at", later, "--json")
    assert (status, out["verdict"]) == (1, "failed")


def test_text_report_names_every_check(saved: tuple[Path, str, Path, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    report, nonce, collateral, nras = saved
    status = main(["attest", "--report", str(report), "--nonce", nonce,
                   "--collateral", str(collateral), "--nras", str(nras)])
    text = capsys.readouterr().out
    assert status == 0
    assert "VERIFIED" in text and "[      PASS] binding.nonce" in text and "mrtd" in text


@pytest.mark.parametrize("argv, message", [
    (["attest"], "name a MODEL"),
    (["attest", "--report", "x.json"], "needs --nonce"),
    (["attest", "--report", "x.json", "--nonce", "zz"], "64 hex"),
    (["attest", "--report", "x.json", "--nonce", "ab" * 32], "cannot read input"),
    (["attest", "--report", "x.json", "--nonce", "ab" * 32, "--at", "-5"], "unix seconds"),
    (["attest", "--report", "x.json", "--nonce", "ab" * 32, "--at", "9" * 20], "1970-9999"),
])
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 64
    assert message in capsys.readouterr().err


def test_online_against_the_simulator(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack(tmp_path)
    try:
        sim = stack.simulator_url
        for key, value in {"UPSTREAM__BASE_URL": f"{sim}/api", "UPSTREAM__API_KEY": "k",
                           "ATTESTATION__PCCS_URL": f"{sim}/pcs",
                           "ATTESTATION__NRAS_URL": f"{sim}/nras/v3/attest/gpu",
                           "TRUST__ANCHORS": "simulator",
                           "STATE__DIR": str(tmp_path / "state")}.items():
            monkeypatch.setenv(f"TEE_SIDECAR_{key}", value)
        status, out = run(capsys, "attest", TEE_MODEL, "--json")
        assert (status, out["verdict"]) == (0, "verified")
        stack.call(lambda: setattr(stack.simulator.faults, "stale_nonce", True))
        status, out = run(capsys, "attest", TEE_MODEL, "--json")
        assert (status, out["verdict"]) == (1, "failed")
    finally:
        stack.close()


def test_offline_nras_answer_needs_a_jwks_under_production_anchors(
        saved: tuple[Path, str, Path, Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    report, nonce, collateral, nras = saved
    monkeypatch.setenv("TEE_SIDECAR_TRUST__ANCHORS", "production")
    status, out = run(capsys, "attest", "--report", str(report), "--nonce", nonce,
                      "--nras", str(nras), "--json")
    gpu = [c for c in out["checks"] if c["name"] == "gpu.nras"]  # type: ignore[union-attr]
    assert gpu and gpu[0]["status"] == "incomplete" and "--jwks" in gpu[0]["detail"]
    assert out["verdict"] != "verified"
    # The simulator's JWKS given explicitly: its tokens verify, but the simulator's quote still
    # fails against Intel's production root.
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(SimulatedEvidence().nras.jwks()))
    status, out = run(capsys, "attest", "--report", str(report), "--nonce", nonce,
                      "--collateral", str(collateral), "--nras", str(nras), "--jwks", str(jwks),
                      "--json")
    assert (status, out["verdict"]) == (1, "failed")
    failed = {c["name"] for c in out["checks"] if c["status"] == "fail"}  # type: ignore[union-attr]
    assert "tdx.quote_signature" in failed


def test_an_archived_attestation_reverifies_offline_from_its_context(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit path: the proxy archived the report and its context beside the receipts; the
    whole verification re-runs offline from them, as of the attestation's own time."""
    import openai

    from sidecar.receipts import verify_receipts

    stack = Stack(tmp_path)
    try:
        url = stack.sidecar()
        openai.OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(
            model=TEE_MODEL, messages=[{"role": "user", "content": "audit me"}])
        receipts = stack.sidecar_state(url).settings.receipts_path()
    finally:
        stack.close()
    receipt = json.loads(receipts.read_text().splitlines()[0])
    evidence = receipts.parent / "evidence" / f"{receipt['evidence_sha256']}.json"
    context = evidence.with_suffix(".context.json")
    assert verify_receipts(receipts).verified == 1

    monkeypatch.setenv("TEE_SIDECAR_TRUST__ANCHORS", "simulator")
    status, out = run(capsys, "attest", "--report", str(evidence), "--context", str(context),
                      "--json")
    assert (status, out["verdict"]) == (0, "verified")
    assert out["nonce"] == receipt["nonce"]
    # Months later the collateral and tokens have expired: as of now it no longer verifies.
    later = str(int(time.time()) + 90 * 86400)
    status, out = run(capsys, "attest", "--report", str(evidence), "--context", str(context),
                      "--at", later, "--json")
    assert (status, out["verdict"]) == (1, "failed")


def test_a_malformed_context_is_a_usage_error(saved: tuple[Path, str, Path, Path],
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    report, _, _, _ = saved
    context = tmp_path / "context.json"
    context.write_text('{"format": "something else"}')
    assert main(["attest", "--report", str(report), "--context", str(context)]) == 64
    assert "attestation context" in capsys.readouterr().err
