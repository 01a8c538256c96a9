"""``make demo``: the main job on the built-in simulated providers, as a user would run it.

Starts ``tee-sidecar simulate`` and three ``tee-sidecar serve`` processes (one for the NanoGPT
profile, one for NEAR AI Cloud, one for NEAR AI Cloud with ``e2ee = "preferred"``), prints the full attestation report of the simulated model
(``tee-sidecar attest``), sends plain and streamed chat completions through the official
``openai`` package to each (NanoGPT renames the model on the way in; NEAR Cloud's node signs
plain answers and its gateway signs streams; an alias goes out as the attested canonical id),
shows a tampered answer being blocked, one end-to-end encrypted exchange on the simulated NEAR
gateway with what that gateway saw (``_e2ee_exchange``, read from the simulator's
``GET /_simulator/gateway``), and stops everything.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "TEE/simulated-llama-3.3-70b"
# The simulator's NEAR model: its canonical id and an alias (sidecar.simulator.provider).
NEAR_MODEL = "simulated-org/Simulated-Llama-3.3-70B-Instruct"
NEAR_ALIAS = "simulated-llama-3.3-70b"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not start listening on port {port}")


def _config(directory: Path, sim_port: int, port: int, admin_port: int, *,
            provider: str = "nanogpt", prefix: str = "/api", e2ee: str = "off",
            name: str | None = None) -> Path:
    sim = f"http://127.0.0.1:{sim_port}"
    name = name or provider
    path = directory / f"{name}.toml"
    path.write_text(f"""\
[listen]
port = {port}

[admin]
port = {admin_port}

[upstream]
provider = "{provider}"
base_url = "{sim}{prefix}"
api_key = "sk-simulated-demo-key"
# "preferred" only for the sidecar of the demo's last part; off for the others, so NEAR
# Cloud's gateway-signed streams show.
e2ee = "{e2ee}"

[attestation]
pccs_url = "{sim}/pcs"
nras_url = "{sim}/nras/v3/attest/gpu"
nvidia_jwks_url = "{sim}/nras/.well-known/jwks.json"
# The simulator's aliases are not in its model list; attest every name asked for.
only_known_models = false

[trust]
anchors = "simulator"

[log]
format = "json"

[state]
dir = "{directory / name / 'state'}"
""")
    return path


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


def _headers_line(headers: Any) -> str:
    """The verdict headers worth showing: verified, signer, kind, binding, served model."""
    shown = [f"x-tee-verified: {headers.get('x-tee-verified')}"]
    for name, label in (("x-tee-signature-kind", "kind"), ("x-tee-request-binding", "request"),
                        ("x-tee-served-model", "served model"),
                        ("x-tee-signing-address", "signed by")):
        if headers.get(name):
            shown.append(f"{label}: {headers[name]}")
    return "   ".join(shown)


def _exchanges(client: Any, model: str, messages: list[Any], what: str) -> None:
    """One plain and one streamed completion through the SDK, with their verdict headers."""
    _banner(f"{what}: plain chat completion ({model})")
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    print(f"answer:  {raw.parse().choices[0].message.content}")
    print(_headers_line(raw.headers))
    _banner(f"{what}: streamed chat completion (buffer mode: held until verified)")
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    ) as response:
        text = "".join(chunk.choices[0].delta.content or ""
                       for chunk in response.parse() if chunk.choices)
        print(f"answer:  {text}")
        print(_headers_line(response.headers))


def _simulator_json(sim_port: int, path: str, body: Any = None) -> Any:
    """GET (or, with ``body``, POST) one of the simulator's ``/_simulator/`` control routes."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{sim_port}/_simulator/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _gateway_seen(sim_port: int) -> list[bytes]:
    """What the simulated NEAR cloud gateway relayed so far, oldest first."""
    return [base64.b64decode(blob) for blob in _simulator_json(sim_port, "gateway")["seen"]]


def _e2ee_exchange(sim_port: int, e2ee_port: int) -> bool:
    """One end-to-end encrypted exchange through the sidecar configured with
    ``e2ee = "preferred"`` on the simulated NEAR cloud gateway, and what that gateway relayed.

    Returns whether the answer verified, was encrypted and the gateway saw no prompt text.
    """
    import openai

    _banner("end-to-end encryption through NEAR's (simulated) cloud gateway")
    prompt = "My account number is 7731-ZX; which plan suits me?"
    _simulator_json(sim_port, "faults", {})  # the man in the middle is gone
    before = len(_gateway_seen(sim_port))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{e2ee_port}/v1",
                           api_key="the-app-needs-no-real-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=NEAR_MODEL, messages=[{"role": "user", "content": prompt}])
    print(f"answer:  {raw.parse().choices[0].message.content}")
    print(f"x-tee-verified: {raw.headers['x-tee-verified']}   "
          f"x-tee-e2ee: {raw.headers['x-tee-e2ee']}")
    seen = _gateway_seen(sim_port)[before:]
    request = json.loads(seen[0])
    print("what the gateway relayed (request, then answer):")
    print(f"  messages[0].content = {request['messages'][0]['content'][:72]}…")
    answer = json.loads(seen[1])
    print(f"  choices[0].message.content = "
          f"{answer['choices'][0]['message']['content'][:72]}…")
    return (raw.headers["x-tee-verified"] == "true" and raw.headers["x-tee-e2ee"] == "true"
            and not any(prompt.encode() in blob for blob in seen))


