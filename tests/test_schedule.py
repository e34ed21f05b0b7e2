"""The schedulers, waves and eager, on a fake runner and a fake clock (SPEC 6).

Properties replay the runner's log (tests/fakes.py) and state the SPEC's
invariants over it; stories check small deployments end to end.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st

from atmosbuild.graph.dag import Dag, build_dag, critical_path
from atmosbuild.run.events import CANCELLED, FAILED, SUCCEEDED, TIMEOUT, Finished
from atmosbuild.run.schedule import NodeOutcome, ScheduleHooks, ScheduleOutcome, execute
from fakes import SIGINT, FakeClock, FakeRunner, LogEntry

SETTINGS = settings(max_examples=150, deadline=None)
POLICIES = ("waves", "eager")
TYPES = ("terraform", "nixpack", "command")


# -- generating schedules ---------------------------------------------------------------


@st.composite
def dags(draw, max_nodes: int = 20) -> dict[str, list[str]]:
    """Node i draws its deps among nodes < i; labels and orders are shuffled."""
    n = draw(st.integers(0, max_nodes))
    rnd = draw(st.randoms(use_true_random=False))
    by_index = [draw(st.sets(st.integers(0, i - 1), max_size=min(i, 3))) if i else set() for i in range(n)]
    labels = [f"{TYPES[j % 3]}/n{j}" for j in range(n)]
    rnd.shuffle(labels)
    deps = {labels[i]: [labels[d] for d in ds] for i, ds in enumerate(by_index)}
    keys = list(deps)
    rnd.shuffle(keys)
    return {k: deps[k] for k in keys}


@dataclass
class Scenario:
    deps: dict[str, list[str]]
    durations: dict[str, float]
    failures: set[str]  # of which `timeouts` time out, the rest exit 1
    timeouts: set[str]
    cached: set[str]  # needs_run says no
    parallelism: int
    priority: str  # "critical" | "none" | "random"
    seed: int


@st.composite
def scenarios(draw, *, failures: bool = True, max_nodes: int = 20) -> Scenario:
    deps = draw(dags(max_nodes))
    nodes = sorted(deps)
    some = (lambda **kw: st.sets(st.sampled_from(nodes), **kw)) if nodes else (lambda **kw: st.just(set()))
    durations = dict(zip(nodes, draw(st.lists(st.sampled_from([0.5, 1, 1, 2, 3, 7]), min_size=len(nodes), max_size=len(nodes)))))
    bad = draw(some(max_size=3)) if failures else set()
    timeouts = {n for n in bad if draw(st.booleans())}
    return Scenario(
        deps=deps,
        durations=durations,
        failures=bad,
        timeouts=timeouts,
        cached=draw(some()),
        parallelism=draw(st.integers(1, 6)),
        priority=draw(st.sampled_from(["critical", "none", "random"])),
        seed=draw(st.integers(0, 1000)),
    )


class Recorder(ScheduleHooks):
    """Writes every hook call into the runner's log, between its own entries."""

    def __init__(self, runner: FakeRunner) -> None:
        self.runner = runner

    def _log(self, kind, node=None, detail=None):
        self.runner.log.append(LogEntry(kind, self.runner.clock.now, node, detail))

    def wave_started(self, index, total, nodes_to_run):
        self._log("wave", None, (index, total, tuple(nodes_to_run)))

    def node_started(self, node):
        self._log("hook_started", node)

    def node_cached(self, node):
        self._log("hook_cached", node)

    def node_finished(self, finished):
        self._log("hook_finished", finished.node, finished)

    def node_skipped(self, node, reason):
        self._log("hook_skipped", node, reason)


@dataclass
class Sim:
    sc: Scenario
    dag: Dag
    runner: FakeRunner
    outcome: ScheduleOutcome


def simulate(sc: Scenario, policy: str, *, keep_going: bool = False, interrupt_at: float | None = None,
             modes: dict[str, str] | None = None) -> Sim:
    dag = build_dag(sc.deps)
    runner = FakeRunner(sc.durations, sc.failures, FakeClock(), timeouts=sc.timeouts, interrupt_at=interrupt_at)

    def needs_run(node: str) -> bool:
        answer = node not in sc.cached
        runner.log.append(LogEntry("needs_run", runner.clock.now, node, answer))
        return answer

    if sc.priority == "critical":
        priority = critical_path(dag, sc.durations)
    elif sc.priority == "random":
        rnd = random.Random(sc.seed)
        priority = {n: rnd.choice([0, 1, 2.5]) for n in dag.order}
    else:
        priority = None
    outcome = execute(
        dag, runner, policy=policy, parallelism=sc.parallelism, needs_run=needs_run,
        keep_going=keep_going, priority=priority, hooks=Recorder(runner), modes=modes,
    )
    return Sim(sc, dag, runner, outcome)


