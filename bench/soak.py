"""Soak run: many concurrent clients against a real sidecar process, a share of them attacked.

    .venv/bin/python bench/soak.py --clients 200 --duration 300 --tamper-share 0.1

Starts three processes on loopback, all of which it stops at the end:

  simulator  ``python -m sidecar simulate --port P``
  MITM       ``python -m tests.adversarial.mitm --upstream <simulator> --port M``: tampers with
             exactly the completions whose request body carries a marker (tests/adversarial/mitm.py
             ``MARKERS``: flip a byte of the answer, change a byte of the request, drop an SSE
             event, answer the signature fetch with another completion's record)
  sidecar    ``python -m sidecar serve --config <tmp toml>``, enforce mode, upstream = the MITM

Each client loops until the deadline: a chat completion, streamed or plain at random, carrying a
tamper marker with probability ``--tamper-share``. Every answer is classified:

  verified     200, ``x-tee-verified: true``, and the body is byte for byte what the simulator
               signed (checked here independently: the simulator's own signature record for the
               chat id, fetched directly, names sha256(request):sha256(body), or NanoGPT's
               3-part text over the request with the model renamed)
  blocked      a tampered request answered 502 with ``x-tee-verified: false``
  unverified   a 200 whose body differs from what the simulator signed, or a tampered request
  delivery     that got a 200: the failure this run exists to find (must be 0)
  unexpected   anything else: an untampered request not verified, a 5xx other than the block,
               a connection error (must be 0)

It prints those counts and the sidecar's resident memory (VmRSS) at start, every ``--sample``
seconds, and at the end, then exits 1 if any unverified delivery or unexpected error occurred.
Not part of the unit suite: the run is bounded by ``--duration`` (plus start-up and drain).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
TEE_MODEL = "TEE/simulated-llama-3.3-70b"
# The id NanoGPT renames it to on the way in (the simulator's NANOGPT_UPSTREAM_MODEL).
NANOGPT_UPSTREAM_MODEL = "simulated-org/Simulated-Llama-3.3-70B-Instruct"
MARKERS = ("tamper-response", "tamper-request", "tamper-drop-event", "tamper-signature")
# Start-up of the three processes (the first attestation included) must not take longer.
READY_TIMEOUT = 60.0
# A single request must never take longer than this, whatever the MITM does.
REQUEST_TIMEOUT = 60.0


def free_port() -> int:
    """A free loopback port (the tiny race with another binder is acceptable on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``, from /proc."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sidecar_config(path: Path, *, port: int, mitm: str, state_dir: Path, clients: int) -> None:
    """The TOML the sidecar runs with: as ``simulator_settings``, upstream through the MITM."""
    sys.path.insert(0, str(REPO))
    from sidecar.config import LimitsSettings, Settings

    sections = [
        f'[listen]\nhost = "127.0.0.1"\nport = {port}\n',
        f'[upstream]\nprovider = "nanogpt"\nbase_url = "{mitm}/api"\napi_key = "sk-simulated"\n'
        'signature_retry_delay = 0.01\nread_timeout = 30.0\n',
        f'[attestation]\npccs_url = "{mitm}/pcs"\nnras_url = "{mitm}/nras/v3/attest/gpu"\n'
        f'nvidia_jwks_url = "{mitm}/nras/.well-known/jwks.json"\n',
        '[trust]\nanchors = "simulator"\n',
        '[verification]\nmode = "enforce"\nstream = "buffer"\n',
        f'[state]\ndir = "{state_dir}"\n',
        '[log]\nformat = "json"\nlevel = "warning"\n',
    ]
    fields = Settings.model_fields
    if "limits" in fields:
        # Every soak client comes from 127.0.0.1: the per-client bound must admit all of them.
        sections.append(f"[limits]\nmax_concurrent_per_client = {max(256, clients * 2)}\n"
                        "stream_timeout = 60.0\n"
                        + (f"max_connections_per_client = {max(512, clients * 2)}\n"
                           if "max_connections_per_client" in LimitsSettings.model_fields else ""))
    if "admin" in fields:
        sections.append("[admin]\nenabled = false\n")
    path.write_text("\n".join(sections))


@dataclass
class Tally:
    """What the clients saw."""

    counts: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[float, int]] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def note(self, outcome: str, detail: str | None = None) -> None:
        self.counts[outcome] += 1
        if detail and len(self.examples) < 20:
            self.examples.append(f"{outcome}: {detail}")


