"""DaskRunner through the Runner protocol (as the schedulers drive it),
against the session's real cluster: statuses, logs, values, stops."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytest

from atmosbuild.run.dask_executor import DaskRunner
from atmosbuild.run.events import CANCELLED, FAILED, SUCCEEDED, TIMEOUT, Finished
from atmosbuild.run.process import ActionSpec, Step
from atmosbuild.run.ui import Console
from daskcluster import dask_cluster, live_in_group  # noqa: F401

pytest.importorskip("distributed")

ENV = {"PATH": os.environ["PATH"], "LC_ALL": "C"}


class Rig:
    def __init__(self, tmp: Path, cluster) -> None:
        self.tmp = tmp
        self.specs: dict[str, ActionSpec] = {}
        self.out = io.StringIO()
        self.console = Console(self.out, io.StringIO(), prefix=True, live=False, color=False)
        self.runner = DaskRunner(self.specs.__getitem__, self.console, grace_period=5.0,
                                 executor=cluster.executor)

    def add(self, node: str, script: str, capture: bool = False, **kw) -> ActionSpec:
        work = self.tmp / node
        work.mkdir(parents=True, exist_ok=True)
        kw.setdefault("env", dict(ENV))
        self.specs[node] = ActionSpec(node, [Step(("sh", "-c", script), capture)], cwd=str(work),
                                      log_path=str(self.tmp / "logs" / f"{node}.log"),
                                      resources={"terraform": 1}, **kw)
        return self.specs[node]

    def finish(self, count: int) -> dict[str, Finished]:
        done = {}
        while len(done) < count:
            event = self.runner.wait()
            assert isinstance(event, Finished)
            done[event.node] = event
        return done


@pytest.fixture
def rig(tmp_path, dask_cluster):
    r = Rig(tmp_path, dask_cluster)
    r.runner.setup()
    try:
        yield r
    finally:
        r.runner.teardown()


def test_values_come_from_collect_with_the_captured_stdout(rig, dask_cluster):
    rig.add("a", 'echo warning >&2; echo \'{"x": 1}\'', capture=True,
            collect=lambda captured: {"captured": captured})
    rig.runner.start("a")
    fin = rig.finish(1)["a"]
    assert fin.status == SUCCEEDED and fin.value == {"captured": '{"x": 1}\n'}
    assert fin.worker == dask_cluster.workers["tf"]
    log = Path(rig.specs["a"].log_path).read_text()
    assert "warning" in log and '{"x": 1}' in log


def test_timeouts_and_retries_on_the_worker(rig):
    rig.add("t", "echo try; sleep 30", timeout=0.5, retries=1)
    rig.runner.start("t")
    fin = rig.finish(1)["t"]
    assert (fin.status, fin.message) == (TIMEOUT, "timed out after 0.5 s")
    log = Path(rig.specs["t"].log_path).read_text()
    assert log.count("\ntry\n") == 2 and "--- retry 1/1 (timed out after 0.5 s)" in log
    assert "[t] retry 1/1" in rig.out.getvalue()


def test_a_failing_prepare_fails_the_action_before_anything_is_sent(rig):
    def prepare():
        raise ValueError("missing output x of command/up")

    rig.add("p", "echo never", prepare=prepare)
    rig.runner.start("p")
    fin = rig.finish(1)["p"]
    assert (fin.status, fin.message, fin.worker) == (FAILED, "missing output x of command/up", "")
    assert "never" not in rig.out.getvalue()


def test_an_action_above_the_shipping_limit_fails_saying_so(rig):
    rig.runner.ship_limit = 1000
    rig.add("big", "true")
    (rig.tmp / "big" / "blob").write_bytes(b"x" * 2000)
    rig.runner.start("big")
    fin = rig.finish(1)["big"]
    assert fin.status == FAILED and "the most an action ships to a Dask worker" in fin.message


def test_stop_reaches_the_process_on_its_worker(rig, tmp_path):
    pid = tmp_path / "pid"
    rig.add("s", f"echo $$ > {pid}; sleep 60 & wait")
    rig.runner.start("s")
    deadline = time.monotonic() + 30
    while not pid.exists() or not pid.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rig.runner.stop(["s"], signal.SIGTERM)
    fin = rig.finish(1)["s"]
    assert fin.status == CANCELLED
    assert live_in_group(int(pid.read_text())) == []


def test_a_finished_runner_leaves_no_events_or_claims_on_the_scheduler(tmp_path, dask_cluster):
    from distributed import Client

    rig = Rig(tmp_path, dask_cluster)
    rig.runner.setup()
    try:
        rig.add("a", "echo line")
        rig.runner.start("a")
        assert rig.finish(1)["a"].status == SUCCEEDED
        topic = rig.runner._topic
    finally:
        rig.runner.teardown()

    def held(dask_scheduler=None):
        topics = dask_scheduler._broker._topics
        claims = [n for n in dask_scheduler.extensions["events"]._events if str(n).startswith("claim-" + topic)]
        return topic in topics, claims

    with Client(dask_cluster.address, set_as_default=False) as client:
        assert client.run_on_scheduler(held) == (False, [])