# -- the invariants, replayed from the log ------------------------------------------------------


@dataclass
class Replay:
    first_failure: int | None  # log index of the first failed/timeout Finished
    interrupt: int | None  # log index of the interrupt
    settled_at: dict[str, int]  # node -> log index where it got its final status
    asked: dict[str, bool]  # needs_run answers


def replay(sim: Sim, policy: str, keep_going: bool) -> Replay:
    """Walk the log checking what must hold at every step; return landmarks."""
    dag, log, n_max = sim.dag, sim.runner.log, sim.sc.parallelism
    done_ok: set[str] = set()
    asked: dict[str, bool] = {}
    started: set[str] = set()
    running: set[str] = set()
    skipped: set[str] = set()
    settled_at: dict[str, int] = {}
    first_failure = interrupt = None

    def halted() -> bool:
        return interrupt is not None or (first_failure is not None and not keep_going)

    def earlier_waves_settled(node: str, i: int) -> bool:
        return all(settled_at.get(m, i + 1) < i for w in dag.waves[: dag.wave_of[node] - 1] for m in w)

    for i, e in enumerate(log):
        if e.kind == "needs_run":
            assert e.node not in asked, f"needs_run({e.node}) asked twice"
            assert set(dag.deps[e.node]) <= done_ok, f"needs_run({e.node}) before its deps were done"
            assert not halted(), f"needs_run({e.node}) after the schedule halted"
            if policy == "waves":
                assert earlier_waves_settled(e.node, i)
            asked[e.node] = e.detail
            if not e.detail:
                done_ok.add(e.node)
                settled_at[e.node] = i
        elif e.kind == "start":
            assert e.node not in started, f"{e.node} started twice"
            assert asked.get(e.node) is True, f"{e.node} started without needs_run"
            assert set(dag.deps[e.node]) <= done_ok, f"{e.node} started before its deps were done"
            assert not halted(), f"{e.node} started after the schedule halted"
            assert log[i - 1] == LogEntry("hook_started", e.time, e.node)
            if policy == "waves":
                assert earlier_waves_settled(e.node, i), f"{e.node} started before an earlier wave finished"
            started.add(e.node)
            running.add(e.node)
            assert len(running) <= n_max
        elif e.kind == "wait":
            assert e.detail == running and running
            if not halted():
                queued = [m for m, yes in asked.items() if yes and m not in started and m not in skipped]
                assert not (queued and len(running) < n_max), f"slot idle while {queued} queued"
                if policy == "eager":
                    unasked = [
                        m for m in dag.order
                        if m not in asked and m not in skipped and set(dag.deps[m]) <= done_ok
                    ]
                    assert not unasked, f"eager left ready nodes {unasked} unadmitted"
        elif e.kind == "finish":
            running.discard(e.node)
            settled_at[e.node] = i
            assert log[i + 1] == LogEntry("hook_finished", e.time, e.node, e.detail), "node_finished must come first"
            if e.detail.status == SUCCEEDED:
                done_ok.add(e.node)
            elif e.detail.status in (FAILED, TIMEOUT) and first_failure is None:
                first_failure = i
        elif e.kind == "interrupt" and interrupt is None:
            interrupt = i
        elif e.kind == "hook_skipped":
            assert asked.get(e.node) is not False and e.node not in started and e.node not in skipped
            skipped.add(e.node)
            settled_at[e.node] = i
        elif e.kind == "hook_cached":
            assert asked[e.node] is False

    out = sim.outcome
    assert not sim.runner.running, "the schedule returned while nodes still ran"
    assert out.started == tuple(sim.runner.started_order)
    assert list(out.nodes) == list(dag.order)
    finishes = {f.node: f for f in sim.runner.finishes}
    for node, o in out.nodes.items():
        if asked.get(node) is False:
            assert o.status == "cached"
        elif node in started:
            f = finishes[node]
            assert o.finished == f
            assert o.status == {SUCCEEDED: "succeeded", FAILED: "failed", TIMEOUT: "failed", CANCELLED: "cancelled"}[f.status]
            if f.status == TIMEOUT:
                assert o.reason.startswith("timed out")
        elif node in skipped:
            assert o.status == "skipped" and o.reason
        else:
            assert o.status == "cancelled" and interrupt is not None, (node, o)
    assert out.interrupted == (interrupt is not None)
    if interrupt is not None:
        assert out.result == "interrupted"
    else:
        assert out.result == ("failure" if out.with_status("failed") else "success")
    assert sum(out.counts().values()) == len(dag)
    return Replay(first_failure, interrupt, settled_at, asked)


