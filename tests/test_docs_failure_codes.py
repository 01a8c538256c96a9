"""docs/verification.md lists every failure code the sidecar can emit, and no other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "verification.md").read_text()
SOURCE = "".join(p.read_text() for p in (ROOT / "sidecar").rglob("*.py")
                 if "simulator" not in p.parts)

# Codes built from a template in the source (policy.<fact>_not_allowed, upstream.http_<status>…).
TEMPLATES = {
    "policy.{short}_required": r"policy\.(tdx|gpu)_required",
    "policy.{short}_not_verified": r"policy\.(tdx|gpu)_not_verified",
    "policy.{self.field}_not_allowed": r"policy\.[a-z0-9_]+_not_allowed",
    "request.http_{exc.status}": r"request\.http_<status>",
    "upstream.http_{resp.status}": r"upstream\.http_<status>",
}
# Defaults of the error tree and check *names* (not codes) that the patterns below also match;
# receipt.* codes belong to `receipts verify` and are documented in docs/receipts.md.
NOT_FAILURE_CODES = {"verification.failed", "verification.incomplete", "sidecar.error",
                     "request.invalid", "tdx.collateral", "tdx.quote_format",
                     "tdx.quote_signature", "tdx.tcb_status", "tdx.quote", "tdx.td_attributes",
                     "binding.image_not_pinned"}


def documented() -> set[str]:
    # Settings (limits.max_…) and the body field error.code are named too; they are not codes.
    return {code for code in re.findall(r"`([a-z_]+\.[a-z0-9_<>]+)`", DOC)
            if code != "error.code" and not code.startswith(("limits.max_", "upstream.api_key"))}


def emitted() -> set[str]:
    patterns = [r'code="([a-z_]+\.[a-z_0-9]+)"', r'default_code = "([a-z_]+\.[a-z_0-9]+)"',
                r'Check\.(?:failed|incomplete)\(\s*[a-z_."0-9]+,\s*"([a-z_]+\.[a-z_0-9]+)"',
                r'_[A-Z_]+(?:: Final)? = "([a-z_]+\.[a-z_0-9]+)"',
                r'expect\(\s*"[a-z_.]+",\s*"[a-z_-]+",\s*[^,]+,\s*"([a-z_]+\.[a-z_0-9]+)"',
                r'"(gpu\.[a-z_]+_not_allowed)"', r'"(tdx\.[a-z_]+)"']
    found: set[str] = set()
    for pattern in patterns:
        found |= set(re.findall(pattern, SOURCE, re.S))
    return {code for code in found if not code.startswith("receipt.")} - NOT_FAILURE_CODES


def test_every_emitted_code_is_documented() -> None:
    missing = sorted(emitted() - documented())
    assert not missing, f"codes the sidecar emits but docs/verification.md does not list: {missing}"


def test_every_documented_code_exists_in_the_source() -> None:
    templates = [re.compile(t) for t in TEMPLATES.values()]
    invented = sorted(code for code in documented()
                      if "." in code and f'"{code}"' not in SOURCE
                      and not any(t.fullmatch(code) for t in templates))
    assert not invented, f"docs/verification.md lists codes nothing emits: {invented}"


def test_templates_are_still_in_the_source() -> None:
    for template in TEMPLATES:
        assert template in SOURCE, template
