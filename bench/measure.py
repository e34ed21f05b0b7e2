"""Running one tool command: wall time, exit code and the peak RSS of that process.

Peak RSS is per process, never a RUSAGE_CHILDREN delta (that is a high-water
mark over *all* children ever waited for, so a big earlier child hides every
later one). It is also not wait4 on a child forked from this harness: Linux
carries the pre-exec high-water mark across exec, so every such child would
report at least the harness's own ~20 MB (ninja would "use" 19 MB). Instead
each command runs under GNU time (`/usr/bin/time -f %M`), a ~1 MB C program
whose own child starts small, and time reports that child's ru_maxrss from
wait4. Without GNU time we fall back to wait4 and say so in the results.
For every tool here the measured process is the tool itself (its children
are `true`, `sh`, `touch`, which are smaller).

The tools are reached without wrappers that would add their own start-up:
the real ninja binary (not a pyenv shim or the Python `ninja` launcher),
doit and atmosbuild as `python -m` / `python -c` of this interpreter.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The console script `atmosbuild = "atmosbuild.cli:entry"` does exactly this.
ATMOSBUILD_LAUNCHER = (
    "import sys; sys.argv[0] = 'atmosbuild'; "
    "from atmosbuild.cli import entry; entry()"
)


def _gnu_time() -> str | None:
    path = "/usr/bin/time"
    if not os.access(path, os.X_OK):
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "GNU" in out.stdout + out.stderr else None


GNU_TIME = _gnu_time()
RSS_METHOD = "GNU time %M (per process)" if GNU_TIME else "wait4 ru_maxrss (floor: the harness's own RSS)"


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mb: float | None  # None when GNU time could not report it
    exit_code: int
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_timed(argv: list[str], cwd: str, log_path: str, timeout: float) -> Measurement:
    """Run argv in cwd, output to log_path; measure it with wait4.

    The child gets its own session so a timeout (or our own Ctrl-C) can stop
    it together with everything it started.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    rss_path = log_path + ".rss"
    wrapped = [GNU_TIME, "-f", "%M", "-o", rss_path, *argv] if GNU_TIME else argv
    with open(log_path, "wb") as log:
        log.write(("$ " + shlex.join(argv) + "\n").encode())
        log.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            wrapped, cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            _killpg(proc.pid)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _killpg(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # keeps Popen from waiting again
    rss_kb = _read_time_rss(rss_path) if GNU_TIME else usage.ru_maxrss
    rss_mb = None if rss_kb is None else rss_kb / 1024.0
    return Measurement(seconds, rss_mb, proc.returncode, expired.is_set())


def _read_time_rss(path: str) -> float | None:
    # GNU time writes "Command exited with non-zero status N" first on failure.
    try:
        with open(path) as f:
            return float(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def log_tail(log_path: str, lines: int = 8) -> str:
    try:
        with open(log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


def quick(argv: list[str]) -> tuple[int, str]:
    """Run a short helper command (versions, probes): exit code and output."""
    try:
        p = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    return p.returncode, (p.stdout + p.stderr).strip()


# --- the tools ----------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    ninja: list[str] | None
    make: list[str] | None
    doit: list[str] | None
    atmosbuild: list[str] | None
    versions: dict[str, str]  # tool -> version line, or why it is n/a


def find_ninja() -> str | None:
    try:
        import ninja  # the pip package ships the binary next to the interpreter

        path = os.path.join(ninja.BIN_DIR, "ninja")
        if os.access(path, os.X_OK) and not _is_script(path):
            return path
    except (ImportError, AttributeError):
        pass
    path = shutil.which("ninja")
    return os.path.realpath(path) if path else None


def _is_script(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def find_atmosbuild() -> tuple[list[str] | None, str]:
    """argv prefix for the atmosbuild CLI, or None and why not.

    $ATMOSBUILD_CMD overrides (e.g. "atmosbuild" for the installed script).
    """
    override = os.environ.get("ATMOSBUILD_CMD")
    if override:
        argv = shlex.split(override)
    else:
        if REPO_ROOT not in sys.path:
            sys.path.insert(0, REPO_ROOT)
        try:
            found = importlib.util.find_spec("atmosbuild.cli") is not None
        except ImportError:
            found = False
        if not found:
            return None, "n/a: atmosbuild.cli does not exist yet"
        argv = [sys.executable, "-c", ATMOSBUILD_LAUNCHER]
        # As an installed package is (pip compiles on install): with
        # PYTHONDONTWRITEBYTECODE set, every run would compile the modules.
        quick([sys.executable, "-m", "compileall", "-q", os.path.join(REPO_ROOT, "atmosbuild")])
    code, out = quick(argv + ["--help"])
    if code != 0:
        last = out.splitlines()[-1] if out else f"exit {code}"
        return None, f"n/a: `atmosbuild --help` failed: {last}"
    return argv, " ".join(argv[:1] + (["-c <launcher>"] if argv[1:2] == ["-c"] else argv[1:]))


def find_tools() -> Tools:
    versions: dict[str, str] = {}
    ninja = find_ninja()
    make = shutil.which("make")
    doit = [sys.executable, "-m", "doit"]
    if ninja:
        versions["ninja"] = "ninja " + quick([ninja, "--version"])[1]
    if make:
        versions["make"] = quick([make, "--version"])[1].splitlines()[0]
    code, out = quick(doit + ["--version"])
    if code == 0:
        versions["doit"] = f"doit {out.splitlines()[0]} (default backend dbm = {_dbm_module()})"
    else:
        doit = None
    atmos, note = find_atmosbuild()
    versions["atmosbuild"] = note
    versions["python"] = python_note()
    return Tools(
        ninja=[ninja] if ninja else None,
        make=[make] if make else None,
        doit=doit,
        atmosbuild=atmos,
        versions=versions,
    )


def python_note() -> str:
    """The interpreter atmosbuild and doit run on, and what starting it costs:
    every run of both pays it. A base interpreter whose site-packages hold
    .pth hooks (this sandbox's certifi hook imports importlib.resources and
    pathlib) can take 0.1 s where the venv the README makes takes 0.02 s."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        quick([sys.executable, "-c", "pass"])
        runs.append(time.perf_counter() - start)
    venv = "venv" if sys.prefix != sys.base_prefix else "NOT a venv (see bench/README.md)"
    return (f"python {sys.version.split()[0]} at {sys.executable} ({venv}); "
            f"startup {statistics.median(runs) * 1000:.0f} ms")


def _dbm_module() -> str:
    # doit's default backend is `dbm`, i.e. the first of these that imports.
    for name in ("dbm.gnu", "dbm.ndbm", "dbm.dumb"):
        try:
            importlib.import_module(name)
            return name
        except ImportError:
            continue
    return "?"


# Each tool: how to build the whole graph in WS with `jobs` workers, and how
# to forget everything it knows (the fresh state before a cold run).


def build_argv(tools: Tools, tool: str, ws: str, jobs: int, extra: tuple[str, ...] = ()) -> list[str]:
    if tool == "ninja":
        return tools.ninja + ["-C", ws, f"-j{jobs}"]
    if tool == "make":
        # -r: no built-in implicit rules (Ninja has none either).
        return tools.make + ["-r", "-C", ws, f"-j{jobs}"]
    if tool == "doit":
        return tools.doit + ["run", "-n", str(jobs), "-P", "thread"]
    if tool == "atmosbuild":
        return tools.atmosbuild + ["-C", ws, "rollout", "//bench:dev", f"-j{jobs}", *extra]
    raise ValueError(tool)


def reset_state(tool: str, ws: str) -> None:
    if tool == "ninja":
        _empty_dir(os.path.join(ws, "stamps", "ninja"))
        for name in (".ninja_log", ".ninja_deps"):
            remove_file(os.path.join(ws, name))
    elif tool == "make":
        _empty_dir(os.path.join(ws, "stamps", "make"))
    elif tool == "doit":
        _empty_dir(os.path.join(ws, "stamps", "doit"))
        for path in glob.glob(os.path.join(ws, ".doit.db*")):
            remove_file(path)
    elif tool == "atmosbuild":
        shutil.rmtree(os.path.join(ws, ".atmos"), ignore_errors=True)
    else:
        raise ValueError(tool)


def _empty_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