def signed_texts_for(request: bytes, answer: bytes) -> set[str]:
    """The texts a genuine signature over exactly these bytes may have: the request as sent, or
    as NanoGPT forwards it (only the model renamed to the upstream id, a 3-part text; spec 0.1).
    The rename is computed here by plain byte replacement, independently of the sidecar."""
    response = hashlib.sha256(answer).hexdigest()
    renamed = request.replace(json.dumps(TEE_MODEL).encode(),
                              json.dumps(NANOGPT_UPSTREAM_MODEL).encode(), 1)
    return {f"{hashlib.sha256(request).hexdigest()}:{response}",
            f"{NANOGPT_UPSTREAM_MODEL}:{hashlib.sha256(renamed).hexdigest()}:{response}"}


async def signed_text(session: aiohttp.ClientSession, simulator: str, chat_id: str) -> str | None:
    """The text the simulator signed for ``chat_id``, fetched directly (not through the MITM)."""
    async with session.get(f"{simulator}/api/v1/tee/signature/{chat_id}",
                           params={"model": TEE_MODEL, "signing_algo": "ecdsa"},
                           headers={"Authorization": "Bearer sk-simulated"}) as resp:
        if resp.status != 200:
            return None
        record = await resp.json()
        return str(record.get("text"))


def chat_id_of(body: bytes, stream: bool) -> str | None:
    """The completion id of a delivered answer."""
    payload = body
    if stream:
        first = body.split(b"\n\n", 1)[0]
        payload = first.removeprefix(b"data: ")
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value.get("id") if isinstance(value, dict) else None


async def one_request(session: aiohttp.ClientSession, sidecar: str, simulator: str,
                      serial: int, tamper_share: float, stream_share: float, tally: Tally) -> None:
    stream = random.random() < stream_share
    marker = random.choice(MARKERS) if random.random() < tamper_share else None
    content = f"soak request {serial}" + (f" {marker}" if marker else "")
    body = json.dumps({"model": TEE_MODEL, "stream": stream, "max_tokens": random.randint(1, 15),
                       "messages": [{"role": "user", "content": content}]}).encode()
    try:
        async with session.post(f"{sidecar}/v1/chat/completions", data=body,
                                headers={"Content-Type": "application/json"}) as resp:
            answer = await resp.read()
            status, verified = resp.status, resp.headers.get("x-tee-verified")
            failure = resp.headers.get("x-tee-failure")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        tally.note("unexpected", f"{type(exc).__name__} on {'tampered' if marker else 'genuine'}")
        return
    tally.note("served")
    if status == 200:
        chat_id = chat_id_of(answer, stream)
        signed = await signed_text(session, simulator, chat_id) if chat_id else None
        if marker is not None or signed not in signed_texts_for(body, answer) or verified != "true":
            tally.note("unverified_delivery",
                       f"marker={marker} stream={stream} verified={verified} id={chat_id}")
            return
        tally.note("verified")
        return
    if marker is not None and status == 502 and verified == "false":
        tally.note("blocked")
        tally.note(f"blocked:{marker}:{failure}")
        return
    tally.note("unexpected", f"HTTP {status} {failure} marker={marker} stream={stream} "
                             f"{answer[:200]!r}")


async def client_loop(session: aiohttp.ClientSession, sidecar: str, simulator: str,
                      deadline: float, args: argparse.Namespace, tally: Tally,
                      serials: list[int]) -> None:
    while time.monotonic() < deadline:
        serials[0] += 1
        await one_request(session, sidecar, simulator, serials[0], args.tamper_share,
                          args.stream_share, tally)


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    stop_at = time.monotonic() + READY_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop_at:
            if proc.poll() is not None:
                raise SystemExit(f"process exited early ({proc.returncode}): {proc.args}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status < 500:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} not ready after {READY_TIMEOUT} s")