def _start(python: str, sim_port: int, sidecars: list[tuple[Path, int]],
           log_file: Any, procs: list[subprocess.Popen[bytes]]) -> None:
    """Start the simulator and one ``serve`` per config, each once it listens (into ``procs``,
    which the caller stops whatever happens)."""
    procs.append(subprocess.Popen(
        [python, "-m", "sidecar", "simulate", "--port", str(sim_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    _wait_for(sim_port, procs[-1], "the simulator")
    for cfg, listen in sidecars:
        procs.append(subprocess.Popen(
            [python, "-m", "sidecar", "serve", "--config", str(cfg)],
            stdout=log_file, stderr=log_file, env=dict(os.environ)))
        _wait_for(listen, procs[-1], "the sidecar")


def _tour(python: str, config: Path, sim_port: int, port: int, near_port: int,
          e2ee_port: int) -> int:
    """Everything the demo shows, once the processes run; returns the exit status."""
    import openai
    from openai.types.chat import ChatCompletionMessageParam

    _banner(f"tee-sidecar attest {MODEL}")
    attest = subprocess.run([python, "-m", "sidecar", "attest", MODEL, "--config", str(config)],
                            check=False)
    if attest.returncode != 0:
        print(f"demo: attestation did not verify (exit {attest.returncode})")
        return 1

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                           api_key="the-app-needs-no-real-key", max_retries=0)
    near = openai.OpenAI(base_url=f"http://127.0.0.1:{near_port}/v1",
                         api_key="the-app-needs-no-real-key", max_retries=0)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What protects this conversation?"}]

    # NanoGPT renames TEE/... to the upstream id: the node signed the renamed bytes.
    _exchanges(client, MODEL, messages, "NanoGPT")
    # NEAR Cloud: the model node signs plain answers (provider_tee, 3-part text naming the
    # model), the gateway signs streams (gateway kind; E2EE streams stay provider_tee, see
    # the end); both keys are attested.
    _exchanges(near, NEAR_MODEL, messages, "NEAR AI Cloud")
    _banner(f"NEAR AI Cloud: the app names the alias {NEAR_ALIAS}")
    raw = near.chat.completions.with_raw_response.create(model=NEAR_ALIAS, messages=messages)
    print(f"answer:  {raw.parse().choices[0].message.content}")
    print(_headers_line(raw.headers))
    print("(sent upstream as the attested canonical id, with x-no-aliasing: true)")

    _banner("a man in the middle alters one byte of the answer")
    _simulator_json(sim_port, "faults", {"tamper_response": True})
    try:
        client.chat.completions.create(model=MODEL, messages=messages)
        print("demo: the tampered answer was delivered; this is a bug")
        return 1
    except openai.APIStatusError as exc:
        error = exc.response.json()["error"]
        print(f"blocked: HTTP {exc.status_code} {error['code']}: {error['message']}")

    if not _e2ee_exchange(sim_port, e2ee_port):
        print("demo: the E2EE exchange did not verify or leaked the prompt; this is a bug")
        return 1

    _banner("done")
    print("Every genuine completion was verified against an attested enclave key; "
          "the altered one never reached the app.")
    return 0


def main() -> int:
    """Run the demo; returns the process exit status."""
    with tempfile.TemporaryDirectory(prefix="tee-sidecar-demo-") as tmp:
        directory = Path(tmp)
        sim_port, port, admin_port = _free_port(), _free_port(), _free_port()
        near_port, near_admin_port = _free_port(), _free_port()
        e2ee_port, e2ee_admin_port = _free_port(), _free_port()
        config = _config(directory, sim_port, port, admin_port)
        near_config = _config(directory, sim_port, near_port, near_admin_port,
                              provider="near-cloud", prefix="/near-cloud")
        e2ee_config = _config(directory, sim_port, e2ee_port, e2ee_admin_port,
                              provider="near-cloud", prefix="/near-cloud", e2ee="preferred",
                              name="near-cloud-e2ee")
        log_file = (directory / "sidecar.log").open("wb")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            _start(sys.executable, sim_port,
                   [(config, port), (near_config, near_port), (e2ee_config, e2ee_port)],
                   log_file, procs)
            print(f"simulated providers: http://127.0.0.1:{sim_port}  (trusting the SIMULATOR's "
                  f"test roots)\ntee-sidecar for NanoGPT:       http://127.0.0.1:{port}/v1"
                  f"\ntee-sidecar for NEAR AI Cloud: http://127.0.0.1:{near_port}/v1"
                  f"\n  ... with E2EE:              http://127.0.0.1:{e2ee_port}/v1")
            return _tour(sys.executable, config, sim_port, port, near_port, e2ee_port)
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log_file.close()


if __name__ == "__main__":
    raise SystemExit(main())
