"""Fail when mutation testing left a mutant alive that ``docs/mutation.md`` does not explain.

``make mutate`` runs ``mutmut run`` over some mutant name patterns, then this::

    python -m tests.mutation_gate 'sidecar.verify.sse*' ...

It reads ``mutmut results --all true`` and, for every mutant matching a pattern that was not
killed (survived, no tests, suspicious, skipped) prints it unless its exact name appears in
``docs/mutation.md`` (where each one is listed with the reason it is equivalent). Timeouts count
as killed: the mutant made the code loop, which the tests caught. It prints the score per
module and exits 1 on any unexplained survivor.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "mutation.md"
KILLED = {"killed", "timeout"}
_LINE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+?)\s*$")


def results() -> dict[str, str]:
    """Mutant name → status, as mutmut reports it."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         check=True, capture_output=True, text=True).stdout
    return {m["name"]: m["status"] for line in out.splitlines() if (m := _LINE.match(line))}


def main(patterns: list[str]) -> int:
    explained = set(re.findall(r"`(\S+__mutmut_\d+)`", DOC.read_text()))
    selected = {name: status for name, status in results().items()
                if any(fnmatch.fnmatchcase(name, p) for p in patterns or ["*"])}
    by_module: dict[str, Counter[str]] = {}
    for name, status in selected.items():
        module = name.split(".x", 1)[0]
        by_module.setdefault(module, Counter())["killed" if status in KILLED else status] += 1
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        print(f"{module}: {counts['killed']}/{total} killed "
              f"({100 * counts['killed'] / total:.1f}%), {dict(counts)}")
    unexplained = sorted(name for name, status in selected.items()
                         if status not in KILLED and name not in explained)
    for name in unexplained[:50]:
        print(f"UNEXPLAINED {selected[name]}: {name}")
    if len(unexplained) > 50:
        print(f"... and {len(unexplained) - 50} more unexplained")
    if not selected:
        print("no mutants matched", patterns)
        return 1
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
