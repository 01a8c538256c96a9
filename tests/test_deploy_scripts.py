"""The deploy scripts and their wiring: what `make image`, `make test-image` and
`make test-systemd` do when Docker cannot run, and that CI runs them.

The end-to-end runs themselves need a Docker engine and root (scripts/test-image.sh,
scripts/test-systemd.sh); these checks are cheap and hermetic.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SYSTEMD_TEST_DOCKERFILE = ROOT / "scripts" / "systemd-test" / "Dockerfile"


def _run_without_engine(script: str) -> subprocess.CompletedProcess[str]:
    """Run a deploy script with the Docker client pointed at a socket nobody listens on."""
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/tee-sidecar-test.sock")
    return subprocess.run(["bash", str(ROOT / "scripts" / script)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("script", "target"), [("test-image.sh", "make test-image"),
                                                ("test-systemd.sh", "make test-systemd")])
def test_deploy_test_without_docker_is_skipped_loudly(script: str, target: str) -> None:
    """Without an engine the test passes as SKIPPED with the reason, never silently."""
    result = _run_without_engine(script)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^SKIPPED: {target}: \S", result.stderr, re.MULTILINE), result.stderr
    assert "PASSED" not in result.stdout + result.stderr


def test_make_image_without_docker_fails() -> None:
    """`make image` was asked for explicitly: no engine is an error, not a skip."""
    result = _run_without_engine("build-image.sh")
    assert result.returncode != 0
    assert "build-image: cannot build:" in result.stderr
    assert "SKIPPED" not in result.stderr


def _makefile_recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"no target {target}"
    return match.group(1)


@pytest.mark.parametrize(("target", "script"), [("image", "scripts/build-image.sh"),
                                                ("test-image", "scripts/test-image.sh"),
                                                ("test-systemd", "scripts/test-systemd.sh")])
def test_make_targets_run_the_scripts(target: str, script: str) -> None:
    assert script in _makefile_recipe(target)


def test_ci_runs_the_deploy_tests_after_the_suite() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line.startswith(("make ", "timeout "))]
    assert "make test" in commands
    test_at = commands.index("make test")
    image_at = next(i for i, c in enumerate(commands) if c.endswith("make test-image"))
    systemd_at = next(i for i, c in enumerate(commands) if c.endswith("make test-systemd"))
    assert test_at < image_at < systemd_at


def test_ci_starts_dockerd_only_when_none_answers() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    assert "docker.io" in text and "debootstrap" in text
    assert re.search(r"! docker info .*\n\s+dockerd .*&", text)


# --- the Dockerfile's CA bundle --------------------------------------------------------------

def _stages(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return re.split(r"^FROM ", code, flags=re.MULTILINE)[1:]


def test_ca_bundle_reaches_the_builder_only_as_a_secret() -> None:
    builder, final = _stages(DOCKERFILE)
    assert "--mount=type=secret,id=ca_bundle" in builder
    for stage in (builder, final):
        assert not re.search(r"^(ARG|ENV|COPY|ADD)\b.*(ca_bundle|PIP_CERT|\.crt|\.pem)", stage,
                             re.MULTILINE | re.IGNORECASE)
    assert "ca_bundle" not in final and "PIP_CERT" not in final


def test_final_venv_ships_without_pip() -> None:
    builder, _ = _stages(DOCKERFILE)
    assert "pip uninstall --yes --quiet pip setuptools" in builder


def test_systemd_test_image_installs_the_shipped_unit_and_settings() -> None:
    (stage,) = _stages(SYSTEMD_TEST_DOCKERFILE)
    assert "COPY tee-sidecar.service /etc/systemd/system/tee-sidecar.service" in stage
    assert "COPY tee-sidecar.toml /etc/tee-sidecar/tee-sidecar.toml" in stage
    assert "ln -s /opt/tee-sidecar/bin/tee-sidecar /usr/local/bin/tee-sidecar" in stage
    script = (ROOT / "scripts" / "test-systemd.sh").read_text()
    assert "cp systemd/tee-sidecar.service systemd/tee-sidecar.toml" in script


def _build_ca_bundle(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in {"BUILD_CA_BUNDLE", "PIP_CERT", "SSL_CERT_FILE"}}
    result = subprocess.run(["bash", "-c", "source scripts/docker-lib.sh && build_ca_bundle"],
                            env={**clean, **env}, cwd=ROOT, capture_output=True, text=True,
                            timeout=30, check=True)
    return result.stdout.strip()


def test_build_ca_bundle_order(tmp_path: Path) -> None:
    """The build trusts what the machine trusts unless told otherwise; empty means none."""
    mine, pips = tmp_path / "mine.pem", tmp_path / "pip.pem"
    mine.write_text("x")
    pips.write_text("x")
    assert _build_ca_bundle(BUILD_CA_BUNDLE=str(mine), PIP_CERT=str(pips)) == str(mine)
    assert _build_ca_bundle(BUILD_CA_BUNDLE="", PIP_CERT=str(pips)) == ""
    assert _build_ca_bundle(PIP_CERT=str(pips)) == str(pips)
    assert _build_ca_bundle(PIP_CERT=str(tmp_path / "missing.pem"),
                            SSL_CERT_FILE=str(mine)) == str(mine)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    assert _build_ca_bundle() == (str(system) if system.exists() else "")


def test_local_base_reason_names_what_is_missing() -> None:
    """No local base and no way to build one: the reason the deploy tests skip with."""
    env = dict(os.environ, DOCKER="docker", PATH="/usr/bin:/bin",
               DOCKER_HOST="unix:///nonexistent/tee-sidecar-test.sock")
    result = subprocess.run(
        ["bash", "-c", "source scripts/docker-lib.sh && local_base_reason no-such-base:tag"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    assert "the local Debian base no-such-base:tag must be built, and debootstrap" in result.stdout