def check_waves_announced(sim: Sim) -> None:
    """Each wave in which something runs is announced once, in order, with
    exactly the nodes that will run, before any of them starts."""
    log, dag = sim.runner.log, sim.dag
    announced = [e.detail for e in log if e.kind == "wave"]
    assert [i for i, _, _ in announced] == sorted({i for i, _, _ in announced})
    for index, total, nodes in announced:
        assert total == len(dag.waves) and nodes
        assert set(nodes) <= set(dag.waves[index - 1])
        assert all(n not in sim.sc.cached for n in nodes)
    for i, e in enumerate(log):
        if e.kind == "start":
            k = dag.wave_of[e.node]
            assert any(x.kind == "wave" and x.detail[0] == k and e.node in x.detail[2] for x in log[:i])


# -- properties -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(sc=scenarios(failures=False))
def test_without_failures_everything_succeeds_or_is_cached(policy, sc):
    sim = simulate(sc, policy)
    r = replay(sim, policy, keep_going=False)
    assert set(r.asked) == set(sc.deps)  # every node asked exactly once
    for node, o in sim.outcome.nodes.items():
        assert o.status == ("cached" if node in sc.cached else "succeeded")
    assert sim.outcome.result == "success" and not sim.runner.stops
    if policy == "waves":
        check_waves_announced(sim)
        wanted = {k for k, wave in enumerate(sim.dag.waves, 1) if any(n not in sc.cached for n in wave)}
        assert {e.detail[0] for e in sim.runner.log if e.kind == "wave"} == wanted


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(sc=scenarios())
def test_fail_fast_starts_nothing_after_the_first_failure(policy, sc):
    sim = simulate(sc, policy)
    r = replay(sim, policy, keep_going=False)
    if r.first_failure is None:
        assert sim.outcome.result == "success"
        return
    log = sim.runner.log
    failed = log[r.first_failure].node
    running_then = {n for n, _ in sim.runner.starts} - {e.node for e in log[: r.first_failure + 1] if e.kind == "finish"}
    stops = sim.runner.stops
    if running_then:
        assert [(nodes, sig) for _, nodes, sig in stops] == [(tuple(sorted(running_then, key=sim.outcome.started.index)), None)]
    else:
        assert stops == []
    for node, o in sim.outcome.nodes.items():
        if node not in r.asked:
            assert o.status == "skipped" and failed in o.reason, (node, o)
        if o.status == "cancelled":
            assert o.reason == f"stopped: {failed} {'timed out' if failed in sc.timeouts else 'failed'}"
    assert sim.outcome.result == "failure"
    if policy == "waves":
        check_waves_announced(sim)


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(sc=scenarios(), data=st.data())
def test_fail_fast_lets_running_applies_finish_and_stops_running_builds(policy, sc, data):
    """SPEC 6: after the first failure nothing starts; of what runs then,
    apply-mode nodes finish (succeeded or failed, never cancelled) and
    build-mode nodes are stopped (cancelled), once, in one stop."""
    nodes = sorted(sc.deps)
    modes = dict(zip(nodes, data.draw(st.lists(st.sampled_from(["apply", "build"]),
                                               min_size=len(nodes), max_size=len(nodes)))))
    sim = simulate(sc, policy, modes=modes)
    r = replay(sim, policy, keep_going=False)  # no start after the failure; at most N at once
    assert sim.runner.max_running <= sc.parallelism
    if r.first_failure is None:
        assert not sim.runner.stops
        return
    log = sim.runner.log
    finished_before = {e.node for e in log[: r.first_failure + 1] if e.kind == "finish"}
    running_then = [n for n in sim.outcome.started if n not in finished_before]
    assert {n for n, _ in sim.runner.starts} == set(sim.outcome.started)
    assert all(sim.runner.start_times[n] <= log[r.first_failure].time for n in sim.outcome.started)
    builds = tuple(n for n in running_then if modes[n] == "build")
    assert [nodes_ for _, nodes_, _ in sim.runner.stops] == ([builds] if builds else [])
    for n in running_then:
        status = sim.outcome.nodes[n].status
        if modes[n] == "apply":
            assert status in ("succeeded", "failed"), (n, status)
            assert sim.outcome.nodes[n].finished.status != CANCELLED
        else:
            assert status == "cancelled", (n, status)
    assert sim.outcome.result == "failure"


