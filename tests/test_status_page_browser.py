"""The status page as a person sees it: rendered by real headless Chromium.

The admin app is served on loopback next to a real sidecar that attested the simulator's model;
Chromium loads ``/status`` and dumps the DOM after parsing, so the assertions are about what a
browser built (text nodes, elements), not about the bytes we sent. Skipped, with the reason,
where no Chromium is installed (``apt-get install chromium`` on Debian), so the default suite
stays hermetic; set ``TEE_SIDECAR_CHROMIUM`` to point at another binary.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import openai
import pytest
from aiohttp import web

from sidecar.proxy.admin import build_admin_app
from sidecar.config import Settings
from sidecar.proxy.attester import AttestationCache
from tests.stack import Stack
from sidecar.telemetry import Telemetry
from tests.conftest import TEE_MODEL

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                  "chrome", "headless_shell")
HOSTILE_MODEL = '<img src=x onerror="document.title=1">evil/model'
# Chromium's first start (profile, fonts) can take a while on a cold CI runner.
CHROMIUM_TIMEOUT = 90


def find_chromium() -> str | None:
    """The Chromium binary to drive: ``$TEE_SIDECAR_CHROMIUM`` or the first one on PATH."""
    override = os.environ.get("TEE_SIDECAR_CHROMIUM")
    if override:
        return override if Path(override).exists() else shutil.which(override)
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium binary found (install Debian's `chromium` or set "
                    "TEE_SIDECAR_CHROMIUM); the status page browser test needs a real browser")
    return path


def headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with no network beyond the URL given (no sync, no updates)."""
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT,
                          check=False)


class TextAndTags(HTMLParser):
    """The visible text (scripts and styles dropped) and the tag names of a dumped DOM.

    Block and table-cell boundaries become spaces, inline elements do not, roughly as
    ``innerText`` reads: ``<h3>Model <code>m</code>: OK</h3>`` reads ``Model m: OK``.
    """

    BLOCKS = frozenset({"p", "div", "section", "table", "thead", "tbody", "tr", "th", "td", "ul",
                        "li", "br", "h1", "h2", "h3", "h4", "body", "html"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.chunks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in self.BLOCKS:
            self.chunks.append(" ")
        if tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS:
            self.chunks.append(" ")
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.chunks))


@dataclass
class View:
    settings: Settings
    cache: AttestationCache
    telemetry: Telemetry


@pytest.fixture(scope="module")
def status_url(stack: Stack) -> Iterator[tuple[str, View]]:
    """``/status`` of an admin app over a sidecar that attested ``TEE_MODEL`` for real."""
    url = stack.sidecar(fresh=True)
    client = openai.OpenAI(base_url=url, api_key="not-a-real-key", max_retries=0, timeout=30)
    client.chat.completions.create(model=TEE_MODEL, messages=[{"role": "user", "content": "hi"}])
    state = stack.sidecar_state(url)
    telemetry = Telemetry()
    telemetry.observe_request("/v1/chat/completions", 200, "true")
    telemetry.observe_verification("signature", "pass", 0.002)
    telemetry.record_failure(HOSTILE_MODEL, "attestation.unavailable",
                             f"model {HOSTILE_MODEL} has no TEE attestation")
    view = View(state.settings, state.cache, telemetry)

    async def serve() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(build_admin_app(lambda: view), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"

    runner, base = stack.run(serve())
    yield base + "/status", view
    stack.run(runner.cleanup())


def test_status_page_renders_in_chromium(chromium: str, status_url: tuple[str, View],
                                         stack: Stack, tmp_path: Path) -> None:
    url, view = status_url
    result = headless(chromium, tmp_path / "profile", "--virtual-time-budget=2000",
                      "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    parsed = TextAndTags()
    parsed.feed(dom)
    text = parsed.text

    assert "tee-sidecar status" in text
    for heading in ("Summary", "Attested models (1)", "Counters", "Last failures (1)"):
        assert heading in text
    assert f"Model {TEE_MODEL}: VERIFIED" in text
    report = view.cache.entries()[TEE_MODEL].report
    node = report.nodes[0]
    assert node.signing_key == stack.simulator.nodes[0].address("ecdsa").lower()
    assert f"Signing address {node.signing_key} (ecdsa)" in text
    for label, name in (("MRTD", "mrtd"), ("RTMR0", "rtmr0"), ("RTMR1", "rtmr1"),
                        ("RTMR2", "rtmr2"), ("RTMR3", "rtmr3"), ("mr_config_id", "mr_config_id")):
        assert f"{label} {node.measurements[name]}" in text
    assert f"TCB status {node.tcb_status}" in text
    assert node.gpus and all(f"{gpu.gpu_id} PASS" in text for gpu in node.gpus)
    assert re.search(r"Attestation valid, expires in \d+ (min|h|s)", text)
    assert "requests verified 1" in text and "signatures passed 1" in text
    # The simulator's roots are announced as such.
    assert "trust anchors are the simulator's test roots" in text

    # The hostile model name is text in the failures table, never an element.
    assert f"{HOSTILE_MODEL} attestation.unavailable model {HOSTILE_MODEL} has no TEE" in text
    assert "img" not in parsed.tags and "script" not in parsed.tags
    assert html.escape(HOSTILE_MODEL, quote=False) in dom


def test_status_page_screenshot(chromium: str, status_url: tuple[str, View],
                                tmp_path: Path) -> None:
    url, _ = status_url
    shot = tmp_path / "status.png"
    result = headless(chromium, tmp_path / "profile", "--window-size=1280,2000",
                      f"--screenshot={shot}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000  # a blank page compresses to a few hundred bytes