async def soak(args: argparse.Namespace, sidecar: str, simulator: str, pid: int) -> Tally:
    tally = Tally()
    serials = [0]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up: the first attestation, so the start figure is the steady-state baseline.
        await one_request(session, sidecar, simulator, 0, 0.0, 0.0, tally)
        started = time.monotonic()
        tally.samples.append((0.0, rss_bytes(pid)))
        deadline = started + args.duration

        async def sampler() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(min(args.sample, max(0.0, deadline - time.monotonic())))
                tally.samples.append((time.monotonic() - started, rss_bytes(pid)))
                done = tally.counts["served"]
                print(f"  t={time.monotonic() - started:6.0f}s served={done} "
                      f"verified={tally.counts['verified']} blocked={tally.counts['blocked']} "
                      f"unverified={tally.counts['unverified_delivery']} "
                      f"unexpected={tally.counts['unexpected']} "
                      f"rss={tally.samples[-1][1] / 2**20:.1f} MiB", flush=True)

        await asyncio.gather(sampler(), *(
            client_loop(session, sidecar, simulator, deadline, args, tally, serials)
            for _ in range(args.clients)))
        tally.counts["elapsed_ms"] = int((time.monotonic() - started) * 1000)
        tally.samples.append((time.monotonic() - started, rss_bytes(pid)))
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description="tee-sidecar soak run (loopback only)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--tamper-share", type=float, default=0.1)
    parser.add_argument("--stream-share", type=float, default=0.5)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.seed is not None:
        random.seed(args.seed)
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tee-soak-") as tmp_name:
        tmp = Path(tmp_name)
        sim_port, mitm_port, sidecar_port = free_port(), free_port(), free_port()
        simulator = f"http://127.0.0.1:{sim_port}"
        mitm = f"http://127.0.0.1:{mitm_port}"
        sidecar = f"http://127.0.0.1:{sidecar_port}"
        config = tmp / "sidecar.toml"
        sidecar_config(config, port=sidecar_port, mitm=mitm, state_dir=tmp / "state",
                       clients=args.clients)
        logs = {name: (tmp / f"{name}.log").open("wb") for name in ("simulator", "mitm", "sidecar")}
        try:
            procs.append(subprocess.Popen(
                [python, "-m", "sidecar", "simulate", "--port", str(sim_port)],
                cwd=REPO, env=env, stdout=logs["simulator"], stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen(
                [python, "-m", "tests.adversarial.mitm", "--upstream", simulator,
                 "--port", str(mitm_port)],
                cwd=REPO, env=env, stdout=logs["mitm"], stderr=subprocess.STDOUT))
            asyncio.run(wait_ready(simulator + "/api/v1/models", procs[0]))
            asyncio.run(wait_ready(mitm + "/api/v1/models", procs[1]))
            procs.append(subprocess.Popen(
                [python, "-m", "sidecar", "serve", "--config", str(config)],
                cwd=REPO, env=env, stdout=logs["sidecar"], stderr=subprocess.STDOUT))
            asyncio.run(wait_ready(sidecar + "/v1/models", procs[2]))
            print(f"soak: {args.clients} clients, {args.duration:.0f} s, tamper share "
                  f"{args.tamper_share}, stream share {args.stream_share}; sidecar pid "
                  f"{procs[2].pid}", flush=True)
            tally = asyncio.run(soak(args, sidecar, simulator, procs[2].pid))
            alive = procs[2].poll() is None
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in reversed(procs):
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            for fh in logs.values():
                fh.close()
        log_text = (tmp / "sidecar.log").read_text(errors="replace")
        internal_errors = log_text.count("internal_error")

    counts = tally.counts
    start_rss, end_rss = tally.samples[0][1], tally.samples[-1][1]
    peak_rss = max(rss for _, rss in tally.samples)
    figures = {
        "clients": args.clients, "duration_s": args.duration, "tamper_share": args.tamper_share,
        "stream_share": args.stream_share,
        "served": counts["served"], "verified": counts["verified"], "blocked": counts["blocked"],
        "unverified_deliveries": counts["unverified_delivery"],
        "unexpected_errors": counts["unexpected"],
        "sidecar_internal_errors_logged": internal_errors,
        "sidecar_alive_at_end": alive,
        "requests_per_s": round(counts["served"] / max(counts["elapsed_ms"] / 1000, 1e-9), 1),
        "rss_start_mib": round(start_rss / 2**20, 1), "rss_end_mib": round(end_rss / 2**20, 1),
        "rss_peak_mib": round(peak_rss / 2**20, 1),
        "blocked_by_attack": {k.removeprefix("blocked:"): v for k, v in sorted(counts.items())
                              if k.startswith("blocked:")},
    }
    print(json.dumps(figures, indent=2))
    for example in tally.examples:
        print("  example", example)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    bad = counts["unverified_delivery"] or counts["unexpected"] or internal_errors or not alive
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
