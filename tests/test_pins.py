"""The pin store (atomic, reloaded, corrupt → refused) and the identity gate (sidecar.pins)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.errors import ConfigError, VerificationFailed
from sidecar.pins import (
    PINS_FORMAT,
    IdentityGate,
    PinStore,
    PinStoreError,
    identity_modes,
    pins_command,
    policy_toml,
)
from sidecar.telemetry import Telemetry
from sidecar.verify.attestation import AttestationReport, NodeReport
from sidecar.verify.checks import Check
from sidecar.verify.identity import DeploymentFacts, deployment_identity
from sidecar.policy_file import load_policy
from sidecar.verify.policy import PolicySet, build_model_policy

MODEL = "TEE/some-model"


def compose(image: str = "ghcr.io/example/app@sha256:" + "aa" * 32) -> str:
    return json.dumps({"runner": "docker-compose",
                       "docker_compose_file": f"services:\n  app:\n    image: {image}\n"})


def node(label: str = "node-0", *, role: str = "model", mrtd: str = "11" * 48,
         image: str | None = None, os_image: str = "22" * 32, ok: bool = True,
         key: str | None = None) -> NodeReport:
    app = compose(image) if image else compose()
    compose_hash = hashlib.sha256(app.encode()).hexdigest()
    return NodeReport(
        label=label, role=role, signing_key=key or "0x" + label.encode().hex().ljust(40, "0"),
        algo="ecdsa",
        checks=(Check.passed("all", "ok") if ok else Check.failed("x", "tdx.quote_invalid", "no"),),
        measurements={"mrtd": mrtd, "rtmr0": "33" * 48, "rtmr1": "44" * 48, "rtmr2": "55" * 48,
                      "rtmr3": label.encode().hex().ljust(96, "0"),
                      "mr_config_id": ("01" + compose_hash).ljust(96, "0")},
        deployment=DeploymentFacts(app, compose_hash, os_image, '{"name":"kms","id":"k"}'))


def report(*nodes: NodeReport, evidence: str = "e" * 64) -> AttestationReport:
    return AttestationReport(MODEL, "0" * 64, evidence, tuple(nodes), 1_700_000_000)


def policies(**kwargs: Any) -> PolicySet:
    return PolicySet(models=(build_model_policy(MODEL, **kwargs),))


@pytest.fixture
def store(tmp_path: Path) -> PinStore:
    return PinStore(tmp_path / "pins", clock=lambda: 1_800_000_000.0)


# -- the gate ------------------------------------------------------------------------------------


def test_first_use_pins_then_the_same_identity_passes(store: PinStore) -> None:
    gate = IdentityGate(store, policies())
    judged = gate.enforce(MODEL, report(node()))
    assert judged.nodes[0].checks[-1].name == "policy.identity"
    assert judged.nodes[0].checks[-1].ok
    entry = store.get(MODEL)
    assert entry is not None and entry.how == "first use" and entry.pinned_at == 1_800_000_000.0
    # Another instance with another key and RTMR3: the same deployment.
    again = gate.enforce(MODEL, report(node("node-9", key="0x" + "ab" * 20)))
    assert again.attested_keys == {"0x" + "ab" * 20}


def test_a_changed_identity_fails_and_is_recorded_pending(store: PinStore) -> None:
    changes: list[str] = []
    telemetry = Telemetry()

    def counted(model: str) -> None:
        changes.append(model)
        telemetry.observe_identity_change(model)

    gate = IdentityGate(store, policies(), on_change=counted)
    gate.enforce(MODEL, report(node()))
    with pytest.raises(VerificationFailed, match="os_image_hash 2222222222222222… → 9999") as info:
        gate.enforce(MODEL, report(node(os_image="99" * 32), evidence="f" * 64))
    assert info.value.code == "policy.identity_changed"
    entry = store.get(MODEL)
    assert entry is not None and entry.pending is not None
    assert entry.pending.evidence_sha256 == "f" * 64
    assert entry.pending.identities[0].os_image_hash == "99" * 32
    assert entry.identities[0].os_image_hash == "22" * 32  # the pin itself is untouched
    assert changes == [MODEL]
    assert telemetry.snapshot()["counters"]["identity_changes"] == 1
    assert b'tee_sidecar_identity_changes_total{model="TEE/some-model"} 1.0' \
        in telemetry.render_metrics()


def test_one_changed_node_fails_alone(store: PinStore) -> None:
    gate = IdentityGate(store, policies())
    gate.enforce(MODEL, report(node()))
    judged = gate.enforce(MODEL, report(node("a"), node("b", mrtd="77" * 48)))
    failing = {n.label: n.failure.code if n.failure else None for n in judged.nodes}
    assert failing == {"a": None, "b": "policy.identity_changed"}
    assert len(judged.attested_keys) == 1


def test_a_node_that_failed_verification_is_not_judged_or_pinned(store: PinStore) -> None:
    gate = IdentityGate(store, policies())
    judged = gate.enforce(MODEL, report(node(), node("bad", mrtd="77" * 48, ok=False)))
    entry = store.get(MODEL)
    assert entry is not None and len(entry.identities) == 1
    assert judged.nodes[1].checks[-1].code == "tdx.quote_invalid"


def test_unestablished_identity_fails_closed(store: PinStore) -> None:
    gate = IdentityGate(store, policies())
    with pytest.raises(VerificationFailed) as info:
        gate.enforce(MODEL, report(dataclasses.replace(node(), deployment=None)))
    assert info.value.code == "policy.identity_unestablished"
    assert store.get(MODEL) is None  # nothing was pinned from it


def test_any_skips_the_store(store: PinStore) -> None:
    gate = IdentityGate(store, policies(identity="any"))
    original = report(node())
    assert gate.enforce(MODEL, original) is original
    assert store.get(MODEL) is None


def test_pinned_accepts_only_the_policy_pins(store: PinStore) -> None:
    genuine = deployment_identity(node())
    gate = IdentityGate(store, policies(identity="pinned", identity_pins=[genuine]))
    assert gate.enforce(MODEL, report(node())).attested_keys
    with pytest.raises(VerificationFailed, match="listed in the policy") as info:
        gate.enforce(MODEL, report(node(image="evil@sha256:" + "bb" * 32)))
    assert info.value.code == "policy.identity_not_pinned"
    assert store.get(MODEL) is None  # "pinned" never writes the store


def test_tofu_with_policy_pins_does_not_pin_on_first_use(store: PinStore) -> None:
    genuine = deployment_identity(node())
    gate = IdentityGate(store, policies(identity_pins=[genuine]))
    with pytest.raises(VerificationFailed) as info:
        gate.enforce(MODEL, report(node(mrtd="77" * 48)))
    assert info.value.code == "policy.identity_changed"
    assert store.get(MODEL) is None


# -- the store -----------------------------------------------------------------------------------


def test_store_survives_a_reopen_and_is_written_atomically(store: PinStore) -> None:
    IdentityGate(store, policies()).enforce(MODEL, report(node()))
    files = sorted(p.name for p in store.directory.iterdir())
    assert files == ["pins.json", "pins.lock"]  # no temporary file left behind
    assert json.loads(store.path.read_text())["format"] == PINS_FORMAT
    reopened = PinStore(store.directory)
    assert reopened.get(MODEL) == store.get(MODEL)


def test_a_crash_mid_write_leaves_the_old_store(store: PinStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    IdentityGate(store, policies()).enforce(MODEL, report(node()))
    before = store.path.read_bytes()

    def crash(*_: Any) -> None:
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(PinStoreError, match="cannot write"):
        store.forget(MODEL)
    assert store.path.read_bytes() == before
    assert sorted(p.name for p in store.directory.iterdir()) == ["pins.json", "pins.lock"]


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "other"}', b"[]",
                                     b'{"format": "tee-sidecar-pins/1", "models": '
                                     b'{"m": {"identities": []}}}'])
def test_a_corrupt_store_stops_start_up(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "pins").mkdir()
    (tmp_path / "pins" / "pins.json").write_bytes(content)
    with pytest.raises(ConfigError, match="corrupt") as info:
        PinStore(tmp_path / "pins")
    assert info.value.code == "pins.store_corrupt"


def test_a_store_corrupted_while_running_fails_closed_and_never_repins(store: PinStore) -> None:
    gate = IdentityGate(store, policies())
    gate.enforce(MODEL, report(node()))
    store.path.write_bytes(b"garbage")
    with pytest.raises(VerificationFailed) as info:
        gate.enforce(MODEL, report(node()))
    assert info.value.code == "pins.store_corrupt"
    assert store.path.read_bytes() == b"garbage"
    assert gate.status()["error"] is not None


def test_a_first_use_pin_that_cannot_be_written_fails_closed(
        store: PinStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: Any, **__: Any) -> Any:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("sidecar.durable.write_all", full)
    with pytest.raises(VerificationFailed, match="No space left") as info:
        IdentityGate(store, policies()).enforce(MODEL, report(node()))
    assert info.value.code == "pins.store_unwritable"
    assert not store.path.exists()


def test_a_running_gate_sees_an_accept_made_elsewhere(store: PinStore) -> None:
    gate = IdentityGate(store, policies())
    gate.enforce(MODEL, report(node()))
    with pytest.raises(VerificationFailed):
        gate.enforce(MODEL, report(node(mrtd="77" * 48)))
    PinStore(store.directory).accept(MODEL)  # another process: `tee-sidecar pins accept`
    assert gate.enforce(MODEL, report(node(mrtd="77" * 48))).attested_keys
    with pytest.raises(VerificationFailed):  # the old identity was replaced
        gate.enforce(MODEL, report(node()))


def test_accept_keep_old_keeps_both(store: PinStore) -> None:
    gate = IdentityGate(store, policies())
    gate.enforce(MODEL, report(node()))
    with pytest.raises(VerificationFailed):
        gate.enforce(MODEL, report(node(mrtd="77" * 48)))
    entry = store.accept(MODEL, keep_old=True)
    assert len(entry.identities) == 2 and entry.pending is None and entry.how == "accepted"
    gate.enforce(MODEL, report(node()))
    gate.enforce(MODEL, report(node(mrtd="77" * 48)))


def test_accept_without_a_pending_change_is_refused(store: PinStore) -> None:
    IdentityGate(store, policies()).enforce(MODEL, report(node()))
    with pytest.raises(PinStoreError) as info:
        store.accept(MODEL)
    assert info.value.code == "pins.nothing_pending"


def test_forget_then_first_use_again(store: PinStore) -> None:
    gate = IdentityGate(store, policies())
    gate.enforce(MODEL, report(node()))
    assert store.forget(MODEL) and not store.forget(MODEL)
    gate.enforce(MODEL, report(node(mrtd="77" * 48)))
    entry = store.get(MODEL)
    assert entry is not None and entry.identities[0].mrtd == "77" * 48


# -- export, policy syntax, CLI ------------------------------------------------------------------


def test_export_is_a_policy_that_pins_the_same_identities(store: PinStore,
                                                         tmp_path: Path) -> None:
    IdentityGate(store, policies()).enforce(MODEL, report(node(), node("gw", role="gateway",
                                                                    mrtd="66" * 48)))
    text = policy_toml(store.entries())
    tomllib.loads(text)
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(text)
    entry = load_policy(policy_file).for_model(MODEL)
    assert entry.identity == "pinned"
    stored = store.get(MODEL)
    assert stored is not None and set(entry.identity_pins) == set(stored.identities)


@pytest.mark.parametrize(("body", "message"), [
    ('identity = "pinned"', "lists no pins"),
    ('identity = "anything"', "identity"),
    ('require_tdx = false\nrequire_nvidia = true\nidentity = "tofu"', "require_tdx is false"),
])
def test_policy_identity_settings_are_checked(tmp_path: Path, body: str, message: str) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(f"allow_unattested_models = true\n[models.\"{MODEL}\"]\n{body}\n")
    with pytest.raises(ConfigError, match=message):
        load_policy(policy_file)


def test_policy_any_with_pins_is_refused(store: PinStore, tmp_path: Path) -> None:
    IdentityGate(store, policies()).enforce(MODEL, report(node()))
    text = policy_toml(store.entries()).replace('identity = "pinned"', 'identity = "any"')
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(text)
    with pytest.raises(ConfigError, match="ignores its pins"):
        load_policy(policy_file)


def test_identity_modes_name_the_globs(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[models."TEE/a*"]\nidentity = "any"\n[models."TEE/b"]\n'
                           'require_nvidia = false\n')
    modes = identity_modes(load_policy(policy_file))
    assert modes == {"tofu": ["TEE/b", "(default) *"], "pinned": [], "any": ["TEE/a*"]}
    no_tdx = build_model_policy("x", require_tdx=False, require_nvidia=False)
    assert no_tdx.identity == "any"  # no quote, no identity to pin


def test_pins_cli(store: PinStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate = IdentityGate(store, policies())
    gate.enforce(MODEL, report(node()))
    with pytest.raises(VerificationFailed):
        gate.enforce(MODEL, report(node(mrtd="77" * 48)))
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{store.directory.parent}"\n')
    args = ["--config", str(config)]
    assert main(["pins", "list", *args]) == 0
    assert "PENDING CHANGE" in capsys.readouterr().out
    assert main(["pins", "show", MODEL, "--json", *args]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pending"]["identities"][0]["mrtd"] == "77" * 48
    assert main(["pins", "accept", MODEL, *args]) == 0
    assert main(["pins", "accept", MODEL, *args]) == 1
    assert "no pending identity change" in capsys.readouterr().err
    assert main(["pins", "export", MODEL, *args]) == 0
    assert tomllib.loads(capsys.readouterr().out)["models"][MODEL]["identity"] == "pinned"
    assert main(["pins", "forget", MODEL, *args]) == 0
    assert main(["pins", "show", MODEL, *args]) == 1
    assert main(["pins", "forget", MODEL, *args]) == 1
    (store.directory / "pins.json").write_text("garbage")
    assert main(["pins", "list", *args]) == 78  # a corrupt store is a configuration error
    assert pins_command("list", PinStore(tmp_path / "empty")) == 0


def test_identity_any_is_warned_about_at_every_start(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.pins
    from sidecar.config import load_settings
    from sidecar.proxy.server import build_service_app

    events: list[tuple[str, str, dict[str, Any]]] = []

    class Recorder:
        # structlog caches bound loggers on first use, so its capture_logs cannot be relied on
        # once another test logged: record the module logger's calls instead.
        def info(self, event: str, **fields: Any) -> None:
            events.append(("info", event, fields))

        def warning(self, event: str, **fields: Any) -> None:
            events.append(("warning", event, fields))

    monkeypatch.setattr(sidecar.pins, "log", Recorder())
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(f'[models."{MODEL}"]\nidentity = "any"\n'
                           '[models."TEE/audited"]\n[models."TEE/audited".provenance]\n'
                           'repository = "https://github.com/example/images"\n')
    settings = load_settings(None, policy={"file": str(policy_file)},
                             state={"dir": str(tmp_path / "state")})
    build_service_app(settings)
    modes = next(f for level, e, f in events if e == "identity_modes")
    assert modes["any"] == [MODEL] and modes["tofu"] == ["TEE/audited", "(default) *"]
    assert modes["provenance_required"] == ["TEE/audited"]
    warning = next((level, f) for level, e, f in events if e == "identity_any")
    assert warning[0] == "warning" and MODEL in warning[1]["warning"]


def test_serve_refuses_to_start_on_a_corrupt_store(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "state" / "pins").mkdir(parents=True)
    (tmp_path / "state" / "pins" / "pins.json").write_text('{"format": "tee-sidecar-pins/1"')
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n[admin]\nenabled = false\n'
                      '[listen]\nport = 0\n')
    assert main(["serve", "--config", str(config)]) == 78
    assert "pin store" in capsys.readouterr().err
