"""`make bench`: tee-sidecar measured side by side with the paths an app could take instead.

One run on this machine, every server in its own process on loopback:

  simulator      ``python -m sidecar simulate`` (the TEE provider; ``--token-delay`` paces streams)
  direct         the load client straight to the simulator, no verification
  manual         the same, plus what an app would code itself: hash, signature fetch, recovery
  pass-through   ``bench/passthrough.py``: a bare aiohttp proxy, no verification (the floor)
  floor          ``bench/floor.py``: the pass-through plus only what verifying must cost (the
                 signature fetch, both hashes, one recovery); ``floor+receipts`` adds the
                 sidecar's durable receipt (zero-delay phase only)
  sidecar        ``python -m sidecar serve`` in enforce mode, streams ``buffer`` and ``relay``
  litellm        LiteLLM's proxy from ``bench/.venv-litellm`` (``--install-litellm``), if present

Phases:
  (A) zero token delay: throughput is bounded by CPU, so CPU per completion is the headline;
      plain and streamed completions at concurrency 1, 16, 128.
  (B) realistic pace (``--token-delay``, default 30 ms per event: ~30 ms to first token, ~33
      tokens/s): streamed completions at concurrency 1, 16, 128.
  (C) memory per open stream: fresh proxies, ``--open-streams`` slow streams held open at once.

Prints the table, writes ``docs/benchmarks.md`` (between its result markers) and
``docs/benchmarks.svg``, and the raw samples to ``bench/results/latest.json``.

    python bench/run.py            # about 5 minutes
    python bench/run.py --quick    # about 1.5 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import procstat, report  # noqa: E402

PY = sys.executable
CLIENT = ROOT / "bench" / "client.py"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
MODEL = "TEE/simulated-llama-3.3-70b"
CONCURRENCY = (1, 16, 128)
# Events in one simulated stream of max_tokens=15: role, 15 tokens, finish, [DONE].
STREAM_EVENTS = 18
# Experiments (``--variants``): a relay sidecar with one thing changed, to price a proposal.
VARIANTS: dict[str, dict[str, str]] = {
    "uvloop": {},  # the same sidecar under uvloop's event loop
    "no-receipts": {"TEE_SIDECAR_RECEIPTS__ENABLED": "false"},  # no receipt line, no fsync
    "quiet-log": {"TEE_SIDECAR_LOG__LEVEL": "warning"},  # no per-request log line
}


@dataclass
class Server:
    """A server process we started, and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    tree: bool = False

    @property
    def pid(self) -> int:
        """The process id (CPU and RSS are read from /proc for it)."""
        return self.proc.pid

    def stop(self) -> None:
        """Terminate this process (and the workers it forked), then reap it."""
        if self.proc.poll() is not None:
            return
        for child in procstat.children(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Bench:
    """The whole run: settings, servers started, results gathered."""

    args: argparse.Namespace
    tmp: Path
    code: Path = ROOT
    servers: list[Server] = field(default_factory=list)
    results: list[dict[str, object]] = field(default_factory=list)
    litellm_key: str = field(default_factory=lambda: "sk-" + secrets.token_hex(24))
    notes: list[str] = field(default_factory=list)

    # -- processes ---------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], url: str, *, env: dict[str, str] | None = None,
              tree: bool = False) -> Server:
        """Start ``argv`` with its output in a log file under the temp dir."""
        log = self.tmp / f"{name}.log"
        # ``python -m sidecar`` imports the package from its working directory first.
        proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                cwd=self.code, env={**os.environ, **(env or {})},
                                start_new_session=True)
        server = Server(name, proc, url, log, tree)
        self.servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        """Stop one server and forget it."""
        server.stop()
        self.servers.remove(server)

    def simulator(self) -> Server:
        """``python -m sidecar simulate`` on a free port."""
        port = free_port()
        server = self.start("simulator", [PY, "-m", "sidecar", "simulate", "--port", str(port)],
                            f"http://127.0.0.1:{port}")
        wait_http(server, server.url + "/api/v1/models", headers={"Authorization": "Bearer sk-bench"})
        return server

    def set_token_delay(self, sim: Server, delay: float) -> None:
        """Pace the simulator's streams (seconds before each event)."""
        request = urllib.request.Request(sim.url + "/_simulator/faults", method="POST",
                                         data=json.dumps({"token_delay": delay}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()

    def passthrough(self, sim: Server, name: str = "pass-through") -> Server:
        """The bare aiohttp pass-through proxy."""
        port = free_port()
        server = self.start(name, [PY, str(ROOT / "bench" / "passthrough.py"), "--port", str(port),
                                   "--upstream", sim.url + "/api"], f"http://127.0.0.1:{port}")
        wait_completion(server, "sk-bench", verified=False)
        return server

    def floor(self, sim: Server, name: str, *, receipts: bool) -> Server:
        """``bench/floor.py`` under uvloop (as the sidecar runs): the verifying floor, with the
        sidecar's own group-committed receipts when ``receipts``."""
        port = free_port()
        argv = [PY, str(ROOT / "bench" / "floor.py"), "--port", str(port), "--uvloop",
                "--upstream", sim.url + "/api"]
        if receipts:
            argv += ["--receipts", str(self.tmp / f"{name}-receipts.jsonl")]
        server = self.start(name, argv, f"http://127.0.0.1:{port}")
        wait_completion(server, "sk-bench", verified=True)
        return server

    def sidecar(self, sim: Server, stream: str, name: str, *, uvloop: bool = False,
                env: dict[str, str] | None = None) -> Server:
        """``python -m sidecar serve`` in enforce mode with a TOML config in the temp dir."""
        port = free_port()
        config = self.tmp / f"{name}.toml"
        config.write_text(sidecar_toml(sim.url, port, stream, self.tmp / f"state-{name}"))
        if uvloop:
            # An experiment, not the shipped default: the same CLI under uvloop's event loop.
            argv = [PY, "-c", "import uvloop, sys; uvloop.install(); from sidecar.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", "serve", "--config", str(config)]
        else:
            argv = [PY, "-m", "sidecar", "serve", "--config", str(config)]
        # Each sidecar's admin listener (/metrics, /status) needs its own port; settings that an
        # older sidecar lacks are ignored when they come from the environment.
        env = {"TEE_SIDECAR_ADMIN__PORT": str(free_port()), **(env or {})}
        server = self.start(name, argv, f"http://127.0.0.1:{port}", env=env)
        # The first request attests the model; every later one must reuse that attestation.
        wait_completion(server, "sk-bench", verified=True)
        return server

    def litellm(self, sim: Server) -> Server | None:
        """LiteLLM's proxy, if its venv exists and it starts offline."""
        binary = LITELLM_VENV / "bin" / "litellm"
        if not binary.exists():
            self.notes.append("LiteLLM: not installed (run `python bench/run.py --install-litellm` "
                              "once); its rows show n/a.")
            return None
        port = free_port()
        config = self.tmp / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {sim.url}/api/v1\n"
            "      api_key: sk-bench\n")
        env = {"LITELLM_MASTER_KEY": self.litellm_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "LITELLM_LOG": "ERROR", "NO_PROXY": "*",
               # Offline, LiteLLM's stream token counting would retry a tokenizer download from
               # the Hugging Face hub for each stream and stall it; fail that lookup at once.
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        server = self.start("litellm", [str(binary), "--config", str(config), "--host", "127.0.0.1",
                                        "--port", str(port), "--num_workers", "1",
                                        "--telemetry", "False"],
                            f"http://127.0.0.1:{port}", env=env, tree=True)
        try:
            wait_completion(server, self.litellm_key, verified=False, timeout=90)
        except RuntimeError as exc:
            self.notes.append(f"LiteLLM: installed but did not serve ({exc}); its rows show n/a.")
            self.stop(server)
            return None
        version = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                                  "import importlib.metadata as m; print(m.version('litellm'))"],
                                 capture_output=True, text=True).stdout.strip()
        self.notes.append(f"LiteLLM {version} (`litellm --num_workers 1`, master key set, "
                          "local cost map, no database, hub lookups off).")
        return server

    # -- measurements ------------------------------------------------------------------------

    def measure(self, phase: str, kind: str, config: str, concurrency: int, server: Server | None,
                sim: Server, *, duration: float, warmup: float,
                stagger: float = 0.0) -> dict[str, object]:
        """One client process against one configuration; the result is kept and returned."""
        target = server or sim
        url = (sim.url + "/api" if server is None else target.url) + "/v1/chat/completions"
        argv = [PY, str(CLIENT), "--url", url, "--concurrency", str(concurrency),
                "--duration", str(duration), "--warmup", str(warmup), "--stagger", str(stagger),
                "--watch", str(target.pid)]
        if target.tree:
            argv.append("--watch-tree")
        if kind == "stream":
            argv.append("--stream")
        if config == "manual":
            argv += ["--verify", "manual", "--sim", sim.url + "/api"]
        elif config.startswith(("sidecar", "floor")):
            argv += ["--verify", "sidecar"]  # the floor says x-tee-verified: true as well
        if config == "litellm":
            argv += ["--api-key", self.litellm_key]
        done = subprocess.run(argv, capture_output=True, cwd=ROOT, timeout=duration + warmup + 120)
        if done.returncode != 0:
            raise RuntimeError(f"client failed for {config}: {done.stderr.decode()[-2000:]}")
        result: dict[str, object] = json.loads(done.stdout)
        result.update(phase=phase, kind=kind, config=config, concurrency=concurrency,
                      proxy=server is not None)
        self.results.append(result)
        print(report.progress_line(result), flush=True)
        return result


