"""Render a report in headless Chromium (Debian's ``chromium``): which images loaded,
which errors the page raised, and a screenshot."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT = 180
# The test's copy of the page (never the product page) gets a policy that forbids any
# fetch but embedded images and inline styles, and a probe that records errors (script,
# resource, policy violations, console.error) and, once loaded, every image's state, the
# document's title and its text. The page's own policy (which forbids every script) is
# taken out of the copy: the probe needs inline scripts, and so a test sees whether
# escaping alone keeps hostile text from running.
PAGE_POLICY = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n?')
PROBE = """<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>
window.__errors = [];
const note = (m) => window.__errors.push(String(m));
window.addEventListener("error", (e) => note(e.message || ("cannot load " + (e.target.src
  || e.target.href || e.target.tagName))), true);
document.addEventListener("securitypolicyviolation", (e) => note("blocked " + e.blockedURI));
const consoleError = console.error;
console.error = (...args) => { note(args.join(" ")); consoleError(...args); };
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt),
    errors: window.__errors,
    title: document.title,
    text: document.body.textContent,
  });
  document.body.appendChild(out);
});
</script>
"""


@dataclass(frozen=True)
class Rendered:
    images: int
    broken: list[str]
    errors: list[str]
    title: str
    text: str


def chromium() -> str:
    """The Chromium executable; skips the test (with the reason) when there is none."""
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    return found


def _run(args: list[str]) -> str:
    done = subprocess.run(
        [chromium(), *FLAGS, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def render(page: Path) -> Rendered:
    """Load a probed copy of ``page`` (beside it, so relative paths still resolve)."""
    probed = page.with_name("probe_" + page.name)
    text = PAGE_POLICY.sub("", page.read_text(encoding="utf-8"), count=1)
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    dom = _run(["--virtual-time-budget=5000", "--dump-dom", probed.as_uri()])
    probed.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found is not None, "the probe did not report: the page did not finish loading"
    return Rendered(**json.loads(html.unescape(found.group(1))))


def screenshot(page: Path, out: Path, height: int = 2400) -> np.ndarray:
    """A 1280-pixel-wide screenshot of ``page`` as an ``(H, W, 3)`` uint8 array."""
    _run(
        ["--hide-scrollbars", f"--window-size=1280,{height}", f"--screenshot={out}", page.as_uri()]
    )
    return np.asarray(Image.open(out).convert("RGB"))
