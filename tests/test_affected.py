"""`affected --base REF [--head REF]` (SPEC 12) against a real repository
history made here with the real git: what changed between two commits by
action key, what depends on it, what was added or removed — computed without
touching the user's working tree or index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RECORD, Workspace, ran

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_NOSYSTEM": "1"}


def git(root: Path, *args: str) -> str:
    env = dict(os.environ, **GIT_ENV, HOME=str(root.parent))
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True,
                          text=True).stdout


def init_repo(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "-c", "init.defaultBranch=main", "init", "-q")
    (root / ".gitignore").write_text(".atmos/\nran.log\n")


def commit(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", message)


def write_deployment(ws: Workspace, comps: dict, pkg: str = "app") -> None:
    ws.write(f"{pkg}/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": comps}}}, indent=1))


def affected(ws: Workspace, *args: str) -> dict:
    proc = ws.run("affected", *args, "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def reasons(doc: dict) -> dict:
    return {(a["label"], a["id"]): a["reason"] for a in doc["affected"]}


@pytest.fixture
def history(tmp_path):
    """A repository whose workspace root is a subdirectory (`infra/`), with
    two commits: base, then head changing a var, a source file, a shared
    directory, adding one component and removing another."""
    repo = tmp_path / "repo"
    init_repo(repo)
    ws = Workspace(repo / "infra")
    comps = {
        "vars": {"run": RECORD, "vars": {"size": 1}},
        "edited": {"source": "src/edited", "run": RECORD},
        "downstream": {"run": RECORD, "metadata": {"depends_on": ["command/edited"]}},
        "shared-a": {"source": "src/a", "inputs": ["shared/**"], "run": RECORD},
        "shared-b": {"source": "src/b", "inputs": ["shared/**"], "run": RECORD},
        "steady": {"source": "src/steady", "run": RECORD},
        "steady-child": {"run": RECORD, "metadata": {"depends_on": ["command/steady"]}},
        "going": {"run": RECORD},
    }
    write_deployment(ws, comps)
    write_deployment(ws, {"other": {"source": "src/steady", "run": RECORD}}, pkg="other")
    for name in ("edited", "a", "b", "steady"):
        ws.write(f"src/{name}/main.sh", f"echo {name}\n")
    ws.write("shared/lib.sh", "shared v1\n")
    ws.write("unrelated.txt", "nobody reads me\n")
    commit(repo, "base")
    comps["vars"]["vars"]["size"] = 2
    comps["new"] = {"run": RECORD}
    del comps["going"]
    write_deployment(ws, comps)
    ws.write("src/edited/main.sh", "echo edited v2\n")
    ws.write("shared/lib.sh", "shared v2\n")
    ws.write("unrelated.txt", "still nobody\n")
    commit(repo, "head")
    return ws


def test_affected_between_two_commits(history):
    ws = history
    doc = affected(ws, "--base", "HEAD~1", "--head", "HEAD")
    assert reasons(doc) == {
        ("//app:dev", "command/vars"): "changed",
        ("//app:dev", "command/edited"): "changed",
        ("//app:dev", "command/downstream"): "dependency changed",
        ("//app:dev", "command/shared-a"): "changed",
        ("//app:dev", "command/shared-b"): "changed",
        ("//app:dev", "command/new"): "added",
        ("//app:dev", "command/going"): "removed",
    }  # steady, steady-child and //other:dev are unchanged, with nothing changed upstream
    by_id = {a["id"]: a for a in doc["affected"]}
    assert by_id["command/vars"]["changes"] == ["var `size` changed 1 → 2"]
    assert by_id["command/edited"]["changes"] == ["file `src/edited/main.sh` changed"]
    assert by_id["command/shared-a"]["changes"] == ["file `shared/lib.sh` changed"]
    assert by_id["command/downstream"]["changes"] == ["upstream `command/edited` changed"]
    assert by_id["command/new"]["deployment"] == "app" and by_id["command/new"]["target"] == "dev"
    assert doc["base"] == "HEAD~1" and len(doc["base_commit"]) == 40 and doc["head"] == "HEAD"

    text = ws.run("affected", "--base", "HEAD~1", "--head", "HEAD")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "//app:dev command/vars  changed: var `size` changed 1 → 2" in lines
    assert "//app:dev command/going  removed" in lines
    assert lines[-1].startswith("7 components affected between HEAD~1")

    # Patterns narrow the selection.
    assert reasons(affected(ws, "--base", "HEAD~1", "--head", "HEAD", "//other:dev")) == {}


def test_uncommitted_edits_count_when_head_is_the_working_tree_and_nothing_is_touched(history):
    ws = history
    repo = ws.root.parent
    ws.write("src/steady/main.sh", "echo steady, edited but not committed\n")
    git(repo, "add", "infra/src/steady/main.sh")  # staged, even: the index must stay as it is
    ws.write("src/steady/new.sh", "untracked\n")
    status = git(repo, "status", "--porcelain")
    index = (repo / ".git" / "index").read_bytes()
    head = git(repo, "rev-parse", "HEAD")

    doc = affected(ws, "--base", "HEAD")
    assert reasons(doc) == {("//app:dev", "command/steady"): "changed",
                            ("//app:dev", "command/steady-child"): "dependency changed",
                            ("//other:dev", "command/other"): "changed"}
    assert doc["head"] is None and doc["head_commit"] is None
    assert reasons(affected(ws, "--base", "HEAD", "--head", "HEAD")) == {}
    affected(ws, "--base", "HEAD~1", "--head", "HEAD")

    assert git(repo, "status", "--porcelain") == status
    assert (repo / ".git" / "index").read_bytes() == index
    assert git(repo, "rev-parse", "HEAD") == head
    assert sorted(p.name for p in Path(tempfile.gettempdir()).glob("atmos-affected-*")) == []


def test_bad_revisions_and_a_root_outside_git_are_usage_errors(history, tmp_path):
    ws = history
    for args in (["--base", "no-such-ref"], ["--base", "HEAD", "--head", "nope"], ["--base", "-x"]):
        proc = ws.run("affected", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    plain = Workspace(tmp_path / "not-a-repo")
    proc = plain.run("affected", "--base", "HEAD")
    assert proc.returncode == 2 and "not in a git repository" in proc.stderr


def test_a_broken_deployment_at_base_is_reported_as_being_there(history):
    ws = history
    repo = ws.root.parent
    ws.write("app/deployment.yaml", "deployment: {targets: {dev: {}}, components: {command: {x: {bad: 1}}}}\n")
    commit(repo, "broken")
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}}}))
    commit(repo, "fixed")
    proc = ws.run("affected", "--base", "HEAD~1", "--head", "HEAD")
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: app/deployment.yaml:1:") and "at --base HEAD~1" in first, first


# -- the property: affected == what a rollout at head runs after one at base -------

NAMES = [f"c{i}" for i in range(6)]


@st.composite
def histories(draw):
    """A deployment of 2-6 command components (random dependencies on
    earlier ones, each with a source file and a var), and a random set of
    edits to it."""
    count = draw(st.integers(2, 6))
    base = {}
    for i in range(count):
        deps = draw(st.lists(st.sampled_from(NAMES[:i]), unique=True, max_size=2)) if i else []
        base[NAMES[i]] = {"var": draw(st.integers(0, 2)), "file": draw(st.integers(0, 2)), "deps": deps}
    edits = draw(st.lists(st.tuples(st.sampled_from(["var", "file", "deps", "add", "remove"]),
                                    st.sampled_from(NAMES), st.integers(0, 2)), max_size=4))
    head = {name: dict(c, deps=list(c["deps"])) for name, c in base.items()}
    for kind, name, value in edits:
        if kind == "add" and name not in head:
            head[name] = {"var": value, "file": value, "deps": [n for n in head if n < name][:1]}
        elif kind == "remove" and name in head and len(head) > 1:
            del head[name]
            for c in head.values():
                c["deps"] = [d for d in c["deps"] if d != name]
        elif name in head and kind in ("var", "file"):
            head[name][kind] = value
        elif name in head and kind == "deps":
            earlier = [n for n in head if n < name]
            head[name]["deps"] = earlier[value % (len(earlier) + 1):][:1] if earlier else []
    return base, head


def _write(ws: Workspace, comps: dict) -> None:
    shutil.rmtree(ws.root / "src", ignore_errors=True)
    for name, c in comps.items():
        ws.write(f"src/{name}/main.sh", f"echo {c['file']}\n")
    write_deployment(ws, {name: {"source": f"src/{name}", "run": RECORD, "vars": {"v": c["var"]},
                                 "metadata": {"depends_on": [f"command/{d}" for d in c["deps"]]}}
                          for name, c in comps.items()})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories())
def test_affected_is_what_a_rollout_at_head_runs_after_one_at_base(history):
    base, head = history
    tmp = Path(tempfile.mkdtemp())
    try:
        init_repo(tmp / "repo")
        ws = Workspace(tmp / "repo")
        _write(ws, base)
        commit(ws.root, "base")
        proc = ws.run("rollout", "//app:dev")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ran(ws)
        _write(ws, head)
        commit(ws.root, "head")
        doc = affected(ws, "--base", "HEAD~1", "--head", "HEAD")
        proc = ws.run("rollout", "//app:dev")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        would_run = sorted(a["id"] for a in doc["affected"] if a["reason"] != "removed")
        assert ran(ws) == would_run
        removed = sorted(a["id"] for a in doc["affected"] if a["reason"] == "removed")
        assert removed == sorted(f"command/{n}" for n in set(base) - set(head))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
