"""``make demo``: the main job on the built-in simulated provider, as a user would run it.

Starts ``tee-sidecar simulate`` and ``tee-sidecar serve`` as separate processes, prints the full
attestation report of the simulated model (``tee-sidecar attest``), sends one streamed and one
plain chat completion through the official ``openai`` package, shows a tampered answer being
blocked, one end-to-end encrypted exchange on the simulated NEAR gateway with what that gateway
saw (``_e2ee_exchange``), and stops everything.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MODEL = "TEE/simulated-llama-3.3-70b"


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


def _config(directory: Path, sim_port: int, port: int, admin_port: int) -> Path:
    sim = f"http://127.0.0.1:{sim_port}"
    path = directory / "tee-sidecar.toml"
    path.write_text(f"""\
[listen]
port = {port}

[admin]
port = {admin_port}

[upstream]
provider = "nanogpt"
base_url = "{sim}/api"
api_key = "sk-simulated-demo-key"

[attestation]
pccs_url = "{sim}/pcs"
nras_url = "{sim}/nras/v3/attest/gpu"
nvidia_jwks_url = "{sim}/nras/.well-known/jwks.json"

[trust]
anchors = "simulator"

[log]
format = "json"

[state]
dir = "{directory / 'state'}"
""")
    return path


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


def _e2ee_exchange() -> bool:
    """One end-to-end encrypted exchange through a sidecar on the simulated NEAR cloud gateway
    (in this process: ``sidecar.simulator.stack.Stack``), and what that gateway relayed.

    Returns whether the answer verified, was encrypted and the gateway saw no prompt text.
    """
    import openai

    from sidecar.simulator.provider import CANONICAL_MODEL
    from sidecar.simulator.stack import Stack

    _banner("end-to-end encryption through NEAR's (simulated) cloud gateway")
    prompt = "My account number is 7731-ZX; which plan suits me?"
    with tempfile.TemporaryDirectory(prefix="tee-sidecar-e2ee-demo-") as tmp:
        stack = Stack(Path(tmp), profile="near-cloud")
        try:
            client = openai.OpenAI(base_url=stack.sidecar(), api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model=CANONICAL_MODEL, messages=[{"role": "user", "content": prompt}])
            print(f"answer:  {raw.parse().choices[0].message.content}")
            print(f"x-tee-verified: {raw.headers['x-tee-verified']}   "
                  f"x-tee-e2ee: {raw.headers['x-tee-e2ee']}")
            seen = stack.call(lambda: list(stack.simulator.gateway_seen))
            request = json.loads(seen[0])
            print("what the gateway relayed (request, then answer):")
            print(f"  messages[0].content = {request['messages'][0]['content'][:72]}…")
            answer = json.loads(seen[1])
            print(f"  choices[0].message.content = "
                  f"{answer['choices'][0]['message']['content'][:72]}…")
            return (raw.headers["x-tee-verified"] == "true" and raw.headers["x-tee-e2ee"] == "true"
                    and not any(prompt.encode() in blob for blob in seen))
        finally:
            stack.close()


def main() -> int:
    """Run the demo; returns the process exit status."""
    import openai
    from openai.types.chat import ChatCompletionMessageParam

    with tempfile.TemporaryDirectory(prefix="tee-sidecar-demo-") as tmp:
        directory = Path(tmp)
        sim_port, port, admin_port = _free_port(), _free_port(), _free_port()
        config = _config(directory, sim_port, port, admin_port)
        log_file = (directory / "sidecar.log").open("wb")
        python = sys.executable
        env = dict(os.environ)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(subprocess.Popen(
                [python, "-m", "sidecar", "simulate", "--port", str(sim_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_for(sim_port, procs[-1], "the simulator")
            procs.append(subprocess.Popen([python, "-m", "sidecar", "serve", "--config", str(config)],
                                          stdout=log_file, stderr=log_file, env=env))
            _wait_for(port, procs[-1], "the sidecar")
            print(f"simulated provider: http://127.0.0.1:{sim_port}  "
                  f"tee-sidecar: http://127.0.0.1:{port}/v1  (trusting the SIMULATOR's test roots)")

            _banner(f"tee-sidecar attest {MODEL}")
            attest = subprocess.run([python, "-m", "sidecar", "attest", MODEL, "--config", str(config)],
                                    check=False)
            if attest.returncode != 0:
                print(f"demo: attestation did not verify (exit {attest.returncode})")
                return 1

            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                   api_key="the-app-needs-no-real-key", max_retries=0)
            messages: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": "What protects this conversation?"}]

            _banner("plain chat completion through the openai SDK")
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
            completion = raw.parse()
            print(f"answer:  {completion.choices[0].message.content}")
            print(f"x-tee-verified: {raw.headers['x-tee-verified']}   "
                  f"signed by {raw.headers.get('x-tee-signing-address')}")

            _banner("streamed chat completion (buffer mode: held until verified)")
            with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
            ) as response:
                text = "".join(chunk.choices[0].delta.content or ""
                               for chunk in response.parse() if chunk.choices)
                print(f"answer:  {text}")
                print(f"x-tee-verified: {response.headers['x-tee-verified']}   "
                      f"signed by {response.headers.get('x-tee-signing-address')}")

            _banner("a man in the middle alters one byte of the answer")
            request = urllib.request.Request(
                f"http://127.0.0.1:{sim_port}/_simulator/faults",
                data=json.dumps({"tamper_response": True}).encode(), method="POST",
                headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=10).close()
            try:
                client.chat.completions.create(model=MODEL, messages=messages)
                print("demo: the tampered answer was delivered; this is a bug")
                return 1
            except openai.APIStatusError as exc:
                error = exc.response.json()["error"]
                print(f"blocked: HTTP {exc.status_code} {error['code']}: {error['message']}")

            if not _e2ee_exchange():
                print("demo: the E2EE exchange did not verify or leaked the prompt; this is a bug")
                return 1

            _banner("done")
            print("Both genuine completions were verified against the attested enclave key; "
                  "the altered one never reached the app.")
            return 0
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