def sidecar_toml(sim_url: str, port: int, stream: str, state_dir: Path) -> str:
    """Settings for a sidecar pointed at the simulator (as ``simulator_settings`` builds them)."""
    return f"""\
[listen]
host = "127.0.0.1"
port = {port}

[upstream]
provider = "nanogpt"
base_url = "{sim_url}/api"
api_key = "sk-bench"
signature_retry_delay = 0.01

[attestation]
pccs_url = "{sim_url}/pcs"
nras_url = "{sim_url}/nras/v3/attest/gpu"
nvidia_jwks_url = "{sim_url}/nras/.well-known/jwks.json"

[trust]
anchors = "simulator"

[state]
dir = "{state_dir}"

[verification]
mode = "enforce"
stream = "{stream}"

[log]
format = "json"
level = "info"
"""


def free_port() -> int:
    """A port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, key: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"model": MODEL, "max_tokens": 15,
                       "messages": [{"role": "user", "content": "warm up"}]}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def wait_http(server: Server, url: str, *, headers: dict[str, str], timeout: float = 30) -> None:
    """Poll ``url`` until it answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {server.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer at {url} within {timeout:.0f} s")


def wait_completion(server: Server, key: str, *, verified: bool, timeout: float = 30) -> None:
    """Poll with a real completion until one succeeds (and, for the sidecar, is verified)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {server.log.read_text()[-2000:]}")
        try:
            status, headers, _ = _post(server.url + "/v1/chat/completions", key, timeout=30)
            if status == 200 and (not verified or headers.get("x-tee-verified") == "true"):
                return
            last = f"HTTP {status} {headers.get('x-tee-failure', '')}"
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} served no completion within {timeout:.0f} s ({last})")


def attestations_in_log(log: Path) -> int:
    """How many attestations a sidecar ran: its log has one ``attestation`` event per run."""
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if '"event": "attestation"' in line)


def export_code(ref: str, into: Path) -> tuple[Path, str]:
    """``sidecar/`` as committed at ``ref``, unpacked under ``into`` (the tree may be mid-edit)."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], capture_output=True, text=True,
                            cwd=ROOT, check=True).stdout.strip()
    target = into / "code"
    target.mkdir()
    archive = subprocess.run(["git", "archive", ref, "sidecar"], capture_output=True, cwd=ROOT,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, commit


def busy_cpu_share(seconds: float = 1.0) -> float:
    """Share of all cores busy over ``seconds`` before we start (others' load skews results)."""
    def read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values), idle

    total_0, idle_0 = read()
    time.sleep(seconds)
    total_1, idle_1 = read()
    return 1 - (idle_1 - idle_0) / max(1, total_1 - total_0)


