"""The HTML report in a real browser (SPEC 13): headless Chromium opens the
`file://` page of a real rollout with a failure, with JavaScript on and
off and with networking blocked, and takes a screenshot of it.

Skipped only when Chromium is not installed (`.ci/run` installs Debian's
`chromium` package)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import pytest

from conftest import Workspace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install chromium; .ci/run does)")

SECRET = "correct-horse-battery-9"
FAILED_RED = (0xE0, 0x66, 0x66)  # html_report.COLOURS["failed"]
COMPONENTS = ["base", "web", "worker", "bad", "after_bad", "docs"]


def chromium(*args: str, timeout: float = 90, javascript: bool = True) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="atmos-chromium-")
    if not javascript:
        # JavaScript off as a user turns it off (Settings > Site settings):
        # `--blink-settings=scriptEnabled=false` would also stop headless
        # Chromium's own --dump-dom and --screenshot, which run on scripts.
        os.mkdir(os.path.join(profile, "Default"))
        with open(os.path.join(profile, "Default", "Preferences"), "w") as fh:
            json.dump({"profile": {"default_content_setting_values": {"javascript": 2}}}, fh)
    flags = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")
    try:
        return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True,
                              timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The report page of a -k rollout in which one component failed."""
    ws = Workspace(tmp_path_factory.mktemp("browser") / "ws")
    comps = {
        "base": {"run": "echo base; sleep 0.2"},
        "web": {"run": "echo web; sleep 0.3", "metadata": {"depends_on": ["command/base"]}},
        "worker": {"run": "echo worker; sleep 0.2", "metadata": {"depends_on": ["command/base"]}},
        "bad": {"env": {"DB_PASSWORD": SECRET},
                "run": 'echo "connecting with $DB_PASSWORD"; echo "boom: it broke" >&2; exit 4',
                "metadata": {"depends_on": ["command/base"]}},
        "after_bad": {"run": "true", "metadata": {"depends_on": ["command/bad"]}},
        "docs": {"run": "echo docs"},
    }
    ws.write("app/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": comps}}}))
    path = ws.root.parent / "report.html"
    proc = ws.run("rollout", "//app:dev", "-j2", "-k", "--report", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert SECRET not in path.read_text(encoding="utf-8")
    return path


def dump_dom(path: Path, *extra: str, javascript: bool = True) -> str:
    proc = chromium(*extra, "--dump-dom", path.as_uri(), javascript=javascript)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_page_shows_every_component_and_its_status(page):
    dom = dump_dom(page)
    for name in COMPONENTS:
        assert f"command/{name}" in dom
    for status in ("succeeded", "failed", "skipped"):
        assert f'class="pill s-{status}"' in dom
    assert "boom: it broke" in dom and "connecting with ***" in dom
    assert SECRET not in dom
    # The script ran (it reveals the filter box); the rows are all there.
    assert '<div id="tools">' in dom
    assert dom.count('<tr id="n') == len(COMPONENTS)


def test_without_javascript_the_table_graph_and_timeline_are_all_there(page):
    dom = dump_dom(page, javascript=False)
    assert '<div id="tools" hidden="">' in dom  # the script did not run...
    assert dom.count('<tr id="n') == len(COMPONENTS)  # ...and the content is all there
    assert "<svg class=\"dag\"" in dom and "<svg class=\"timeline\"" in dom
    for name in COMPONENTS:
        assert f"command/{name}" in dom


def test_with_networking_blocked_the_page_still_renders(page):
    dom = dump_dom(page, '--host-resolver-rules=MAP * ~NOTFOUND', "--proxy-server=127.0.0.1:9")
    assert dom.count('<tr id="n') == len(COMPONENTS)
    assert "command/bad" in dom and "boom: it broke" in dom


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    pixels = []
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ftype == 2:  # (the common case, in one pass)
            line = bytearray(map(lambda x, up: (x + up) & 0xFF, line, prev))
            ftype = 0
        for i in range(stride if ftype else 0):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        pixels.extend(tuple(line[i:i + 3]) for i in range(0, stride, bpp))
        prev = line
    return width, height, pixels


def screenshot(url: str, out: Path) -> bytes:
    proc = chromium("--hide-scrollbars", "--window-size=1000,700", f"--screenshot={out}", url)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    return out.read_bytes()


def test_a_screenshot_of_a_failed_run_is_a_real_picture(page, tmp_path):
    shot = screenshot(page.as_uri(), tmp_path / "report.png")
    blank_page = tmp_path / "blank.html"
    blank_page.write_text("<!DOCTYPE html><html><body></body></html>")
    blank = screenshot(blank_page.as_uri(), tmp_path / "blank.png")
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1000, 700)
    colours = Counter(pixels)
    _, _, blank_pixels = png_pixels(blank)
    assert len(set(blank_pixels)) <= 2 and len(shot) > 5 * len(blank)
    assert len(colours) > 50  # text, boxes and bars, not a blank page
    (background, count), = colours.most_common(1)
    assert len(pixels) - count > 0.05 * len(pixels)
    assert FAILED_RED in colours  # the failure is drawn in its colour


def test_the_filter_box_hides_what_does_not_match(page):
    """The script's filter, given by the link (`#filter=...`) as a user's
    typing would: only matching rows stay; chips and bars are dimmed."""
    proc = chromium("--dump-dom", page.as_uri() + "#filter=bad")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    shown = [line for line in dom.split("<tr ")[1:] if "hidden" not in line.split(">", 1)[0]]
    assert sorted(row.split('class="id">', 1)[1].split("<", 1)[0] for row in shown) == [
        "command/after_bad", "command/bad"]
    assert "2 of 6 components match" in dom
    assert 'class="bar dim"' in dom or 'class="bar crit dim"' in dom
