"""How the HTML report (`rollout --report FILE.html`) holds up at scale.

Generates the benchmark DAG (bench/generate.py), makes every K-th
component fail, rolls it out for real with `-k --report x.html --profile
t.json`, then opens the page in headless Chromium from file:// and times
`--dump-dom` (load, parse, style, layout, script; best of 3) against a blank
page's, and takes a screenshot of it.

    python bench/report_render.py [--n 5000] [-j 2] [--fail-every 997]
                                  [--sleep MIN MAX] [--screenshot OUT.png] [--dir DIR]

Not a test: a number to quote (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from generate import YAML_PACKAGE, generate  # noqa: E402

FAIL_RUN = '["sh", "-c", "echo \'failing on purpose\'; echo \'see the log\' >&2; exit 3"]'


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="atmos-bench-chromium-")
    flags = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")
    try:
        return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def timed(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = chromium(*args)
    return time.perf_counter() - t0, proc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("-j", type=int, default=2)
    p.add_argument("--fail-every", type=int, default=997, help="every K-th component fails (0: none)")
    p.add_argument("--sleep", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="each component sleeps this long (default: runs `true`)")
    p.add_argument("--screenshot", help="write a 1400x1000 screenshot of the page here")
    p.add_argument("--dir", help="workspace directory (default: a temporary one, removed)")
    args = p.parse_args(argv)

    root = args.dir or tempfile.mkdtemp(prefix="atmos-report-bench-")
    try:
        generate(root, args.n, 1, 1, tuple(args.sleep) if args.sleep else None)
        yaml_path = os.path.join(root, YAML_PACKAGE, "deployment.yaml")
        lines = open(yaml_path).read().splitlines()
        failing = 0
        if args.fail_every:
            for i, line in enumerate(lines):
                m = re.match(r'\s+"c/(\d+)":', line)
                if m and int(m.group(1)) % args.fail_every == args.fail_every - 1:
                    lines[i] = re.sub(r"run: \[[^\]]*\]", f"run: {FAIL_RUN}", line)
                    failing += 1
        open(yaml_path, "w").write("\n".join(lines) + "\n")
        page, trace = os.path.join(root, "report.html"), os.path.join(root, "trace.json")
        env = {**os.environ, "PYTHONPATH": REPO}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "atmosbuild", "-C", root, "rollout",
                               f"//{YAML_PACKAGE}:dev", f"-j{args.j}", "-k", "--report", page,
                               "--profile", trace], env=env, capture_output=True, text=True)
        rollout_s = time.perf_counter() - t0
        if "Traceback" in proc.stderr or not os.path.exists(page):
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        summary = next((l for l in proc.stdout.splitlines() if l.startswith("Summary:")), "?")
        events = json.load(open(trace))["traceEvents"]
        slices = sum(1 for e in events if e["ph"] == "X")

        blank = os.path.join(root, "blank.html")
        open(blank, "w").write("<!DOCTYPE html><html><body></body></html>")
        url = "file://" + page
        base = min(timed("--dump-dom", "file://" + blank)[0] for _ in range(3))
        runs = []
        dom = ""
        for _ in range(3):
            seconds, res = timed("--dump-dom", url)
            runs.append(seconds)
            dom = res.stdout
        rows = dom.count('<tr id="n')
        shot_s = None
        if args.screenshot:
            shot_s, _ = timed("--hide-scrollbars", "--window-size=1400,1000",
                              f"--screenshot={os.path.abspath(args.screenshot)}", url)
        size = os.path.getsize(page)
        print(f"components: {args.n} ({failing} made to fail), -j{args.j}")
        print(f"rollout: {rollout_s:.1f} s  [{summary}]")
        print(f"page: {size / 1e6:.2f} MB; trace: {os.path.getsize(trace) / 1e6:.2f} MB, "
              f"{slices} slices")
        print(f"chromium --dump-dom: best {min(runs):.2f} s (blank page {base:.2f} s, so the page "
              f"costs {min(runs) - base:.2f} s); rows in the DOM: {rows}")
        if shot_s is not None:
            print(f"chromium --screenshot: {shot_s:.2f} s -> {args.screenshot}")
        return 0 if rows == args.n else 1
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