def test_fail_fast_story_an_apply_sibling_finishes_a_build_sibling_is_stopped():
    deps = {"terraform/db": [], "nixpack/api": [], "command/bad": [], "terraform/app": ["terraform/db"]}
    dag = build_dag(deps)
    runner = FakeRunner({"terraform/db": 5, "nixpack/api": 5, "command/bad": 1}, failures={"command/bad"})

    class Told(ScheduleHooks):
        calls: list = []

        def failing_fast(self, reason, stopped, finishing):
            self.calls.append((reason, tuple(stopped), tuple(finishing)))

    outcome = execute(dag, runner, policy="waves", parallelism=3, needs_run=lambda n: True, hooks=Told(),
                      modes={"terraform/db": "apply", "nixpack/api": "build", "command/bad": "apply",
                             "terraform/app": "apply"})
    assert runner.stops == [(1.0, ("nixpack/api",), None)]
    assert Told.calls == [("command/bad failed", ("nixpack/api",), ("terraform/db",))]
    assert {n: o.status for n, o in outcome.nodes.items()} == {
        "terraform/db": "succeeded", "nixpack/api": "cancelled", "command/bad": "failed",
        "terraform/app": "skipped"}
    assert outcome.nodes["terraform/db"].finished.finished == 5.0  # ran to its end


def test_the_schedulers_modes_are_the_component_types_modes():
    from atmosbuild.components import base
    from atmosbuild.run import schedule

    assert (schedule.APPLY, schedule.BUILD) == (base.APPLY, base.BUILD)


def test_wave_order_is_by_id_at_j1_and_longest_recorded_first_above():
    from atmosbuild.run.schedule import priorities

    dag = build_dag({"a": [], "b": [], "c": [], "d": ["a"]})
    durations = {"a": 1.0, "b": 9.0, "c": None, "d": 2.0}
    for parallelism, expected in ((1, ("a", "b", "c", "d")), (2, ("b", "a", "c", "d"))):
        runner = FakeRunner({})
        outcome = execute(dag, runner, policy="waves", parallelism=parallelism, needs_run=lambda n: True,
                          priority=priorities(dag, "waves", parallelism, durations))
        assert outcome.started == expected, parallelism
    # eager: the longest remaining path, weighted by the recorded durations
    assert priorities(dag, "eager", 1, durations) == {"a": 3.0, "b": 9.0, "c": 1.0, "d": 2.0}


