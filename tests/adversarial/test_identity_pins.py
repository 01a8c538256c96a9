"""Which code runs: a hostile gateway routes to a deployment of its own (issue 12).

The gateway (the MITM) sends the attestation, the completions and the signatures to a second
simulated deployment: genuine-format evidence under the simulator's test roots, fresh and bound
to our nonce, its own signing key, but its own compose file and image (``Faults.evidence`` knob
``app_compose``). Every hardware check passes; only the deployment identity differs.

Each test starts sidecars over one state directory of its own ("a restart" is a fresh sidecar over
the same pin store) and with the failed-attestation back-off off, so a healed path or an accepted
change is seen by the next request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.proxy.admin import render_status_html, status_document
from sidecar.cli import main
from sidecar.pins import PinStore, pins_dir
from sidecar.proxy import attester
from sidecar.simulator.dstack import default_app_compose
from sidecar.simulator.provider import SigningNode, SimulatedProvider
from tests.adversarial.conftest import assert_blocked
from tests.adversarial.harness import TEE_MODEL, AdversarialStack, chat
from tests.adversarial.mitm import Exchange, Mitm, respond

# The other deployment: the same runner, another image (a build that logs prompts, say).
EVIL_IMAGE = "sha256:" + hashlib.sha256(b"a build that logs every prompt").hexdigest()
EVIL_COMPOSE = default_app_compose(EVIL_IMAGE)


class Pinned:
    """One adversarial stack and one pin store shared by the sidecars a test starts."""

    def __init__(self, adv: AdversarialStack, state: Path) -> None:
        self.adv = adv
        self.state = state

    def sidecar(self, **sections: Any) -> str:
        """A new sidecar process over the shared state directory (a restart)."""
        return self.adv.sidecar(fresh=True, state={"dir": str(self.state)},
                                receipts={"enabled": False}, **sections)

    @property
    def store(self) -> PinStore:
        return PinStore(pins_dir(self.state))

    def other(self, **knobs: Any) -> SimulatedProvider:
        """Route attestation, completions and signatures to the other deployment."""
        other_url, other = self.adv.other_deployment()

        def configure() -> None:
            other.faults.evidence = {"app_compose": EVIL_COMPOSE, **knobs}
        self.adv.call(configure)

        async def elsewhere(_: web.Request, exchange: Exchange, mitm: Mitm) -> web.StreamResponse:
            return respond(await mitm.forward(exchange, to=other_url))

        for kind in ("attestation", "completion", "signature"):
            self.adv.mitm.on(kind, elsewhere)  # type: ignore[arg-type]
        return other

    def knobs(self, **knobs: Any) -> None:
        """Set evidence knobs on the genuine simulator (its own next attestation)."""
        def configure() -> None:
            self.adv.simulator.faults.evidence = dict(knobs)
        self.adv.call(configure)


@pytest.fixture
def pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pinned]:
    monkeypatch.setattr(attester, "FAILED_ATTESTATION_BACKOFF_SECONDS", 0.0)
    adv = AdversarialStack(tmp_path / "stack")
    yield Pinned(adv, tmp_path / "sidecar-state")
    adv.close()


def _first_deployment_pinned(p: Pinned) -> None:
    status, headers, _ = chat(p.sidecar())
    assert status == 200 and headers["x-tee-verified"] == "true"
    entry = p.store.get(TEE_MODEL)
    assert entry is not None and entry.how == "first use"
    assert [i.role for i in entry.identities] == ["model"]


def test_hostile_deployment_is_blocked_after_the_first_was_pinned(pinned: Pinned) -> None:
    _first_deployment_pinned(pinned)
    other = pinned.other()
    url = pinned.sidecar()
    for stream in (False, True):
        status, headers, body = chat(url, stream=stream)
        assert_blocked(status, headers, body, "policy.identity_changed")
        message = json.loads(body)["error"]["message"]
        assert "compose_hash" in message and EVIL_IMAGE in message, message
    # Refused before the prompt left: the other deployment never served a completion.
    assert pinned.adv.call(lambda: other.completions_served) == 0
    entry = pinned.store.get(TEE_MODEL)
    assert entry is not None and entry.pending is not None
    assert entry.pending.identities[0].images == (f"ghcr.io/example/vllm-proxy@{EVIL_IMAGE}",)
    assert entry.how == "first use"  # never silently re-pinned


def test_status_shows_the_pinned_identity_and_the_pending_change(pinned: Pinned) -> None:
    _first_deployment_pinned(pinned)
    pinned.other()
    url = pinned.sidecar()
    assert_blocked(*chat(url), "policy.identity_changed")
    state = pinned.adv.sidecar_state(url)
    document = pinned.adv.call(lambda: status_document(state))
    identity = document["identity"]
    assert identity["modes"]["tofu"] == ["(default) *"]
    entry = identity["models"][TEE_MODEL]
    assert entry["mode"] == "tofu" and entry["how"] == "first use" and entry["pinned_at"] > 0
    assert entry["pending"]["detail"].startswith("model identity of")
    assert document["telemetry"]["counters"]["identity_changes"] == 1
    page = render_status_html(document)
    assert "Deployment identity" in page and "Pending change" in page
    assert b"tee_sidecar_identity_changes_total" in state.telemetry.render_metrics()


def test_hostile_deployment_is_flagged_in_flag_mode(pinned: Pinned) -> None:
    _first_deployment_pinned(pinned)
    pinned.other()
    status, headers, _ = chat(pinned.sidecar(verification={"mode": "flag"}))
    assert status == 200
    assert headers["x-tee-verified"] == "false"
    assert headers["x-tee-failure"] == "policy.identity_changed"


def test_delivered_after_pins_accept_without_a_restart(pinned: Pinned, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _first_deployment_pinned(pinned)
    pinned.other()
    url = pinned.sidecar()
    assert_blocked(*chat(url), "policy.identity_changed")
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{pinned.state}"\n')
    assert main(["pins", "show", TEE_MODEL, "--config", str(config)]) == 0
    assert "PENDING change" in capsys.readouterr().out
    assert main(["pins", "accept", TEE_MODEL, "--config", str(config)]) == 0
    # The same sidecar process, no restart: the store is re-read at the next attestation.
    status, headers, _ = chat(url)
    assert status == 200 and headers["x-tee-verified"] == "true"
    entry = pinned.store.get(TEE_MODEL)
    assert entry is not None and entry.how == "accepted" and entry.pending is None


def test_accepted_from_a_saved_report_verified_again_offline(pinned: Pinned, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    _first_deployment_pinned(pinned)
    pinned.other()
    receipts = tmp_path / "receipts" / "receipts.jsonl"
    url = pinned.adv.sidecar(fresh=True, state={"dir": str(pinned.state)},
                             receipts={"path": str(receipts)})
    assert_blocked(*chat(url), "policy.identity_changed")
    entry = pinned.store.get(TEE_MODEL)
    assert entry is not None and entry.pending is not None
    # The refused report was archived with its context before the identity was judged.
    evidence = receipts.parent / "evidence" / f"{entry.pending.evidence_sha256}.json"
    context = evidence.with_name(f"{entry.pending.evidence_sha256}.context.json")
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{pinned.state}"\n[trust]\nanchors = "simulator"\n')
    base = ["pins", "accept", TEE_MODEL, "--config", str(config)]
    # A report of the genuine deployment tampered with does not verify: nothing is accepted.
    forged = tmp_path / "forged.json"
    tampered = json.loads(evidence.read_bytes())
    tampered["intel_quote"] = "05" + tampered["intel_quote"][2:]
    forged.write_text(json.dumps(tampered))
    assert main([*base, "--report", str(forged), "--context", str(context)]) == 1
    assert "does not verify offline" in capsys.readouterr().err
    assert main([*base, "--report", str(evidence), "--context", str(context)]) == 0
    stored = pinned.store.get(TEE_MODEL)
    assert stored is not None and stored.how == "accepted"
    assert stored.identities == entry.pending.identities
    status, headers, _ = chat(url)
    assert status == 200 and headers["x-tee-verified"] == "true"


def test_delivered_at_once_under_identity_any(pinned: Pinned, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[models."{TEE_MODEL}"]\nidentity = "any"\n')
    _first_deployment_pinned(pinned)
    pinned.other()
    status, headers, _ = chat(pinned.sidecar(policy={"file": str(policy)}))
    assert status == 200 and headers["x-tee-verified"] == "true"


def test_pinned_policy_refuses_a_deployment_it_does_not_list(pinned: Pinned,
                                                             tmp_path: Path) -> None:
    _first_deployment_pinned(pinned)
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{pinned.state}"\n')
    policy = tmp_path / "policy.toml"
    exported: list[str] = []
    from sidecar.pins import pins_command
    pins_command("export", pinned.store, out=exported.append)
    policy.write_text(exported[0])
    # The exported identity is exactly the genuine deployment: it passes without the store...
    pinned.state = tmp_path / "empty-state"
    status, headers, _ = chat(pinned.sidecar(policy={"file": str(policy)}))
    assert status == 200 and headers["x-tee-verified"] == "true"
    assert pinned.store.get(TEE_MODEL) is None  # "pinned" never writes the store
    # ...and the other deployment is refused with the policy's own code.
    pinned.other()
    assert_blocked(*chat(pinned.sidecar(policy={"file": str(policy)})),
                   "policy.identity_not_pinned")


# -- what does not trip TOFU, and what does ------------------------------------------------------


def test_restart_of_the_sidecar_and_of_the_deployment_keeps_the_identity(pinned: Pinned) -> None:
    _first_deployment_pinned(pinned)
    # The deployment restarts: new signing keys (and instances) for the same code.
    def restart() -> None:
        pinned.adv.simulator.nodes[:] = [SigningNode()]
    pinned.adv.call(restart)
    status, headers, _ = chat(pinned.sidecar())
    assert status == 200 and headers["x-tee-verified"] == "true"


def test_key_rotation_and_a_new_instance_keep_the_identity(pinned: Pinned) -> None:
    _first_deployment_pinned(pinned)
    url = pinned.sidecar()
    assert chat(url)[1]["x-tee-verified"] == "true"

    def rotate() -> None:
        pinned.adv.simulator.faults.rotate_key = True
    pinned.adv.call(rotate)
    # The rotated key lives on a new node (another instance id): one re-attestation, verified.
    status, headers, _ = chat(url)
    assert status == 200 and headers["x-tee-verified"] == "true"
    entry = pinned.adv.sidecar_state(url).cache.peek(TEE_MODEL)
    assert entry is not None and len(entry.report.attested_keys) == 2
    instance_ids = {n.label for n in entry.report.nodes}
    assert len(instance_ids) == 2
    stored = pinned.store.get(TEE_MODEL)
    assert stored is not None and len(stored.identities) == 1 and stored.pending is None


def _same_image_other_settings() -> str:
    document = json.loads(default_app_compose())
    document["public_logs"] = True  # the same image, but the containers' logs go public
    return json.dumps(document, indent=2)


OTHER_COMPOSE_SAME_IMAGE = _same_image_other_settings()
assert OTHER_COMPOSE_SAME_IMAGE != default_app_compose()


@pytest.mark.parametrize(("knobs", "changed"), [
    ({"app_compose": OTHER_COMPOSE_SAME_IMAGE}, "compose_hash"),
    ({"app_compose": EVIL_COMPOSE}, "images"),
    ({"os_image_hash": hashlib.sha256(b"another dstack os").hexdigest()}, "os_image_hash"),
    ({"mrtd": hashlib.sha384(b"another TDVF").hexdigest()}, "mrtd"),
    ({"key_provider": {"name": "local", "id": "00" * 32}}, "key_provider"),
], ids=["compose", "image", "os", "firmware", "key-provider"])
def test_a_change_of_code_trips_tofu(pinned: Pinned, knobs: dict[str, Any],
                                     changed: str) -> None:
    _first_deployment_pinned(pinned)
    pinned.knobs(**knobs)
    status, headers, body = chat(pinned.sidecar())
    assert_blocked(status, headers, body, "policy.identity_changed")
    message = json.loads(body)["error"]["message"]
    assert f"{changed} " in message, message
    if changed == "compose_hash":
        assert "images" not in message  # the same image: only the compose changed