def environment() -> dict[str, str]:
    """What machine and versions the numbers come from."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    import aiohttp

    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "commit": commit or "unknown",
            "kernel": platform.release()}


def install_litellm() -> int:
    """Create ``bench/.venv-litellm`` with ``litellm[proxy]`` (kept out of the project venv)."""
    subprocess.run([PY, "-m", "venv", str(LITELLM_VENV)], check=True)
    return subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet",
                           "litellm[proxy]"]).returncode


@contextlib.contextmanager
def bench_dir(keep: bool) -> Iterator[Path]:
    """A temp dir for configs, state and logs (kept with ``--keep``)."""
    path = Path(tempfile.mkdtemp(prefix="tee-sidecar-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"logs and configs kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """All three phases, then the table, the doc and the chart."""
    started = time.monotonic()
    quick = args.quick or args.smoke
    zero = dict(duration=1.0 if quick else 3.0, warmup=0.3 if quick else 0.5)
    # The smoke run (CI-sized, under a minute): phase A at concurrency 16 only, no direct row.
    concurrencies = (16,) if args.smoke else CONCURRENCY
    stream_seconds = STREAM_EVENTS * args.token_delay
    paced = dict(duration=3.0 if quick else 6.0, warmup=stream_seconds + 0.3,
                 stagger=stream_seconds)
    busy = busy_cpu_share()
    if busy > 0.1:
        print(f"warning: {busy:.0%} of the CPU is busy before the bench starts; "
              "other processes will skew the numbers", file=sys.stderr)
    with bench_dir(args.keep) as tmp:
        bench = Bench(args, tmp)
        code_commit = "working tree"
        if args.code:
            bench.code, code_commit = export_code(args.code, tmp)
        bench.notes.append(f"Machine {busy:.0%} busy before the run (other processes).")
        try:
            sim = bench.simulator()
            passthrough = bench.passthrough(sim)
            floor = bench.floor(sim, "floor", receipts=False)
            floor_receipts = bench.floor(sim, "floor+receipts", receipts=True)
            buffer = bench.sidecar(sim, "buffer", "sidecar-buffer")
            relay = bench.sidecar(sim, "relay", "sidecar-relay")
            extra: dict[str, Server] = {}
            for variant in filter(None, args.variants.split(",")):
                name = f"sidecar+{variant}"
                extra[name] = bench.sidecar(sim, "relay", name, uvloop=variant == "uvloop",
                                            env=VARIANTS[variant])
            litellm = None if args.no_litellm else bench.litellm(sim)
            print(f"servers up in {time.monotonic() - started:.0f} s", flush=True)

            configs: dict[str, dict[str, Server | None]] = {
                "plain": {"direct": None, "manual": None, "pass-through": passthrough,
                          "floor": floor, "floor+receipts": floor_receipts,
                          "sidecar": buffer, **extra},
                "stream": {"direct": None, "manual": None, "pass-through": passthrough,
                           "floor": floor, "floor+receipts": floor_receipts,
                           "sidecar-buffer": buffer, "sidecar-relay": relay, **extra},
            }
            # The floors are measured where CPU is the question (zero delay) only.
            floors = {"floor": floor, "floor+receipts": floor_receipts}
            if litellm is not None:
                configs["plain"]["litellm"] = litellm
                configs["stream"]["litellm"] = litellm

            # (A) Zero delay: the CPU-bound regime.
            bench.set_token_delay(sim, 0.0)
            for kind in ("plain", "stream"):
                for concurrency in concurrencies:
                    for config, server in configs[kind].items():
                        if args.smoke and config == "direct":
                            continue
                        bench.measure("zero-delay", kind, config, concurrency, server, sim, **zero)

            # (B) A realistic pace: streams only (the simulator paces streamed events only).
            bench.set_token_delay(sim, args.token_delay)
            for server in floors.values():
                bench.stop(server)
            for concurrency in () if args.smoke else CONCURRENCY:
                for config, server in configs["stream"].items():
                    if config in floors:
                        continue
                    bench.measure("paced", "stream", config, concurrency, server, sim, **paced)

            attestations = {s.name: attestations_in_log(s.log) for s in (buffer, relay,
                                                                          *extra.values())}
            served = {"sidecar-buffer": ("sidecar", "sidecar-buffer"),
                      "sidecar-relay": ("sidecar-relay",)}
            for name, names in served.items():
                completions = sum(int(str(r["completed"])) for r in bench.results
                                  if r["config"] in names)
                bench.notes.append(f"{name}: {attestations[name]} attestation(s) in its log over "
                                   f"more than {completions} completions.")

            # (C) Memory per open stream: fresh proxies, slow streams held open together.
            for server in (passthrough, buffer, relay, *extra.values()):
                bench.stop(server)
            bench.set_token_delay(sim, args.open_stream_delay)
            memory: list[dict[str, object]] = []
            fresh = (("pass-through", lambda: bench.passthrough(sim, "pass-through-fresh")),
                     ("sidecar-relay", lambda: bench.sidecar(sim, "relay", "relay-fresh")),
                     ("sidecar-buffer", lambda: bench.sidecar(sim, "buffer", "buffer-fresh")))
            for name, make in () if args.smoke else fresh:
                server = make()
                result = bench.measure("open-streams", "stream", name, args.open_streams, server,
                                       sim, duration=1.5 if quick else 2.5,
                                       warmup=STREAM_EVENTS * args.open_stream_delay / 2)
                memory.append(result)
                bench.stop(server)
            bench.set_token_delay(sim, 0.0)
        finally:
            for server in list(bench.servers):
                server.stop()

    elapsed = time.monotonic() - started
    meta = {"environment": {**environment(), "sidecar_code": code_commit}, "quick": quick, "token_delay": args.token_delay,
            "open_stream_delay": args.open_stream_delay, "open_streams": args.open_streams,
            "elapsed_s": round(elapsed, 1), "notes": bench.notes, "attestations": attestations,
            "command": ("make bench-smoke  (python bench/run.py --smoke)" if args.smoke
                        else "make bench" + ("  (python bench/run.py --quick)" if quick else ""))}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / ("smoke.json" if args.smoke else "latest.json")).write_text(
        json.dumps({"meta": meta, "results": bench.results}))
    publish(bench.results, meta, write_docs=not (args.no_docs or args.smoke))
    print(f"bench finished in {elapsed:.0f} s")
    return 0


def publish(results: list[dict[str, object]], meta: dict[str, object], *, write_docs: bool) -> None:
    """Print the tables; write docs/benchmarks.md (between its markers) and the chart."""
    text = report.render(results, meta)
    print(text)
    if write_docs:
        report.write_doc(ROOT / "docs" / "benchmarks.md", text, meta)
        try:
            report.chart(results, ROOT / "docs" / "benchmarks.svg", meta)
        except ImportError:  # run without `make bench`, which installs the bench extra
            print("wrote docs/benchmarks.md; the chart needs matplotlib (`make bench`, or "
                  "pip install -e '.[bench]', then --from-json bench/results/latest.json)")
            return
        print("wrote docs/benchmarks.md and docs/benchmarks.svg")


def main() -> int:
    """Parse options; run the bench (or install LiteLLM's venv)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows (about 1.5 minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="CI-sized (under a minute): zero-delay phase at concurrency 16 only, "
                             "prints the CPU ratios, never writes docs/ and never fails on a "
                             "ratio")
    parser.add_argument("--token-delay", type=float, default=0.03,
                        help="seconds before each streamed event in phase B (default 0.03)")
    parser.add_argument("--open-streams", type=int, default=200,
                        help="streams held open at once in phase C (default 200, below the "
                             "sidecar's default limits.max_concurrent_per_client of 256)")
    parser.add_argument("--open-stream-delay", type=float, default=0.1,
                        help="token delay in phase C, so streams stay open (default 0.1)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM even if installed")
    parser.add_argument("--variants", default="",
                        help="also run relay sidecars with one change each (experiments): "
                             + ", ".join(VARIANTS))
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with logs")
    parser.add_argument("--code", metavar="GIT_REF",
                        help="run simulator and sidecar as committed at this ref "
                             "(default: the working tree)")
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="re-render the table, doc and chart from a saved results file")
    parser.add_argument("--install-litellm", action="store_true",
                        help="create bench/.venv-litellm with litellm[proxy], then exit")
    args = parser.parse_args()
    unknown = set(filter(None, args.variants.split(","))) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.install_litellm:
        return install_litellm()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        publish(saved["results"], saved["meta"], write_docs=not args.no_docs)
        return 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
