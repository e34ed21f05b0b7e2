"""Exporting the plan (SPEC 7): `graph --format dot|json|mermaid`, `rollout
--dry-run --graph ...` and `plan`, on a copy of the examples/ workspace (the
seed's four-wave chain), so no state ever appears in the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_cli

CHAIN = ["command/ecr/api", "command/image/api", "command/ecs/taskdef-api", "command/ecs/service-api"]
WAVES = [[node] for node in CHAIN]
EDGES = {(CHAIN[i], CHAIN[i + 1]) for i in range(3)}
NODE_KEYS = {"id", "type", "name", "wave", "depends_on", "key", "status", "reason"}


@pytest.fixture
def examples(tmp_path) -> Path:
    root = tmp_path / "examples"
    shutil.copytree(REPO / "examples", root, symlinks=True,
                    ignore=shutil.ignore_patterns(".atmos", ".local-cloud", "__pycache__"))
    return root


def atmos(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("-C", str(root), *args, cwd=root)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- JSON ----------------------------------------------------------------------------

def test_json_has_exactly_the_documented_shape(examples):
    data = json.loads(ok(atmos(examples, "graph", "//api:dev", "--format", "json")))
    assert set(data) == {"label", "deployment", "target", "waves", "nodes", "edges"}
    assert (data["label"], data["deployment"], data["target"]) == ("//api:dev", "api", "dev")
    assert data["waves"] == WAVES
    assert {tuple(e) for e in data["edges"]} == EDGES and len(data["edges"]) == 3
    nodes = {n["id"]: n for n in data["nodes"]}
    assert list(nodes) == CHAIN
    for wave, nid in enumerate(CHAIN, 1):
        node = nodes[nid]
        assert set(node) == NODE_KEYS
        assert (node["type"], node["name"], node["wave"]) == ("command", nid.split("/", 1)[1], wave)
        assert node["depends_on"] == ([CHAIN[wave - 2]] if wave > 1 else [])
        assert node["status"] == "run" and node["reason"] == "never applied"
    # Only the first key is known before anything ran: the others hash their
    # upstream's outputs (SPEC 5).
    assert re.fullmatch(r"[0-9a-f]{32}", nodes[CHAIN[0]]["key"])
    assert [nodes[n]["key"] for n in CHAIN[1:]] == [None, None, None]


def test_edges_and_depends_on_tell_the_same_story(examples):
    data = json.loads(ok(atmos(examples, "graph", "//api:dev", "--format", "json")))
    from_nodes = {(dep, n["id"]) for n in data["nodes"] for dep in n["depends_on"]}
    assert from_nodes == {tuple(e) for e in data["edges"]}
    wave_of = {n["id"]: n["wave"] for n in data["nodes"]}
    assert all(wave_of[a] < wave_of[b] for a, b in from_nodes)
    assert [[n for n in CHAIN if wave_of[n] == k] for k in range(1, 5)] == data["waves"]


def test_a_dry_run_exports_the_same_graph_and_writes_nothing(examples):
    before = tree(examples)
    graph = ok(atmos(examples, "graph", "//api:dev", "--format", "json"))
    dry = ok(atmos(examples, "rollout", "//api:dev", "--dry-run", "--graph", "json"))
    assert json.loads(dry) == json.loads(graph)
    table = ok(atmos(examples, "rollout", "//api:dev", "--dry-run"))
    assert all(nid in table for nid in CHAIN)
    assert "Workspace:" not in table
    assert not (examples / ".atmos").exists() and not (examples / ".local-cloud").exists()
    assert tree(examples) == before


@pytest.mark.parametrize("fmt", ["dot", "json", "mermaid"])
@pytest.mark.parametrize("command", ["graph", "rollout"])
def test_output_writes_the_file_instead_of_stdout(examples, tmp_path, fmt, command):
    out = tmp_path / "out" / f"plan.{fmt}"
    out.parent.mkdir()
    args = (["graph", "//api:dev", "--format", fmt] if command == "graph"
            else ["rollout", "//api:dev", "--dry-run", "--graph", fmt])
    proc = atmos(examples, *args, "--output", str(out))
    assert ok(proc) == ""
    assert out.read_text() == ok(atmos(examples, *args))
    assert not (examples / ".atmos").exists()


def test_graph_flags_are_checked(examples):
    for args, says in [(["rollout", "//api:dev", "--graph", "json"], "--graph needs --dry-run"),
                       (["rollout", "//api:dev", "--dry-run", "--output", "x.json"], "--output goes with --graph"),
                       (["graph", "//api:dev", "--format", "svg"], "svg")]:
        proc = atmos(examples, *args)
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and says in proc.stderr
        assert not (examples / ".atmos").exists()


# -- DOT, read back by Graphviz itself ---------------------------------------------------

def graphviz(dot_text: str) -> dict:
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed")
    proc = subprocess.run(["dot", "-Tjson0"], input=dot_text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    return json.loads(proc.stdout)


def read_dot(dot_text: str):
    """(node names, edges, {cluster name: node names}, {node: fillcolor}) as Graphviz sees them."""
    g = graphviz(dot_text)
    assert g["directed"] is True
    objects = g["objects"]
    names = {o["_gvid"]: o["name"] for o in objects if "nodes" not in o}
    clusters = {o["name"]: sorted(names[i] for i in o.get("nodes", [])) for o in objects if "nodes" in o}
    edges = {(names[e["tail"]], names[e["head"]]) for e in g.get("edges", [])}
    colours = {o["name"]: o.get("fillcolor") for o in objects if "nodes" not in o}
    return set(names.values()), edges, clusters, colours


def test_dot_is_a_digraph_graphviz_reads_with_one_cluster_per_wave(examples):
    nodes, edges, clusters, colours = read_dot(ok(atmos(examples, "graph", "//api:dev", "--format", "dot")))
    assert nodes == set(CHAIN)
    assert edges == EDGES
    assert clusters == {f"cluster_wave_{k}": [nid] for k, nid in enumerate(CHAIN, 1)}
    assert len(set(colours.values())) == 1  # all "run", one colour


def test_dot_status_colours_follow_the_state(examples):
    """After a rollout everything is cached; change one source file and the
    image is rebuilt while its dependents wait on its result."""
    ok(atmos(examples, "rollout", "//api:dev", "-j1"))
    _, _, _, cached = read_dot(ok(atmos(examples, "graph", "//api:dev", "--format", "dot")))
    assert len(set(cached.values())) == 1
    (examples / "services" / "api" / "app.py").write_text("print('v2')\n")
    data = json.loads(ok(atmos(examples, "graph", "//api:dev", "--format", "json")))
    status = {n["id"]: n["status"] for n in data["nodes"]}
    assert status == {CHAIN[0]: "cached", CHAIN[1]: "run", CHAIN[2]: "blocked", CHAIN[3]: "blocked"}
    _, _, _, mixed = read_dot(ok(atmos(examples, "graph", "//api:dev", "--format", "dot")))
    assert mixed[CHAIN[0]] == cached[CHAIN[0]]
    assert len({mixed[CHAIN[0]], mixed[CHAIN[1]], mixed[CHAIN[2]]}) == 3
    assert mixed[CHAIN[2]] == mixed[CHAIN[3]]


def test_awkward_component_names_survive_every_format(ws):
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            command:
              'say"hi"': {run: [echo]}
              a.b/c-d_e: {run: [echo], metadata: {depends_on: ['command/say"hi"']}}
              'x{y}<z>|#;': {run: [echo], metadata: {depends_on: [command/a.b/c-d_e]}}
        """)
    ids = ['command/say"hi"', "command/a.b/c-d_e", "command/x{y}<z>|#;"]
    edges = {(ids[0], ids[1]), (ids[1], ids[2])}
    nodes, dot_edges, clusters, _ = read_dot(ok(ws.run("graph", "//app:dev", "--format", "dot")))
    assert nodes == set(ids) and dot_edges == edges and len(clusters) == 3
    data = json.loads(ok(ws.run("graph", "//app:dev", "--format", "json")))
    assert {tuple(e) for e in data["edges"]} == edges
    nodes_m, edges_m = read_mermaid(ok(ws.run("graph", "//app:dev", "--format", "mermaid")))
    assert set(nodes_m.values()) == {i.replace('"', "#quot;") for i in ids}
    assert {(nodes_m[a], nodes_m[b]) for a, b in edges_m} == {
        (a.replace('"', "#quot;"), b.replace('"', "#quot;")) for a, b in edges}