def expected_keep_going(dag: Dag, sc: Scenario) -> dict[str, str]:
    status: dict[str, str] = {}
    for n in dag.order:
        if any(status[d] in ("failed", "skipped") for d in dag.deps[n]):
            status[n] = "skipped"
        elif n in sc.cached:
            status[n] = "cached"
        else:
            status[n] = "failed" if n in sc.failures else "succeeded"
    return status


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(sc=scenarios())
def test_keep_going_runs_exactly_what_is_not_downstream_of_a_failure(policy, sc):
    sim = simulate(sc, policy, keep_going=True)
    replay(sim, policy, keep_going=True)
    expected = expected_keep_going(sim.dag, sc)
    assert {n: o.status for n, o in sim.outcome.nodes.items()} == expected
    assert set(sim.outcome.started) == {n for n, s in expected.items() if s in ("succeeded", "failed")}
    for node, o in sim.outcome.nodes.items():
        if o.status == "skipped":
            culprit = o.reason.split()[1]
            assert o.reason.startswith("dependency ") and expected[culprit] == "failed"
            assert culprit in sim.dag.closure([node])
    assert not sim.runner.stops
    if policy == "waves":
        check_waves_announced(sim)


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(sc=scenarios(), keep_going=st.booleans(), at=st.floats(0, 12))
def test_interrupt_stops_once_and_cancels_the_rest(policy, sc, keep_going, at):
    sim = simulate(sc, policy, keep_going=keep_going, interrupt_at=at)
    r = replay(sim, policy, keep_going=keep_going)
    if r.interrupt is None:
        assert not sim.outcome.interrupted
        return
    log = sim.runner.log
    running_then = log[r.interrupt - 1].detail  # the wait() that got the interrupt
    signalled = [(nodes, sig) for _, nodes, sig in sim.runner.stops if sig is not None]
    assert len(signalled) == 1 and set(signalled[0][0]) == running_then and signalled[0][1] == SIGINT
    assert log[r.interrupt + 1].kind == "stop"  # straight away
    for node, o in sim.outcome.nodes.items():
        if r.settled_at.get(node, len(log)) > r.interrupt:
            assert o.status == "cancelled", (node, o)
    assert sim.outcome.result == "interrupted"


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(sc=scenarios(failures=False))
def test_makespan_is_at_least_the_lower_bound(policy, sc):
    sim = simulate(sc, policy)
    work = {n: (0.0 if n in sc.cached else sc.durations[n]) for n in sim.dag.order}
    cp = critical_path(sim.dag, work)
    bound = max(max(cp.values(), default=0.0), sum(work.values()) / sc.parallelism)
    assert sim.runner.clock.now >= bound - 1e-9


@SETTINGS
@given(
    chain=st.lists(st.integers(1, 4), min_size=2, max_size=10),
    shorts=st.lists(st.sampled_from([0.5, 1]), max_size=30),
    parallelism=st.integers(1, 6),
)
def test_eager_beats_waves_on_a_long_chain_with_short_side_jobs(chain, shorts, parallelism):
    deps = {f"terraform/c{i}": [f"terraform/c{i - 1}"] if i else [] for i in range(len(chain))}
    deps.update({f"command/s{i}": [] for i in range(len(shorts))})
    durations = {f"terraform/c{i}": d for i, d in enumerate(chain)}
    durations.update({f"command/s{i}": d for i, d in enumerate(shorts)})
    dag = build_dag(deps)
    makespan = {}
    for policy in POLICIES:
        runner = FakeRunner(durations)
        execute(dag, runner, policy=policy, parallelism=parallelism, needs_run=lambda n: True,
                priority=critical_path(dag, durations))
        makespan[policy] = runner.clock.now
    assert makespan["eager"] <= makespan["waves"]
    assert makespan["eager"] >= max(sum(chain), sum(durations.values()) / parallelism)


# -- stories --------------------------------------------------------------------------------

SEED_CHAIN = {
    "terraform/ecr/api": [],
    "nixpack/api": ["terraform/ecr/api"],
    "terraform/ecs/taskdef-api": ["nixpack/api"],
    "terraform/ecs/service-api": ["terraform/ecs/taskdef-api"],
}


def run(deps, durations=None, *, policy="waves", parallelism=4, cached=(), keep_going=False, **runner_kw):
    dag = build_dag(deps)
    runner = FakeRunner(durations or {}, **runner_kw)
    outcome = execute(dag, runner, policy=policy, parallelism=parallelism, keep_going=keep_going,
                      needs_run=lambda n: n not in cached, hooks=Recorder(runner))
    return outcome, runner


def hook_calls(runner, *kinds):
    return [(e.kind, e.node, e.detail) for e in runner.log if e.kind in kinds]


@pytest.mark.parametrize("policy", POLICIES)
def test_seed_chain_runs_in_four_waves_then_is_cached(policy):
    outcome, runner = run(SEED_CHAIN, policy=policy)
    assert outcome.result == "success"
    assert outcome.started == tuple(SEED_CHAIN)
    assert runner.start_times == {n: float(i) for i, n in enumerate(SEED_CHAIN)}
    if policy == "waves":
        assert [e.detail for e in runner.log if e.kind == "wave"] == [
            (i, 4, (n,)) for i, n in enumerate(SEED_CHAIN, 1)
        ]

    again, runner = run(SEED_CHAIN, policy=policy, cached=set(SEED_CHAIN))
    assert again.result == "success" and again.started == ()
    assert again.counts() == {"succeeded": 0, "cached": 4, "failed": 0, "skipped": 0, "cancelled": 0}
    assert hook_calls(runner, "hook_cached", "wave") == [("hook_cached", n, None) for n in SEED_CHAIN]


