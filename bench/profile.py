"""Profile tee-sidecar under load with py-spy: where its CPU per completion goes.

Starts the simulator (zero token delay) and one sidecar, drives it with the bench's load client,
records the sidecar with ``py-spy record`` (sampling, no instrumentation overhead in the target),
and prints the functions with the most samples, self and inclusive.

    python bench/profile.py --stream relay --kind stream --concurrency 16 --seconds 15
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import CLIENT, PY, VARIANTS, Bench, export_code  # noqa: E402


def summarise(collapsed: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] if " (" in f else f
                  for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self %   function"]
    lines += [f"{100 * n / total:5.1f}   {name}" for name, n in own.most_common(top)]
    lines += ["", "incl %   function"]
    lines += [f"{100 * n / total:5.1f}   {name}" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main() -> int:
    """Run the load, record the sidecar, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", choices=("buffer", "relay"), default="relay")
    parser.add_argument("--kind", choices=("plain", "stream"), default="stream")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--code", metavar="GIT_REF", help="profile sidecar/ as committed at this ref")
    parser.add_argument("--variant", choices=sorted(VARIANTS),
                        help="profile the sidecar with one change (see run.py --variants)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL: Python CPU, without the "
                             "time threads spend blocked (fsync) or the loop spends waiting")
    args = parser.parse_args()
    if shutil.which("py-spy") is None and not (Path(PY).parent / "py-spy").exists():
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 1
    py_spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="tee-sidecar-profile-"))
    bench = Bench(argparse.Namespace(), tmp)
    if args.code:
        bench.code, _ = export_code(args.code, tmp)
    args.out.mkdir(exist_ok=True)
    name = f"profile-{args.kind}-{args.stream}-c{args.concurrency}" + (
        f"-{args.variant}" if args.variant else "")
    collapsed = args.out / f"{name}.txt"
    try:
        sim = bench.simulator()
        sidecar = bench.sidecar(sim, args.stream, "sidecar", uvloop=args.variant == "uvloop",
                                env=VARIANTS[args.variant] if args.variant else None)
        client = subprocess.Popen(
            [PY, str(CLIENT), "--url", sidecar.url + "/v1/chat/completions", "--verify", "sidecar",
             "--concurrency", str(args.concurrency), "--duration", str(args.seconds + 2),
             "--warmup", "0.5", "--watch", str(sidecar.pid)]
            + (["--stream"] if args.kind == "stream" else []), stdout=subprocess.DEVNULL)
        subprocess.run([py_spy, "record", "--pid", str(sidecar.pid), "--duration",
                        str(int(args.seconds)), "--rate", "250", "--format", "raw", "--nonblocking",
                        "--output", str(collapsed)] + (["--gil"] if args.gil else []), check=True, capture_output=True)
        client.wait(60)
    finally:
        for server in list(bench.servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(summarise(collapsed, args.top))
    print(f"\ncollapsed stacks in {collapsed} (flamegraph.pl or speedscope read them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
