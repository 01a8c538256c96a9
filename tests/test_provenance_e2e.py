"""Image provenance through the proxy: a simulated deployment whose compose names an image with a
real public Sigstore build attestation, served by a stand-in for GitHub's attestations API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.cli import main
from sidecar.proxy import attester
from sidecar.simulator.dstack import default_app_compose
from tests.stack import Stack
from tests.adversarial.harness import TEE_MODEL, chat

ASSETS = Path(__file__).parent / "assets" / "provenance"
GENUINE = json.loads((ASSETS / "attest_demo_provenance.sigstore.json").read_text())
OTHER_ISSUER = json.loads((ASSETS / "custom_issuer_provenance.sigstore.json").read_text())
DIGEST = "sha256:49a3aa6075e0f49f82843e74b5baa614ad2a588e6675612bf108a0a008c5ac25"
REPOSITORY = "https://github.com/malancas/attest-demo"


class Api:
    """GitHub's attestations API, as far as the sidecar uses it."""

    def __init__(self) -> None:
        self.answers: dict[str, list[dict[str, Any]]] = {DIGEST: [GENUINE]}
        self.status = 200
        self.requests: list[str] = []

    def app(self) -> web.Application:
        async def attestations(request: web.Request) -> web.Response:
            self.requests.append(request.path)
            if self.status != 200:
                return web.json_response({"message": "down"}, status=self.status)
            found = self.answers.get(request.match_info["digest"])
            if not found:
                return web.json_response({"message": "Not Found"}, status=404)
            return web.json_response({"attestations": [{"bundle": b} for b in found]})

        app = web.Application()
        app.router.add_get("/repos/{owner}/{repo}/attestations/{digest}", attestations)
        return app


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, Api, Path]]:
    monkeypatch.setattr(attester, "FAILED_ATTESTATION_BACKOFF_SECONDS", 0.0)
    stack = Stack(tmp_path / "stack")
    api = Api()
    stack.defaults = {"provenance": {"api_url": stack.run(stack.serve(api.app())),
                                     "trusted_root": str(ASSETS / "trusted_root.json")}}

    def deploy() -> None:
        stack.simulator.faults.evidence = {
            "app_compose": default_app_compose(DIGEST).replace("ghcr.io/example/vllm-proxy",
                                                               "ghcr.io/malancas/attest-demo")}
    stack.call(deploy)
    yield stack, api, tmp_path
    stack.close()


def _policy(tmp_path: Path, **provenance: str) -> str:
    path = tmp_path / "policy.toml"
    lines = [f'[models."{TEE_MODEL}".provenance]'] + [f'{k} = "{v}"' for k, v in provenance.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_genuine_provenance_delivers_and_is_archived(setup: tuple[Stack, Api, Path]) -> None:
    stack, api, tmp_path = setup
    state = tmp_path / "state"
    policy = _policy(tmp_path, repository=REPOSITORY, ref="refs/heads/main",
                     workflow=".github/workflows/shared.yml")
    url = stack.sidecar(fresh=True, state={"dir": str(state)}, policy={"file": policy})
    status, headers, _ = chat(url)
    assert status == 200 and headers["x-tee-verified"] == "true", headers
    assert api.requests == [f"/repos/malancas/attest-demo/attestations/{DIGEST}"]
    archived = (state / "provenance" / "github.com_malancas_attest-demo"
                / f"{DIGEST.replace(':', '-')}.json")
    assert json.loads(archived.read_text()) == [GENUINE]
    entry = stack.sidecar_state(url).cache.peek(TEE_MODEL)
    assert entry is not None
    assert [c for c in entry.report.nodes[0].checks if c.name == "provenance.images"][0].ok
    # The API goes down: a restarted sidecar re-checks the archived bundle, offline.
    api.status = 503
    again = stack.sidecar(fresh=True, state={"dir": str(state)}, policy={"file": policy},
                          receipts={"enabled": False})
    status, headers, _ = chat(again)
    assert status == 200 and headers["x-tee-verified"] == "true"
    assert len(api.requests) == 1


@pytest.mark.parametrize(("answers", "status", "code"), [
    ({DIGEST: [OTHER_ISSUER]}, 200, "provenance.digest_mismatch"),
    ({}, 200, "provenance.attestation_missing"),
    ({DIGEST: [GENUINE]}, 502, "provenance.attestation_unavailable"),
], ids=["another-artifacts-bundle", "no-attestation", "api-down"])
def test_bad_or_missing_provenance_is_blocked(setup: tuple[Stack, Api, Path],
                                              answers: dict[str, Any], status: int,
                                              code: str) -> None:
    stack, api, tmp_path = setup
    api.answers, api.status = answers, status
    url = stack.sidecar(fresh=True, policy={"file": _policy(tmp_path, repository=REPOSITORY)})
    got, headers, body = chat(url)
    assert got == 502 and headers["x-tee-failure"] == code, body


def test_another_repository_is_blocked(setup: tuple[Stack, Api, Path]) -> None:
    stack, _, tmp_path = setup
    policy = _policy(tmp_path, repository="https://github.com/nearai/private-ml-sdk")
    got, headers, _ = chat(stack.sidecar(fresh=True, policy={"file": policy}))
    assert got == 502 and headers["x-tee-failure"] == "provenance.repository_mismatch"


def test_attest_context_rechecks_the_archived_provenance_offline(
        setup: tuple[Stack, Api, Path], capsys: pytest.CaptureFixture[str]) -> None:
    stack, api, tmp_path = setup
    state = tmp_path / "state"
    policy = _policy(tmp_path, repository=REPOSITORY)
    url = stack.sidecar(fresh=True, state={"dir": str(state)}, policy={"file": policy})
    assert chat(url)[1]["x-tee-verified"] == "true"
    entry = stack.sidecar_state(url).cache.peek(TEE_MODEL)
    assert entry is not None
    evidence = state / "receipts" / "evidence" / f"{entry.report.evidence_sha256}.json"
    context = evidence.with_name(f"{entry.report.evidence_sha256}.context.json")
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{state}"\n[trust]\nanchors = "simulator"\n'
                      f'[policy]\nfile = "{policy}"\n[provenance]\n'
                      f'trusted_root = "{ASSETS / "trusted_root.json"}"\n')
    args = ["attest", "--report", str(evidence), "--context", str(context), "--json",
            "--config", str(config)]
    api.status = 503  # offline: only the archive counts
    assert main(args) == 0
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert any(c["name"] == "provenance.images" and c["status"] == "pass" for c in checks)
    # Without the archive the same report fails: the bundle, not the network, decided.
    for archived in (state / "provenance").glob("*/*.json"):
        archived.unlink()
    assert main(args) == 1
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert any(c["code"] == "provenance.attestation_missing" for c in checks)