def test_only_what_changed_reruns_and_the_wave_says_so():
    outcome, runner = run(SEED_CHAIN, cached={"terraform/ecr/api", "nixpack/api"})
    assert outcome.started == ("terraform/ecs/taskdef-api", "terraform/ecs/service-api")
    assert runner.start_times["terraform/ecs/taskdef-api"] == 0.0
    assert [e.detail[:2] for e in runner.log if e.kind == "wave"] == [(3, 4), (4, 4)]


DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


@pytest.mark.parametrize("policy", POLICIES)
def test_diamond_runs_its_middle_concurrently(policy):
    outcome, runner = run(DIAMOND, {"b": 2}, policy=policy, parallelism=2)
    assert runner.start_times == {"a": 0, "b": 1, "c": 1, "d": 3}
    assert runner.max_running == 2 and outcome.result == "success"


@pytest.mark.parametrize("policy", POLICIES)
def test_j1_is_strictly_serial(policy):
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": [], "f": ["e"]}
    outcome, runner = run(deps, {"a": 2, "c": 3}, policy=policy, parallelism=1)
    assert runner.max_running == 1
    spans = sorted((f.started, f.finished) for f in runner.finishes)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert runner.clock.now == sum(runner.duration(n) for n in deps)
    # Deterministic: longest remaining path first, then id.
    assert outcome.started == {"waves": ("a", "e", "b", "c", "f", "d"),
                               "eager": ("a", "b", "c", "e", "d", "f")}[policy]


def test_a_node_waits_for_its_wave_but_not_under_eager():
    deps = {"fast": [], "slow": [], "after-fast": ["fast"]}
    _, waves = run(deps, {"slow": 5}, policy="waves")
    _, eager = run(deps, {"slow": 5}, policy="eager")
    assert waves.start_times["after-fast"] == 5.0
    assert eager.start_times["after-fast"] == 1.0


def test_priority_orders_a_wave():
    deps = {n: [] for n in "abcd"}
    dag = build_dag(deps)
    runner = FakeRunner({})
    outcome = execute(dag, runner, policy="waves", parallelism=1, needs_run=lambda n: True,
                      priority={"c": 5, "d": 5, "a": 1})
    assert outcome.started == ("c", "d", "a", "b")


@pytest.mark.parametrize("policy", POLICIES)
def test_fail_fast_stops_the_running_and_skips_the_rest(policy):
    deps = {**DIAMOND, "e": ["a"], "g": ["e"]}
    outcome, runner = run(deps, {"c": 5, "e": 9}, policy=policy, parallelism=3, failures={"b"})
    assert runner.stops == [(2.0, ("c", "e"), None)]
    status = {n: (o.status, o.reason) for n, o in outcome.nodes.items()}
    assert status == {
        "a": ("succeeded", ""),
        "b": ("failed", "exit code 1"),
        "c": ("cancelled", "stopped: b failed"),
        "e": ("cancelled", "stopped: b failed"),
        "d": ("skipped", "dependency b failed"),
        "g": ("skipped", "not started: b failed"),
    }
    assert outcome.result == "failure"
    assert hook_calls(runner, "hook_skipped") == [
        ("hook_skipped", "d", "dependency b failed"),
        ("hook_skipped", "g", "not started: b failed"),
    ]


@pytest.mark.parametrize("policy", POLICIES)
def test_keep_going_skips_only_what_depends_on_the_failure(policy):
    deps = {**SEED_CHAIN, "command/lint": [], "command/smoke": ["command/lint"]}
    outcome, runner = run(deps, policy=policy, failures={"terraform/ecr/api"}, keep_going=True)
    assert set(outcome.started) == {"terraform/ecr/api", "command/lint", "command/smoke"}
    for node in ("nixpack/api", "terraform/ecs/taskdef-api", "terraform/ecs/service-api"):
        assert outcome.nodes[node].status == "skipped"
        assert outcome.nodes[node].reason == "dependency terraform/ecr/api failed"
    assert outcome.nodes["command/smoke"].status == "succeeded"
    assert outcome.result == "failure"


