"""The sidecar as a real process: start-up errors, admin listener, receipts, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from sidecar.receipts import verify_receipts
from tests.conftest import TEE_MODEL

MESSAGES = [{"role": "user", "content": "A PROMPT THAT MUST NEVER BE LOGGED"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def set_faults(sim: str, **faults: object) -> None:
    request = urllib.request.Request(f"{sim}/_simulator/faults", data=json.dumps(faults).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()


class Service:
    def __init__(self, tmp: Path, **extra: str) -> None:
        self.tmp = tmp
        self.sim_port, self.port, self.admin_port = free_port(), free_port(), free_port()
        self.sim = f"http://127.0.0.1:{self.sim_port}"
        self.simulator = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "simulate", "--port", str(self.sim_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.sim_port, self.simulator)
        self.env = {
            **os.environ,
            "TEE_SIDECAR_LISTEN__PORT": str(self.port),
            "TEE_SIDECAR_ADMIN__PORT": str(self.admin_port),
            "TEE_SIDECAR_UPSTREAM__BASE_URL": f"{self.sim}/api",
            "TEE_SIDECAR_UPSTREAM__API_KEY": "sk-secret-key-never-logged",
            "TEE_SIDECAR_ATTESTATION__PCCS_URL": f"{self.sim}/pcs",
            "TEE_SIDECAR_ATTESTATION__NRAS_URL": f"{self.sim}/nras/v3/attest/gpu",
            "TEE_SIDECAR_TRUST__ANCHORS": "simulator",
            "TEE_SIDECAR_STATE__DIR": str(tmp / "state"),
            "TEE_SIDECAR_LOG__FORMAT": "json",
            **extra,
        }
        self.log = (tmp / "sidecar.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=self.env,
                                     stdout=self.log, stderr=self.log)
        wait_port(self.port, self.proc)
        wait_port(self.admin_port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    def simulator_has_requests(self) -> bool:
        status, body = get(f"{self.sim}/_simulator/stats")
        return status == 200 and json.loads(body)["completions_served"] > 0

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.tmp / "sidecar.log").read_text()

    def stop(self) -> None:
        for proc in (self.proc, self.simulator):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        self.log.close()


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path, TEE_SIDECAR_ATTESTATION__WARM_MODELS=json.dumps([TEE_MODEL]))
    yield s
    s.stop()


def test_admin_listener_is_ready_once_warm_models_attested(service: Service) -> None:
    assert get(service.admin + "/livez")[0] == 200
    deadline = time.monotonic() + 20
    while get(service.admin + "/readyz")[0] != 200:
        assert time.monotonic() < deadline, get(service.admin + "/readyz")
        time.sleep(0.1)
    client = openai.OpenAI(base_url=service.url, api_key="x", max_retries=0)
    client.chat.completions.create(model=TEE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    status, metrics = get(service.admin + "/metrics")
    assert status == 200
    assert b'tee_sidecar_verifications_total{kind="signature",result="pass"} 1.0' in metrics
    assert b'tee_sidecar_verifications_total{kind="attestation",result="pass"} 1.0' in metrics
    status, document = get(service.admin + "/status.json")
    assert TEE_MODEL in document.decode()
    assert get(service.admin + "/status")[0] == 200


def test_receipts_logs_and_secrets(service: Service) -> None:
    client = openai.OpenAI(base_url=service.url, api_key="app-key-never-logged", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=TEE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.headers["x-tee-verified"] == "true"
    set_faults(service.sim, tamper_response=True)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model=TEE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    service.stop()

    receipts = service.tmp / "state" / "receipts" / "receipts.jsonl"
    report = verify_receipts(receipts)
    assert (report.total, report.verified, report.recorded_failed, report.invalid) == (2, 1, 1, 0)
    text = receipts.read_text() + service.logs()
    for secret in ("A PROMPT THAT MUST NEVER BE LOGGED", "sk-secret-key-never-logged",
                   "app-key-never-logged", "Confidential inference"):
        assert secret not in text
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    assert requests and all(line.get("request_id") for line in requests)


def test_sigterm_lets_a_stream_in_flight_finish(service: Service) -> None:
    set_faults(service.sim, token_delay=0.1)  # 18 events: about 1.8 s of streaming
    client = openai.OpenAI(base_url=service.url, api_key="x", max_retries=0)
    result: dict[str, object] = {}

    def stream() -> None:
        try:
            with client.chat.completions.with_streaming_response.create(
                model=TEE_MODEL, messages=MESSAGES, stream=True  # type: ignore[arg-type]
            ) as response:
                result["headers"] = dict(response.headers)
                result["text"] = "".join(c.choices[0].delta.content or ""
                                         for c in response.parse() if c.choices)
        except Exception as exc:  # reported below rather than lost in the thread
            result["error"] = exc

    # Buffer mode: the response (headers included) leaves only once the stream was verified,
    # so wait until the simulator has started streaming, then signal mid-stream.
    thread = threading.Thread(target=stream)
    thread.start()
    deadline = time.monotonic() + 10
    while not service.simulator_has_requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a few of the 18 events (0.1 s apart) are in flight
    service.proc.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    assert service.proc.wait(timeout=30) == 0
    assert result["headers"]["x-tee-verified"] == "true"  # type: ignore[index]
    assert str(result["text"]).endswith("signed by its key.")
    receipts = service.tmp / "state" / "receipts" / "receipts.jsonl"
    assert verify_receipts(receipts).verified == 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", service.port), timeout=0.5)


@pytest.mark.parametrize("env, key", [
    ({"TEE_SIDECAR_VERIFICATION__MODE": "paranoid"}, "verification.mode"),
    ({"TEE_SIDECAR_LISTEN__PORT": "http"}, "listen.port"),
])
def test_bad_setting_stops_start_up_with_one_line_naming_the_key(env: dict[str, str],
                                                                 key: str) -> None:
    result = subprocess.run([sys.executable, "-m", "sidecar", "serve"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr


def test_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[verification]\nmode = 'enforce'\nsurprise = 1\n")
    result = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert "verification.surprise" in result.stderr


def test_start_up_failures_are_one_line_not_a_trace(tmp_path: Path) -> None:
    env = {**os.environ, "TEE_SIDECAR_STATE__DIR": str(tmp_path / "state"),
           "TEE_SIDECAR_ADMIN__ENABLED": "false"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "sidecar", "serve"],
                                env={**env, "TEE_SIDECAR_LISTEN__PORT": str(port)},
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tee-sidecar: ")


@pytest.mark.parametrize("argv", [["simulate", "--port", "99999"], ["simulate", "--nodes", "0"],
                                  ["serve", "--no-such-flag"]])
def test_bad_arguments_exit_with_ex_usage(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "sidecar", *argv], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 64 and "error:" in result.stderr


# -- slowloris and oversized headers (issue 11, finding 9) ---------------------------------------


def _raw(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def _openai_error(raw: bytes) -> tuple[int, dict[str, str], str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)["error"]["code"]


def test_an_oversized_request_header_gets_an_openai_error_without_a_trace(
        service: Service) -> None:
    raw = _raw(service.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"X-Big: " + b"a" * (64 << 10) + b"\r\n\r\n")
    status, headers, code = _openai_error(raw)
    assert (status, code) == (431, "limits.request_header_too_large")
    assert headers["x-tee-failure"] == code and headers["x-tee-verified"] == "false"
    assert "Traceback" not in service.logs()


@pytest.fixture()
def tight_service(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path, TEE_SIDECAR_LIMITS__HEADER_TIMEOUT="0.5",
                TEE_SIDECAR_LIMITS__MAX_CONNECTIONS_PER_CLIENT="20")
    yield s
    s.stop()


def test_a_half_sent_request_is_answered_408_and_closed(tight_service: Service) -> None:
    started = time.monotonic()
    raw = _raw(tight_service.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert time.monotonic() - started < 4
    status, headers, code = _openai_error(raw)
    assert (status, code) == (408, "limits.header_timeout")
    assert headers["x-tee-failure"] == code
    time.sleep(0.2)
    assert "Traceback" not in tight_service.logs()


def test_half_open_connections_are_counted_per_client(tight_service: Service) -> None:
    held = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", tight_service.port), timeout=5)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127")
            held.append(sock)
        time.sleep(0.1)
        status, headers, code = _openai_error(_raw(tight_service.port, b""))
        assert (status, code) == (429, "limits.too_many_connections")
        assert headers["x-should-retry"] == "true"
        # Once the deadline has closed them, the client is served again.
        time.sleep(1.0)
        status, _ = get(tight_service.url + "/models")
        assert status == 200
    finally:
        for sock in held:
            sock.close()
