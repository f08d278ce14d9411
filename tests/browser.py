"""The page tests' real browser: headless Chromium (skipped where /usr/bin/chromium is
missing), run offline on a file URL, and readers of the DOM it dumps."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")


def chromium(profile: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def element(dom: str, ident: str) -> tuple[dict[str, str], str]:
    """The attributes and inner HTML of the element with id `ident` (no nesting of its own tag)."""
    m = re.search(rf'<(\w+)([^>]*\bid="{ident}"[^>]*)>(.*?)</\1>', dom, re.S)
    assert m is not None, ident
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(2))), m.group(3)


def listed(dom: str, ident: str) -> list[tuple[int, float]]:
    _attrs, inner = element(dom, ident)
    return [(int(k), float(w)) for k, w in re.findall(r'<li data-key="(\d+)" data-weight="([^"]+)"', inner)]