def test_timeout_is_a_failure_that_says_so():
    outcome, _ = run({"command/smoke": [], "x": ["command/smoke"]}, {"command/smoke": 300},
                     timeouts={"command/smoke"})
    assert outcome.nodes["command/smoke"].status == "failed"
    assert outcome.nodes["command/smoke"].reason == "timed out after 300 s"
    assert outcome.nodes["x"].reason == "dependency command/smoke timed out"


@pytest.mark.parametrize("policy", POLICIES)
def test_interrupt_cancels_and_records_what_finished_anyway(policy):
    deps = {"a": [], "b": [], "stubborn": [], "c": ["a"]}
    outcome, runner = run(deps, {"a": 4, "b": 4, "stubborn": 6}, policy=policy,
                          interrupt_at=2.0, ignores_stop={"stubborn"})
    assert runner.stops == [(2.0, ("a", "b", "stubborn"), SIGINT)]
    assert {n: o.status for n, o in outcome.nodes.items()} == {
        "a": "cancelled", "b": "cancelled", "stubborn": "succeeded", "c": "cancelled",
    }
    assert outcome.nodes["c"].reason == "interrupted before it started"
    assert outcome.nodes["a"].reason == "interrupted"
    assert ("hook_finished", "stubborn") in [(k, n) for k, n, _ in hook_calls(runner, "hook_finished")]
    assert outcome.result == "interrupted" and outcome.interrupted
    assert runner.clock.now == 6.0


def test_a_second_interrupt_does_not_stop_again():
    outcome, runner = run({"a": [], "b": []}, {"a": 5, "b": 5}, interrupt_at=[1.0, 2.0], ignores_stop={"a", "b"})
    assert runner.interrupts == 2
    assert runner.stops == [(1.0, ("a", "b"), SIGINT)]
    assert outcome.result == "interrupted"
    assert [o.status for o in outcome.nodes.values()] == ["succeeded", "succeeded"]


def test_a_cancel_nobody_asked_for_is_a_failure():
    class Flaky(FakeRunner):
        def wait(self):
            event = super().wait()
            if isinstance(event, Finished) and event.node == "a":
                return Finished("a", CANCELLED, event.started, event.finished, message="killed by OOM")
            return event

    dag = build_dag({"a": [], "b": ["a"]})
    outcome = execute(dag, Flaky({}), policy="eager", parallelism=2, needs_run=lambda n: True, keep_going=True)
    assert outcome.nodes["a"] == NodeOutcome("cancelled", "killed by OOM", outcome.nodes["a"].finished)
    assert outcome.nodes["b"].reason == "dependency a was cancelled"
    assert outcome.result == "failure"


def test_bad_arguments_are_refused():
    dag = build_dag({"a": []})
    with pytest.raises(ValueError):
        execute(dag, FakeRunner({}), policy="waves", parallelism=0, needs_run=lambda n: True)
    with pytest.raises(ValueError):
        execute(dag, FakeRunner({}), policy="greedy", parallelism=1, needs_run=lambda n: True)


def test_an_empty_graph_is_a_success():
    outcome = execute(build_dag({}), FakeRunner({}), policy="waves", parallelism=1, needs_run=lambda n: True)
    assert outcome.result == "success" and outcome.nodes == {}


# -- scale ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_50k_nodes_schedule_fast(policy):
    rnd = random.Random(3)
    n = 50_000
    ids = [f"terraform/svc{i:06d}" for i in range(n)]
    rnd.shuffle(ids)
    deps = {ids[i]: [ids[rnd.randrange(i)] for _ in range(rnd.randint(0, 3))] if i else [] for i in range(n)}
    dag = build_dag(deps)
    durations = {node: rnd.choice([1, 2, 5]) for node in ids}
    cached = set(rnd.sample(ids, n // 3))
    priority = critical_path(dag, durations)
    runner = FakeRunner(durations)
    t = time.process_time()
    outcome = execute(dag, runner, policy=policy, parallelism=8, needs_run=lambda x: x not in cached,
                      priority=priority)
    elapsed = time.process_time() - t
    assert outcome.result == "success" and len(outcome.started) == n - len(cached)
    assert elapsed < 4, f"{elapsed:.2f} s of CPU"  # ~1 s with the fake runner; CPU time, not wall
