"""The dependency graph: waves, cycles, critical paths, closures (SPEC 6)."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings, strategies as st

from atmosbuild.errors import CycleError
from atmosbuild.graph.dag import Dag, build_dag, critical_path

SETTINGS = settings(max_examples=150, deadline=None)

TYPES = ("terraform", "nixpack", "command")


@st.composite
def dags(draw, min_nodes: int = 0, max_nodes: int = 30) -> dict[str, list[str]]:
    """A random DAG as {node: [deps]}: node i draws its deps among nodes < i,
    then labels and insertion order are shuffled so neither follows the order."""
    n = draw(st.integers(min_nodes, max_nodes))
    rnd = draw(st.randoms(use_true_random=False))
    by_index = [
        draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4))) if i else set()
        for i in range(n)
    ]
    labels = [f"{TYPES[j % 3]}/{'ecs/' * (j % 2)}n{j}" for j in range(n)]
    rnd.shuffle(labels)
    deps = {labels[i]: [labels[d] for d in ds] for i, ds in enumerate(by_index)}
    return reshuffled(deps, rnd)


def reshuffled(deps: dict[str, list[str]], rnd: random.Random) -> dict[str, list[str]]:
    """The same graph, nodes inserted and deps listed in another order."""
    keys = list(deps)
    rnd.shuffle(keys)
    out = {}
    for k in keys:
        ds = list(deps[k])
        rnd.shuffle(ds)
        out[k] = ds
    return out


def reach(edges: dict[str, list[str]] | Dag, start: str) -> set[str]:
    """Brute force: nodes reachable from `start` in one or more steps."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for m in edges[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


# -- stories -----------------------------------------------------------------------

SEED_CHAIN = {
    "terraform/ecr/api": [],
    "nixpack/api": ["terraform/ecr/api"],
    "terraform/ecs/taskdef-api": ["nixpack/api"],
    "terraform/ecs/service-api": ["terraform/ecs/taskdef-api"],
}


def test_seed_chain_is_four_waves():
    dag = build_dag(SEED_CHAIN)
    assert dag.waves == (
        ("terraform/ecr/api",),
        ("nixpack/api",),
        ("terraform/ecs/taskdef-api",),
        ("terraform/ecs/service-api",),
    )
    assert dag.wave_of["terraform/ecs/service-api"] == 4
    assert dag.order == tuple(SEED_CHAIN)
    assert dag.dependents["nixpack/api"] == ("terraform/ecs/taskdef-api",)
    assert critical_path(dag) == {
        "terraform/ecr/api": 4.0,
        "nixpack/api": 3.0,
        "terraform/ecs/taskdef-api": 2.0,
        "terraform/ecs/service-api": 1.0,
    }


def test_diamond_layers_by_deepest_dependency():
    dag = build_dag({"d": ["b", "c", "a"], "c": ["a"], "b": ["a"], "a": [], "x": ["a"], "y": []})
    assert dag.waves == (("a", "y"), ("b", "c", "x"), ("d",))
    assert dag.deps["d"] == ("a", "b", "c")
    assert dag.dependents["a"] == ("b", "c", "d", "x")
    assert dag.closure(["d"]) == {"a", "b", "c", "d"}
    assert dag.downstream(["b"]) == {"d"}
    assert dag.downstream(["a", "b"]) == {"b", "c", "d", "x"}
    sub = dag.subgraph(["d", "b", "y"])
    assert sub.waves == (("b", "y"), ("d",)) and sub.deps["d"] == ("b",)


