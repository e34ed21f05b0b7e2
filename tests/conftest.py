"""Shared fixtures: write real workspaces to disk and run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import clockseam

REPO = Path(__file__).resolve().parents[1]
CLOCKSEAM = str(Path(__file__).resolve().parent / "clockseam.py")


@pytest.fixture(scope="session", autouse=True)
def private_environment(tmp_path_factory):
    """For the whole session: a private per-user cache (never the real
    ~/.cache/atmosbuild), and a clock tests move instead of sleeping out
    the racy window (clockseam.py). Every CLI run inherits both."""
    saved = {name: os.environ.get(name) for name in ("XDG_CACHE_HOME", "ATMOS_TEST_CLOCK")}
    base = tmp_path_factory.mktemp("session-env")
    os.environ["XDG_CACHE_HOME"] = str(base / "xdg-cache")
    os.environ["ATMOS_TEST_CLOCK"] = str(base / "clock")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def settle() -> None:
    """Everything written so far has settled, as if the racy window (2 s)
    had been waited out: the clock atmosbuild reads moves on instead."""
    clockseam.settle()


def settle_argv() -> list[str]:
    """A `run` (argv) that settles everything written so far, from inside a rollout."""
    return [sys.executable, CLOCKSEAM, os.environ["ATMOS_TEST_CLOCK"]]

# pg_server (a throwaway PostgreSQL for the session), pg_db, pg_url.
pytest_plugins = ("pgserver",)


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None,
            timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `atmosbuild ARGS...` as a user would: a separate process."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("NO_COLOR", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "atmosbuild", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


# A `run` fragment: each component that runs appends its id to ran.log at the
# root (outside every source tree), so a test can ask what ran.
RECORD = 'echo "$ATMOS_COMPONENT" >> "$ATMOS_ROOT/ran.log"'


def ran(ws) -> list[str]:
    """What ran since the last call, sorted (and forget it)."""
    path = ws.root / "ran.log"
    if not path.exists():
        return []
    lines = sorted(path.read_text().split())
    path.unlink()
    return lines


def write_chain(ws, extra: dict | None = None) -> None:
    """//app:dev with base -> app -> edge and solo on its own; all but edge
    have a source tree with a subdirectory. `extra` adds or replaces components."""
    comps = {
        "base": {"source": "src/base", "run": RECORD},
        "app": {"source": "src/app", "run": RECORD, "metadata": {"depends_on": ["command/base"]}},
        "edge": {"run": RECORD, "metadata": {"depends_on": ["command/app"]}},
        "solo": {"source": "src/solo", "run": RECORD},
        **(extra or {}),
    }
    ws.write("app/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": comps}}}))
    for name in ("base", "app", "solo"):
        ws.write(f"src/{name}/main.sh", f"echo {name}\n")
        ws.write(f"src/{name}/lib/util.sh", "util\n")


def rollout_with_report(ws, *args: str):
    """Roll out with --report; return (process, report dict or None)."""
    path = ws.root.parent / "report.json"
    if path.exists():
        path.unlink()
    proc = ws.run("rollout", *args, "--report", str(path))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, (json.loads(path.read_text()) if path.exists() else None)


def start_cli(ws, *args: str) -> subprocess.Popen:
    """The CLI as a background process (so a test can signal or race it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "atmosbuild", "-C", str(ws.root), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until `path` exists; with `proc`, fail at once (with its output)
    if that process ends first, instead of waiting out the timeout blind."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"{path} never appeared: the process exited {proc.returncode}\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


class Workspace:
    """A workspace on disk: write files, run the CLI in it, inspect state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "atmos.yaml").write_text("{}\n")

    def write(self, rel: str, text: str, mode: int | None = None) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        if mode is not None:
            path.chmod(mode)
        return path

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_cli("-C", str(self.root), *args, **kw)

    def settle(self) -> None:
        settle()

    @property
    def state(self) -> Path:
        return self.root / ".atmos"

    def snapshot_tree(self, under: Path | None = None) -> dict[str, bytes]:
        """Every file under the root (or `under` it) with its content, by its
        root-relative path (to prove nothing changed, or search every byte)."""
        out = {}
        for base, _, files in os.walk(under or self.root):
            for name in files:
                path = Path(base) / name
                out[str(path.relative_to(self.root))] = path.read_bytes()
        return out


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture
def cli():
    return run_cli