# -- Mermaid -----------------------------------------------------------------------------

def read_mermaid(text: str):
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes = dict(re.findall(r'^\s+(n\d+)\["(.*)"\]', text, re.M))
    edges = re.findall(r"^\s+(n\d+) --> (n\d+)$", text, re.M)
    return nodes, edges


def test_mermaid_has_every_node_edge_and_wave(examples):
    text = ok(atmos(examples, "graph", "//api:dev", "--format", "mermaid"))
    nodes, edges = read_mermaid(text)
    assert sorted(nodes.values()) == sorted(CHAIN)
    assert {(nodes[a], nodes[b]) for a, b in edges} == EDGES
    for k in range(1, 5):
        assert f'subgraph wave_{k}["Wave {k}"]' in text
    assert text.count("\n  end\n") == 4


# -- plan -------------------------------------------------------------------------------

def plan_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    assert re.match(r"WAVE\s+COMPONENT\s+ACTION\s+WHY$", lines[0]), text
    assert lines[-1].startswith("Plan: ")
    return [re.split(r"\s{2,}", line.strip(), maxsplit=3) for line in lines[1:-1]]


def test_plan_prints_wave_component_action_and_why(examples):
    text = ok(atmos(examples, "plan", "//api:dev"))
    assert plan_rows(text) == [[str(k), nid, "run", "never applied"] for k, nid in enumerate(CHAIN, 1)]
    assert text.splitlines()[-1] == "Plan: 4 to run, 0 cached, 0 blocked on upstream results"
    assert not (examples / ".atmos").exists()

    ok(atmos(examples, "rollout", "//api:dev", "-j1"))
    rows = plan_rows(ok(atmos(examples, "plan", "//api:dev")))
    assert [r[2] for r in rows] == ["cached"] * 4 and {r[3] for r in rows} == {"up to date"}

    text = (examples / "api" / "deployment.yaml").read_text()
    (examples / "api" / "deployment.yaml").write_text(text.replace("region: local-1", "region: local-2"))
    rows = plan_rows(ok(atmos(examples, "plan", "//api:dev")))
    assert [r[2] for r in rows] == ["run"] * 4
    assert all("var `region` changed" in r[3] for r in rows)