def test_weighted_critical_path():
    dag = build_dag({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    cp = critical_path(dag, {"a": 1, "b": 10, "c": 2, "d": 0.5})
    assert cp == {"d": 0.5, "b": 10.5, "c": 2.5, "a": 11.5}


def test_cycle_is_named_as_in_the_spec():
    with pytest.raises(CycleError) as err:
        build_dag({"terraform/a": ["nixpack/b"], "nixpack/b": ["terraform/a"], "command/c": ["nixpack/b"]})
    assert err.value.cycle == ("nixpack/b", "terraform/a", "nixpack/b")
    assert err.value.exit_code == 2
    assert err.value.render() == "error: dependency cycle: nixpack/b -> terraform/a -> nixpack/b"


def test_self_dependency_is_a_cycle():
    with pytest.raises(CycleError) as err:
        build_dag({"a": [], "command/x": ["a", "command/x"]})
    assert err.value.cycle == ("command/x", "command/x")


def test_reported_cycle_is_the_shortest_through_the_smallest_cyclic_node():
    # b -> c -> d -> b and b -> e -> b: both go through b, the shorter is reported.
    deps = {"a": ["b"], "b": ["c", "e"], "c": ["d"], "d": ["b"], "e": ["b"], "z": ["z"]}
    with pytest.raises(CycleError) as err:
        build_dag(deps)
    assert err.value.cycle == ("b", "e", "b")


def test_unknown_nodes_are_refused():
    dag = build_dag({"a": []})
    with pytest.raises(KeyError):
        dag.closure(["nope"])
    with pytest.raises(AssertionError):
        build_dag({"a": ["missing"]})


def test_empty_graph():
    dag = build_dag({})
    assert dag.waves == () and dag.order == () and critical_path(dag) == {}


# -- properties ----------------------------------------------------------------------


@SETTINGS
@given(dags())
def test_waves_are_the_longest_path_layering(deps):
    dag = build_dag(deps)
    flat = [n for wave in dag.waves for n in wave]
    assert sorted(flat) == sorted(deps) and len(set(flat)) == len(flat)  # a partition
    assert all(list(w) == sorted(w) and w for w in dag.waves)
    for k, wave in enumerate(dag.waves, start=1):
        for n in wave:
            assert dag.wave_of[n] == k
            assert all(dag.wave_of[d] < k for d in deps[n])  # edges go up
            if k > 1:
                assert any(dag.wave_of[d] == k - 1 for d in deps[n])
            else:
                assert not deps[n]
    assert dag.order == tuple(flat)
    for n in deps:
        assert dag.deps[n] == tuple(sorted(set(deps[n])))
        assert dag.dependents[n] == tuple(sorted(m for m in deps if n in deps[m]))


@SETTINGS
@given(dags(), st.randoms(use_true_random=False))
def test_dag_is_independent_of_input_order(deps, rnd):
    assert build_dag(deps) == build_dag(reshuffled(deps, rnd))


@st.composite
def cyclic_graphs(draw):
    """A random DAG plus one edge a -> b where b already (transitively) depends on a."""
    deps = draw(dags(min_nodes=1))
    a = draw(st.sampled_from(sorted(deps)))
    rev = {n: [m for m in deps if n in deps[m]] for n in deps}
    b = draw(st.sampled_from(sorted(reach(rev, a) | {a})))
    deps[a] = [*deps[a], b]
    return deps


@SETTINGS
@given(cyclic_graphs(), st.randoms(use_true_random=False))
def test_any_cycle_is_rejected_with_a_real_cycle(deps, rnd):
    with pytest.raises(CycleError) as err:
        build_dag(deps)
    cycle = err.value.cycle
    assert len(cycle) >= 2 and cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1  # simple
    for a, b in zip(cycle, cycle[1:]):
        assert b in deps[a]  # each depends on the next
    on_a_cycle = {n for n in deps if n in reach(deps, n)}
    assert cycle[0] == min(on_a_cycle)
    with pytest.raises(CycleError) as again:
        build_dag(reshuffled(deps, rnd))
    assert again.value.cycle == cycle  # deterministic


@SETTINGS
@given(dags(), st.data())
def test_critical_path_is_longest_weighted_path_to_a_sink(deps, data):
    dag = build_dag(deps)
    nodes = sorted(deps)
    weights = data.draw(
        st.dictionaries(st.sampled_from(nodes), st.floats(0, 100), max_size=len(nodes))
        if nodes else st.just({})
    )
    cp = critical_path(dag, weights)
    assert set(cp) == set(deps)
    for n in deps:
        below = max((cp[m] for m in dag.dependents[n]), default=0.0)
        assert cp[n] == pytest.approx(weights.get(n, 1.0) + below)


@SETTINGS
@given(dags(min_nodes=1), st.data())
def test_closure_downstream_and_subgraph_match_brute_force(deps, data):
    dag = build_dag(deps)
    picked = data.draw(st.sets(st.sampled_from(sorted(deps)), max_size=4))
    assert dag.closure(picked) == set(picked).union(*(reach(deps, n) for n in picked))
    rev = {n: [m for m in deps if n in deps[m]] for n in deps}
    assert dag.downstream(picked) == set().union(*(reach(rev, n) for n in picked))
    keep = dag.closure(picked)
    assert dag.subgraph(keep) == build_dag({n: [d for d in deps[n] if d in keep] for n in keep})


# -- scale -----------------------------------------------------------------------------


def random_dag(n: int, seed: int = 7, fanin: int = 3) -> dict[str, list[str]]:
    rnd = random.Random(seed)
    ids = [f"terraform/svc{i:06d}" for i in range(n)]
    rnd.shuffle(ids)
    return {ids[i]: [ids[rnd.randrange(i)] for _ in range(rnd.randint(0, fanin))] if i else [] for i in range(n)}


def test_50k_nodes_build_and_layer_fast():
    deps = random_dag(50_000)
    t = time.process_time()
    dag = build_dag(deps)
    cp = critical_path(dag)
    sub = dag.subgraph(dag.closure(dag.order[-100:]))
    elapsed = time.process_time() - t
    assert len(dag) == 50_000 and len(cp) == 50_000 and len(sub) <= 50_000
    assert elapsed < 3, f"{elapsed:.2f} s of CPU"  # ~0.6 s here; CPU time, so load elsewhere does not count


def test_100k_chain_and_100k_cycle_need_no_recursion():
    n = 100_000
    chain = {f"n{i}": [f"n{i - 1}"] if i else [] for i in range(n)}
    dag = build_dag(chain)
    assert len(dag.waves) == n and dag.wave_of[f"n{n - 1}"] == n
    assert critical_path(dag)["n0"] == n
    chain["n0"] = [f"n{n - 1}"]
    with pytest.raises(CycleError) as err:
        build_dag(chain)
    assert len(err.value.cycle) == n + 1 and err.value.cycle[0] == "n0"
