"""Structural checks of the deployment files: Dockerfile, systemd unit, Kubernetes manifests and
the example configs. Cheap and offline; the real linters run in ``scripts/lint-deploy.sh``."""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "systemd" / "tee-sidecar.service"
UNIT_CONFIG = ROOT / "systemd" / "tee-sidecar.toml"
EXAMPLE_CONFIG = ROOT / "config" / "tee-sidecar.toml"
K8S_DIR = ROOT / "config" / "kubernetes"
CONFIG_PATH_IN_IMAGE = "/etc/tee-sidecar/tee-sidecar.toml"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: keep the developer's TEE_SIDECAR_* out of these tests."""
    for name in list(os.environ):
        if name.startswith("TEE_SIDECAR_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


# --- Dockerfile ------------------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def _image_uid() -> int:
    users = [rest for kw, rest in _final_stage() if kw == "USER"]
    assert users, "the final stage sets no USER"
    return int(users[-1].split(":")[0])


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    froms = [rest for kw, rest in _dockerfile_instructions() if kw == "FROM"]
    assert len(froms) >= 2
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    final_base = froms[-1].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
    assert re.fullmatch(r"python:3\.11-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", final_base)


def test_dockerfile_final_stage_has_no_build_tools() -> None:
    runs = " ".join(rest for kw, rest in _final_stage() if kw == "RUN")
    for tool in ("apt-get install", "gcc", "build-essential", "pip install", "curl", "wget"):
        assert tool not in runs


def test_dockerfile_runs_as_numeric_non_root_user() -> None:
    assert _image_uid() > 0


def test_dockerfile_healthcheck_asks_livez_without_curl() -> None:
    checks = [rest for kw, rest in _final_stage() if kw == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/livez" in checks[0] and "urllib.request" in checks[0]
    assert "curl" not in checks[0]


def test_dockerfile_entrypoint_and_command() -> None:
    final = dict(_final_stage())
    assert final["ENTRYPOINT"] == '["tee-sidecar"]'
    assert final["CMD"] == f'["serve", "--config", "{CONFIG_PATH_IN_IMAGE}"]'
    assert "8787/tcp" in final["EXPOSE"] and "8788/tcp" in final["EXPOSE"]


def test_dockerfile_keeps_proxy_off_all_interfaces() -> None:
    """The proxy adds the API key to what it relays: the image must not expose it by default."""
    env = " ".join(rest for kw, rest in _final_stage() if kw == "ENV")
    assert "TEE_SIDECAR_ADMIN__HOST=0.0.0.0" in env
    assert "TEE_SIDECAR_LISTEN__HOST" not in env


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copies = [rest.split() for kw, rest in _dockerfile_instructions()
              if kw == "COPY" and not rest.startswith("--from")]
    for parts in copies:
        for source in parts[:-1]:
            assert source.rstrip("/") in allowed, source


# --- systemd ---------------------------------------------------------------------------------

def _unit() -> dict[str, dict[str, list[str]]]:
    """The unit as section -> key -> every value (keys like SystemCallFilter= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_unit_identity_credential_and_directories() -> None:
    service = _unit()["Service"]
    assert service["DynamicUser"] == ["yes"]
    assert service["LoadCredential"] == ["api_key:/etc/tee-sidecar/api_key"]
    assert service["StateDirectory"] == ["tee-sidecar"]
    assert service["CacheDirectory"] == ["tee-sidecar"]
    assert service["ExecStart"] == [
        f"/usr/local/bin/tee-sidecar serve --config {CONFIG_PATH_IN_IMAGE}"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert "TimeoutStopSec" in service


@pytest.mark.parametrize(("key", "value"), [
    ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"), ("NoNewPrivileges", "yes"), ("CapabilityBoundingSet", ""),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("SystemCallFilter", "@system-service"), ("SystemCallArchitectures", "native"),
    ("MemoryDenyWriteExecute", "yes"), ("LockPersonality", "yes"), ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"), ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"), ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"), ("ProtectClock", "yes"), ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"), ("ProcSubset", "pid"), ("UMask", "0077"),
])
def test_unit_hardening(key: str, value: str) -> None:
    assert value in _unit()["Service"].get(key, [])


def test_unit_socket_bind_allow_matches_its_config_ports() -> None:
    config = tomllib.loads(UNIT_CONFIG.read_text(encoding="utf-8"))
    allowed = _unit()["Service"]["SocketBindAllow"]
    assert sorted(allowed) == sorted(
        f"tcp:{config[section]['port']}" for section in ("listen", "admin"))


def test_unit_config_leaves_key_and_state_dir_to_systemd() -> None:
    config = tomllib.loads(UNIT_CONFIG.read_text(encoding="utf-8"))
    assert not {"api_key", "api_key_file"} & config.get("upstream", {}).keys()
    assert "dir" not in config.get("state", {})


# --- Kubernetes ------------------------------------------------------------------------------

def _k8s_objects() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    objects = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def _pod_spec() -> dict[str, Any]:
    deployments = [o for k, o in _k8s_objects().items() if k.startswith("Deployment/")]
    assert len(deployments) == 1
    spec: dict[str, Any] = deployments[0]["spec"]["template"]["spec"]
    return spec


def _sidecar() -> dict[str, Any]:
    (container,) = [c for c in _pod_spec()["initContainers"] if c["name"] == "tee-sidecar"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_k8s_sidecar_is_native() -> None:
    assert _sidecar()["restartPolicy"] == "Always"


def test_k8s_probes_on_the_admin_port() -> None:
    sidecar = _sidecar()
    admin_ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert admin_ports == {"admin": 8788}
    paths = {kind: sidecar[kind]["httpGet"]["path"]
             for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"startupProbe": "/livez", "readinessProbe": "/readyz",
                     "livenessProbe": "/livez"}
    for kind in paths:
        assert sidecar[kind]["httpGet"]["port"] == "admin"


def test_k8s_listeners_proxy_on_loopback_admin_on_pod_ip() -> None:
    env = _env(_sidecar())
    assert env["TEE_SIDECAR_LISTEN__HOST"] == "127.0.0.1"
    assert env["TEE_SIDECAR_ADMIN__HOST"] == "0.0.0.0"


@pytest.mark.parametrize("name", ["tee-sidecar", "app"])
def test_k8s_container_security_context(name: str) -> None:
    spec = _pod_spec()
    (container,) = [c for c in spec["initContainers"] + spec["containers"] if c["name"] == name]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_k8s_runs_as_the_image_uid() -> None:
    assert _pod_spec()["securityContext"]["runAsUser"] == _image_uid()
    assert _sidecar()["securityContext"]["runAsUser"] == _image_uid()


def test_k8s_api_key_file_is_mounted_from_the_secret() -> None:
    spec, sidecar, objects = _pod_spec(), _sidecar(), _k8s_objects()
    key_file = Path(_env(sidecar)["TEE_SIDECAR_UPSTREAM__API_KEY_FILE"])
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True
    assert f"Secret/{volume['secret']['secretName']}" in objects
    assert [i["path"] for i in volume["secret"]["items"]] == [key_file.name]


def test_k8s_state_is_an_empty_dir_at_state_directory() -> None:
    spec, sidecar = _pod_spec(), _sidecar()
    state_dir = _env(sidecar)["STATE_DIRECTORY"]
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == state_dir]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


def test_k8s_config_map_holds_the_toml_at_the_image_path() -> None:
    spec, sidecar, objects = _pod_spec(), _sidecar(), _k8s_objects()
    assert sidecar["args"] == ["serve", "--config", CONFIG_PATH_IN_IMAGE]
    config_path = Path(CONFIG_PATH_IN_IMAGE)
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    config_map = objects[f"ConfigMap/{volume['configMap']['name']}"]
    tomllib.loads(config_map["data"][config_path.name])


def test_k8s_app_talks_to_the_sidecar_on_loopback() -> None:
    (app,) = _pod_spec()["containers"]
    assert _env(app)["OPENAI_BASE_URL"] == "http://127.0.0.1:8787/v1"


# --- the example configs load ----------------------------------------------------------------

def _config_map_toml(tmp_path: Path) -> Path:
    (config_map,) = [o for k, o in _k8s_objects().items() if k.startswith("ConfigMap/")]
    path = tmp_path / "tee-sidecar.toml"
    path.write_text(config_map["data"]["tee-sidecar.toml"], encoding="utf-8")
    return path


@pytest.mark.parametrize("which", ["config/tee-sidecar.toml", "systemd/tee-sidecar.toml",
                                   "config/kubernetes/configmap.yaml"])
def test_example_config_loads(which: str, tmp_path: Path) -> None:
    path = _config_map_toml(tmp_path) if which.endswith(".yaml") else ROOT / which
    missing = sorted(tomllib.loads(path.read_text(encoding="utf-8")).keys()
                     - Settings.model_fields.keys())
    assert not missing
    load_settings(path)


def test_example_config_documents_every_setting_with_its_default() -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    for section, field in Settings.model_fields.items():
        assert re.search(rf"^\[{section}\]$", text, re.MULTILINE), section
        model = field.annotation
        assert model is not None
        for key in model.model_fields:  # type: ignore[union-attr]
            assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE), f"{section}.{key}"
    # The keys set (not commented out) carry exactly the built-in defaults.
    known = {k: v for k, v in tomllib.loads(text).items() if k in Settings.model_fields}
    assert load_settings(None, **known).model_dump() == Settings().model_dump()


def test_example_config_leaves_state_dir_unset() -> None:
    """Setting state.dir would override StateDirectory= under systemd and in the image."""
    assert "dir" not in tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))["state"]


def test_docker_example_command_matches_unit_command() -> None:
    command = shlex.split(_unit()["Service"]["ExecStart"][0])
    assert command[1:] == ["serve", "--config", CONFIG_PATH_IN_IMAGE]


def test_unit_raises_the_descriptor_limit_above_the_per_client_bound() -> None:
    # Issue 11, finding 9: ~1,100 half-sent requests starved the default 1,024 descriptors.
    from sidecar.config import LimitsSettings

    [value] = _unit()["Service"]["LimitNOFILE"]
    assert int(value) >= 8 * LimitsSettings().max_connections_per_client
