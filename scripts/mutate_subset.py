"""Mutation testing of a few modules against their unit tests only, in a working copy.

``make mutate`` runs mutmut with the test selection of ``[tool.mutmut]`` in pyproject.toml,
which includes the end-to-end tests of the delivery path: every mutant of a function those
tests reach pays for starting them, which is more than CI can spend. mutmut 3 reads one
configuration, so a second selection needs a second tree: this copies ``sidecar/``, ``tests/``,
``config/``, ``docs/mutation.md`` and ``pyproject.toml`` into a temporary directory, replaces
the selection there with ``--tests``, runs ``mutmut run`` over the given mutant name patterns
(each child limited to 4 GiB of address space, so a mutant that loops while allocating dies
with MemoryError, which counts as killed) and then ``tests/mutation_gate.py``, whose verdict it
returns: 0 when every survivor is explained in ``docs/mutation.md``.

    python scripts/mutate_subset.py --tests tests/test_binding.py tests/test_sse.py \\
        -- 'sidecar.verify.binding*' 'sidecar.verify.sse*'
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("sidecar", "tests", "config", "docs/mutation.md", "pyproject.toml")
ADDRESS_SPACE = 4 << 30
_SELECTION = re.compile(r"^pytest_add_cli_args_test_selection = \[\n(?:.*\n)*?\]\n", re.M)


def working_copy(into: Path, tests: list[str]) -> None:
    """The files mutmut needs, with ``tests`` as the whole test selection.

    Raises:
        SystemExit: pyproject.toml has no selection to replace, or a test path does not exist.
    """
    for name in COPIED:
        source = ROOT / name
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    missing = [t for t in tests if not (ROOT / t.split("::")[0]).exists()]
    if missing:
        raise SystemExit(f"no such test file: {', '.join(missing)}")
    pyproject = (into / "pyproject.toml").read_text()
    selection = "pytest_add_cli_args_test_selection = [\n" + "".join(
        f'    "{t}",\n' for t in tests) + "]\n"
    replaced, count = _SELECTION.subn(selection, pyproject)
    if count != 1:
        raise SystemExit("pyproject.toml: no [tool.mutmut] test selection to replace")
    (into / "pyproject.toml").write_text(replaced)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def main() -> int:
    """Copy, mutate, gate; the gate's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", nargs="+", required=True, help="the test selection")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the working copy")
    parser.add_argument("patterns", nargs="+", help="mutant name patterns (mutmut's)")
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tee-sidecar-mutate-"))
    try:
        working_copy(work, args.tests)
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children",
                              str(args.max_children), *args.patterns], cwd=work,
                             preexec_fn=_limit_memory, stdout=subprocess.DEVNULL)
        if run.returncode != 0:
            print(f"mutmut run failed ({run.returncode})", file=sys.stderr)
            return 1
        gate = subprocess.run([sys.executable, "-m", "tests.mutation_gate", *args.patterns],
                              cwd=work)
        print(f"mutation subset: {time.monotonic() - started:.0f} s "
              f"({', '.join(args.patterns)} against {', '.join(args.tests)})")
        return gate.returncode
    finally:
        if args.keep:
            print(f"working copy kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
