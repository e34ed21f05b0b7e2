"""Incremental rollouts (SPEC 5), told as user stories on real files, through
the real CLI with real processes.

Every component appends its id to `ran.log` at the root (outside every
source tree), so a story reads: change this, roll out, exactly these ran.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import RECORD, ran, rollout_with_report





def rollout(ws, *args: str):
    """Roll out; return (process, {id: report node})."""
    proc, report = rollout_with_report(ws, *args)
    return proc, ({n["id"]: n for n in report["nodes"]} if report else {})


def edit(ws, rel: str, old: str, new: str) -> None:
    path = ws.root / rel
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new))


# A diamond plus a loner:   a -> b -> d,  a -> c -> d,   e
DIAMOND = f"""\
deployment:
  targets:
    dev: {{vars: {{replicas: 1}}}}
    prod: {{vars: {{replicas: 4}}}}
  components:
    command:
      a: {{source: src/a, run: ["sh", "-c", '{RECORD}']}}
      b: {{source: src/b, run: ["sh", "-c", '{RECORD}'], metadata: {{depends_on: [command/a]}}}}
      c: {{source: src/c, run: ["sh", "-c", '{RECORD}'], metadata: {{depends_on: [command/a]}}}}
      d: {{run: ["sh", "-c", '{RECORD}'], metadata: {{depends_on: [command/b, command/c]}}}}
      e: {{source: src/e, run: ["sh", "-c", '{RECORD}']}}
"""


@pytest.fixture
def diamond(ws):
    for name in "abce":
        ws.write(f"src/{name}/main.txt", f"component {name}\n")
    ws.write("app/deployment.yaml", DIAMOND)
    proc, _ = rollout(ws, "//app:dev", "-j4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ran(ws) == ["command/a", "command/b", "command/c", "command/d", "command/e"]
    return ws


def test_a_rerun_with_nothing_changed_runs_nothing_and_reports_each_component_cached(diamond):
    ws = diamond
    proc, nodes = rollout(ws, "//app:dev", "-j4")
    assert proc.returncode == 0
    assert ran(ws) == []
    assert {n["status"] for n in nodes.values()} == {"cached"}
    for cid in nodes:
        assert f"[{cid}] cached" in proc.stdout
    assert "Summary: 0 ran, 5 cached, 0 failed, 0 skipped" in proc.stdout


def test_editing_one_source_file_reruns_that_component_and_the_dependents_whose_keys_change(diamond):
    ws = diamond
    ws.write("src/b/main.txt", "component b, edited\n")
    ws.write("unrelated.txt", "no component reads this\n")
    proc, nodes = rollout(ws, "//app:dev", "-j4")
    assert proc.returncode == 0
    # b has no outputs, so its result digest is its key: d's key changes too.
    assert ran(ws) == ["command/b", "command/d"]
    assert nodes["command/b"]["reason"] == "file `src/b/main.txt` changed"
    assert nodes["command/d"]["reason"] == "upstream `command/b` result changed"
    assert {cid: n["status"] for cid, n in nodes.items() if n["status"] == "cached"} == {
        "command/a": "cached", "command/c": "cached", "command/e": "cached"}


def test_adding_and_removing_a_source_file_and_flipping_its_exec_bit_rerun_it(diamond):
    ws = diamond
    ws.write("src/e/extra.sh", "#!/bin/sh\n")
    assert rollout(ws, "//app:dev")[1]["command/e"]["reason"] == "file `src/e/extra.sh` added"
    (ws.root / "src/e/extra.sh").chmod(0o755)
    assert rollout(ws, "//app:dev")[1]["command/e"]["reason"] == \
        "file `src/e/extra.sh` executable bit changed"
    (ws.root / "src/e/extra.sh").unlink()
    assert rollout(ws, "//app:dev")[1]["command/e"]["reason"] == "file `src/e/extra.sh` removed"
    assert ran(ws) == ["command/e"] * 3


def test_a_source_directory_replaced_by_a_file_of_its_name_and_back_rolls_out(ws):
    ws.write("src/app/conf/main.txt", "in a directory\n")
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            command:
              show: {source: src/app, run: ["sh", "-c", 'cat conf/main.txt 2>/dev/null || cat conf']}
        """)
    outputs = []
    for step in ("dir", "file", "dir"):
        conf = ws.root / "src/app/conf"
        if step == "file":
            shutil.rmtree(conf)
            conf.write_text("now a file\n")
        elif conf.is_file():
            conf.unlink()
            ws.write("src/app/conf/main.txt", "a directory again\n")
        proc, nodes = rollout(ws, "//app:dev")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs.append(proc.stdout)
    assert "in a directory" in outputs[0]
    assert "now a file" in outputs[1]
    assert "a directory again" in outputs[2]


def test_a_same_size_edit_with_its_mtime_restored_is_detected(diamond):
    ws = diamond
    path = ws.root / "src/a/main.txt"
    before = path.stat()
    path.write_text("component A\n")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns

    proc, nodes = rollout(ws, "//app:dev", "-j4")

    assert nodes["command/a"]["reason"] == "file `src/a/main.txt` changed"
    assert ran(ws) == ["command/a", "command/b", "command/c", "command/d"]


def test_apply_mode_reruns_for_every_change_of_value_even_back_to_an_old_one(ws):
    ws.write("app/deployment.yaml", f"""\
        deployment:
          targets: {{dev: {{vars: {{flavour: A}}}}}}
          components:
            command:
              app: {{run: ["sh", "-c", '{RECORD}; echo "$1" >> "$ATMOS_ROOT/applied"', "sh", "${{var.flavour}}"]}}
        """)
    for before, after in ((None, None), ("A", "B"), ("B", "A")):
        if before:
            edit(ws, "app/deployment.yaml", f"flavour: {before}", f"flavour: {after}")
        proc, nodes = rollout(ws, "//app:dev")
        assert proc.returncode == 0
        assert nodes["command/app"]["status"] == "succeeded"
    assert (ws.root / "applied").read_text().split() == ["A", "B", "A"]
    assert ran(ws) == ["command/app"] * 3
    proc, nodes = rollout(ws, "//app:dev")
    assert nodes["command/app"]["status"] == "cached" and ran(ws) == []


NIXPACKS = """#!/bin/sh
echo "$ATMOS_TARGET $*" >> "$ATMOS_ROOT/builds.log"
"""


def test_build_mode_prod_after_dev_with_the_same_inputs_builds_nothing_and_reuses_the_image(ws):
    ws.write("bin/nixpacks", NIXPACKS, mode=0o755)
    ws.write("atmos.yaml", f"toolchain: {{nixpacks: {ws.root / 'bin/nixpacks'}}}\n")
    ws.write("services/api/app.py", "print('api')\n")
    ws.write("app/deployment.yaml", f"""\
        deployment:
          vars: {{region: us-east-1}}
          targets:
            # Target-wide vars, as in the SPEC's example: they reach every
            # component, but nixpacks reads only `image` from its vars, so
            # they must not split the build cache between targets.
            dev: {{vars: {{replicas: 1}}}}
            prod: {{vars: {{replicas: 4}}}}
          components:
            nixpack:
              api: {{source: services/api, vars: {{image: {{name: api}}}}}}
            command:
              deploy:
                run: ["sh", "-c", '{RECORD}; echo "$ATMOS_TARGET $1" >> "$ATMOS_ROOT/deployed"', "sh",
                      "${{outputs.nixpack/api.image}}"]
        """)

    dev, dev_nodes = rollout(ws, "//app:dev")
    prod, prod_nodes = rollout(ws, "//app:prod")

    assert dev.returncode == 0 and prod.returncode == 0, prod.stdout + prod.stderr
    builds = (ws.root / "builds.log").read_text().splitlines()
    tag = dev_nodes["nixpack/api"]["key"][:12]
    assert builds == [f"dev build . --name api:{tag}"]
    assert prod_nodes["nixpack/api"]["status"] == "cached"
    assert prod_nodes["nixpack/api"]["key"] == dev_nodes["nixpack/api"]["key"]
    assert prod_nodes["command/deploy"]["status"] == "succeeded"
    assert (ws.root / "deployed").read_text().splitlines() == [f"dev api:{tag}", f"prod api:{tag}"]
    # prod now counts the image as applied there.
    status = ws.run("status", "//app:prod").stdout
    assert [line for line in status.splitlines() if line.startswith("nixpack/api")][0].endswith("up to date")
    # A change of the build input builds again (once), at whichever target comes first.
    ws.write("services/api/app.py", "print('api v2')\n")
    assert rollout(ws, "//app:prod")[1]["nixpack/api"]["status"] == "succeeded"
    assert rollout(ws, "//app:dev")[1]["nixpack/api"]["status"] == "cached"
    assert len((ws.root / "builds.log").read_text().splitlines()) == 2


# -- early cutoff ------------------------------------------------------------------

CUTOFF = f"""\
deployment:
  targets: {{dev: {{}}}}
  components:
    command:
      up:
        source: src/up
        run: ["sh", "-c", '{RECORD}; cp result.json "$ATMOS_OUTPUTS"']
      down:
        run: ["sh", "-c", '{RECORD}; echo "$1" >> "$ATMOS_ROOT/seen"', "sh", "${{outputs.command/up.version}}"]
      after:
        run: ["sh", "-c", '{RECORD}']
        metadata: {{depends_on: [command/down]}}
"""


def test_early_cutoff_an_upstream_that_reruns_to_the_same_outputs_spares_its_dependents(ws):
    ws.write("src/up/result.json", '{"version": "1"}\n')
    ws.write("src/up/notes.txt", "first\n")
    ws.write("app/deployment.yaml", CUTOFF)
    assert rollout(ws, "//app:dev")[0].returncode == 0
    assert ran(ws) == ["command/after", "command/down", "command/up"]

    ws.write("src/up/notes.txt", "second: up re-runs, its outputs do not change\n")
    proc, nodes = rollout(ws, "//app:dev")
    assert ran(ws) == ["command/up"], (nodes, proc.stdout, proc.stderr)
    assert nodes["command/down"]["status"] == "cached"
    assert nodes["command/after"]["status"] == "cached"

    ws.write("src/up/result.json", '{"version": "2"}\n')
    proc, nodes = rollout(ws, "//app:dev")
    assert ran(ws) == ["command/after", "command/down", "command/up"]
    assert nodes["command/down"]["reason"] == "upstream `command/up` result changed"
    assert (ws.root / "seen").read_text().split() == ["1", "2"]
    assert proc.returncode == 0


# -- forcing, cache: false, failures -------------------------------------------------

def test_cache_false_always_runs_and_force_runs_everything(ws):
    ws.write("app/deployment.yaml", f"""\
        deployment:
          targets: {{dev: {{}}}}
          components:
            command:
              steady: {{run: ["sh", "-c", '{RECORD}']}}
              smoke: {{run: ["sh", "-c", '{RECORD}'], cache: false, metadata: {{depends_on: [command/steady]}}}}
        """)
    rollout(ws, "//app:dev")
    assert ran(ws) == ["command/smoke", "command/steady"]
    proc, nodes = rollout(ws, "//app:dev")
    assert ran(ws) == ["command/smoke"]
    assert nodes["command/smoke"]["reason"] == "cache: false (always runs)"
    proc, nodes = rollout(ws, "//app:dev", "--force")
    assert ran(ws) == ["command/smoke", "command/steady"]
    assert {n["reason"] for n in nodes.values()} == {"forced (--force)"}
    assert proc.returncode == 0


def test_a_failed_component_records_nothing_and_runs_next_time(ws):
    ws.write("app/deployment.yaml", f"""\
        deployment:
          targets: {{dev: {{}}}}
          components:
            command:
              a: {{run: ["sh", "-c", '{RECORD}']}}
              b:
                run: ["sh", "-c", '{RECORD}; test ! -e "$ATMOS_ROOT/broken"']
                metadata: {{depends_on: [command/a]}}
              c: {{run: ["sh", "-c", '{RECORD}'], metadata: {{depends_on: [command/b]}}}}
        """)
    ws.write("broken", "")
    failed, nodes = rollout(ws, "//app:dev")
    assert ran(ws) == ["command/a", "command/b"]
    assert [nodes[c]["status"] for c in ("command/a", "command/b", "command/c")] == \
        ["succeeded", "failed", "skipped"]
    explain = ws.run("explain", "//app:dev", "command/b")
    assert "last attempt failed" in explain.stdout
    assert "last attempt failed" in ws.run("status", "//app:dev").stdout

    (ws.root / "broken").unlink()
    proc, nodes = rollout(ws, "//app:dev")
    assert ran(ws) == ["command/b", "command/c"]
    assert nodes["command/a"]["status"] == "cached"
    assert nodes["command/b"]["reason"].startswith("last attempt failed")
    assert proc.returncode == 0
    assert failed.returncode == 1


PEEK = """\
import json, os, sqlite3, sys
db = sqlite3.connect(os.path.join(os.environ["ATMOS_ROOT"], ".atmos", "state.db"))
rows = [r[0] for r in db.execute("SELECT component FROM applied ORDER BY component")]
with open(os.path.join(os.environ["ATMOS_ROOT"], sys.argv[1]), "w") as fh:
    json.dump(rows, fh)
"""


def test_every_success_is_in_the_store_the_moment_it_finishes(ws):
    ws.write("peek.py", PEEK)
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            command:
              first: {run: ["true"]}
              second:
                run: ["sh", "-c", 'python3 "$ATMOS_ROOT/peek.py" seen-by-second.json']
                metadata: {depends_on: [command/first]}
              third:
                run: ["sh", "-c", 'python3 "$ATMOS_ROOT/peek.py" seen-by-third.json']
                metadata: {depends_on: [command/second]}
        """)
    proc, _ = rollout(ws, "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((ws.root / "seen-by-second.json").read_text()) == ["command/first"]
    assert json.loads((ws.root / "seen-by-third.json").read_text()) == ["command/first", "command/second"]


# -- why: status, explain, plan, dry-run JSON and --report agree ------------------------

REASONS = f"""\
deployment:
  targets:
    dev:
      components: {{command: {{e: {{vars: {{replicas: 1}}}}}}}}
  components:
    command:
      a: {{source: src/a, run: ["sh", "-c", '{RECORD}']}}
      b: {{source: src/b, run: ["sh", "-c", '{RECORD}']}}
      d: {{run: ["sh", "-c", '{RECORD}'], metadata: {{depends_on: [command/b]}}}}
      e: {{run: ["sh", "-c", '{RECORD}']}}
      s: {{run: ["sh", "-c", '{RECORD}'], cache: false}}
"""


def views_of(ws, label: str, cids, *flags: str) -> dict[str, dict[str, str]]:
    """What each view says about each of `cids` (the rollout last: it changes state)."""
    plan = ws.run("plan", label, *flags)
    assert plan.returncode == 0, plan.stderr
    dry = ws.run("rollout", label, "--dry-run", "--graph", "json", *flags)
    assert dry.returncode == 0, dry.stderr
    dry_nodes = {n["id"]: n["reason"] for n in json.loads(dry.stdout)["nodes"]}
    status = ws.run("status", label).stdout.splitlines()
    views: dict[str, dict[str, str]] = {}
    for cid in cids:
        views[cid] = {
            "plan": next(l for l in plan.stdout.splitlines() if f" {cid} " in l),
            "dry-run JSON": dry_nodes[cid],
        }
        if not flags:  # status and explain have no --force
            views[cid]["status"] = next(l for l in status if l.startswith(cid + " "))
            views[cid]["explain"] = ws.run("explain", label, cid).stdout
    report = rollout(ws, label, *flags)[1]
    for cid in cids:
        views[cid]["--report"] = report[cid]["reason"]
    return views


def test_status_explain_plan_dry_run_and_report_name_the_same_reason(ws):
    ws.write("src/a/main.txt", "component a\n")
    ws.write("src/b/main.txt", "component b\n")
    ws.write("app/deployment.yaml", REASONS)
    assert rollout(ws, "//app:dev")[0].returncode == 0
    # One change per component:
    ws.write("src/a/main.txt", "component a, edited\n")
    ws.write("src/b/main.txt", "component b, edited\n")
    assert rollout(ws, "//app:dev", "--only", "command/b")[0].returncode == 0  # b alone
    edit(ws, "app/deployment.yaml", "vars: {replicas: 1}", "vars: {replicas: 4}")
    edit(ws, "app/deployment.yaml", "      s:", "      f: {run: [\"true\"]}\n      s:")
    expected = {
        "command/a": "file `src/a/main.txt` changed",
        "command/d": "upstream `command/b` result changed",
        "command/e": "var `replicas` changed 1 → 4",
        "command/s": "cache: false (always runs)",
        "command/f": "never applied",
    }

    views = views_of(ws, "//app:dev", expected)

    for cid, reason in expected.items():
        for view, text in views[cid].items():
            assert reason in text, f"{view} of {cid} does not say {reason!r}: {text!r}"

    forced = views_of(ws, "//app:dev", ["command/a", "command/d"], "--force")
    for cid in forced:
        for view, text in forced[cid].items():
            assert "forced (--force)" in text, f"{view} of {cid}: {text!r}"


def test_a_changed_upstream_blocks_its_dependents_in_the_plan(diamond):
    ws = diamond
    ws.write("src/a/main.txt", "component a, edited\n")
    plan = ws.run("plan", "//app:dev").stdout
    rows = {line.split()[1]: line for line in plan.splitlines()[1:] if line[:1].isdigit()}
    assert " run " in rows["command/a"] and "file `src/a/main.txt` changed" in rows["command/a"]
    assert " blocked " in rows["command/b"] and "waits for command/a" in rows["command/b"]
    assert " cached " in rows["command/e"]


# -- clean ------------------------------------------------------------------------------

def test_clean_workspaces_cache_and_all(diamond):
    ws = diamond
    proc, _ = rollout(ws, "//app:dev", "--keep-workspace")
    assert list((ws.state / "workspaces").iterdir())
    assert ws.run("clean").returncode == 2

    assert ws.run("clean", "--workspaces").returncode == 0
    assert not (ws.state / "workspaces").exists()
    assert (ws.state / "state.db").exists()
    assert rollout(ws, "//app:dev")[0].returncode == 0 and ran(ws) == []  # state kept

    assert ws.run("clean", "--cache").returncode == 0
    for gone in ("state.db", "vendor-cache", "logs"):
        assert not (ws.state / gone).exists(), gone
    assert rollout(ws, "//app:dev")[0].returncode == 0
    assert len(ran(ws)) == 5  # nothing remembered

    assert ws.run("clean", "--all").returncode == 0
    # SPEC 14: clean removes only what atmosbuild made, and holds the locks
    # while it does: the lock files (which a waiting rollout may hold open)
    # and the marker that lets clean run again are all that is left.
    assert sorted(p.name for p in ws.state.iterdir()) == ["ATMOSBUILD", "locks"]
    assert (ws.root / "app/deployment.yaml").exists() and (ws.root / "src/a/main.txt").exists()
    assert "never applied" in ws.run("status", "//app:dev").stdout


def test_the_compiled_structure_cache_follows_every_edit_and_survives_damage(diamond):
    """A no-op rollout reads the compiled deployment from .atmos/cache; an
    edit of the deployment file must never be answered from a stale entry,
    and a damaged entry is rebuilt, not trusted."""
    ws = diamond
    cache = ws.state / "cache"
    entries = list(cache.glob("structure-*.marshal"))
    assert len(entries) == 1  # written by the first rollout

    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == []

    edit(ws, "app/deployment.yaml", "a: {source: src/a, run:", "a: {source: src/a, vars: {x: 2}, run:")
    assert ws.run("rollout", "//app:dev").returncode == 0
    # a's key changed; with no outputs its key is its result, so b, c, d follow.
    assert ran(ws) == ["command/a", "command/b", "command/c", "command/d"]
    for entry in cache.glob("structure-*.marshal"):
        entry.write_bytes(b"not marshal data")
    proc = ws.run("plan", "//app:dev")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "cached" in proc.stdout and " run " not in proc.stdout


def test_status_history_shows_the_last_attempts_of_each_component(ws):
    """`status --history [--last N]`: every attempt is kept (the history table);
    status shows the newest N per component, failures included."""
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            command:
              a: {run: ["sh", "-c", "test -f $ATMOS_ROOT/fail && exit 3; true"]}
              b: {run: ["true"], metadata: {depends_on: [command/a]}}
        """)
    assert ws.run("rollout", "//app:dev", "-j1").returncode == 0
    ws.write("fail", "")
    assert ws.run("rollout", "//app:dev", "-j1", "--force").returncode == 1
    (ws.root / "fail").unlink()
    assert ws.run("rollout", "//app:dev", "-j1", "--force").returncode == 0
    proc = ws.run("status", "--history", "//app:dev")  # (the flag before the label too)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split()[:3] for line in proc.stdout.splitlines()[1:]]
    assert [(cid, status) for cid, _, status in rows] == [
        ("command/a", "succeeded"), ("command/a", "failed"), ("command/a", "succeeded"),
        ("command/b", "succeeded"), ("command/b", "succeeded")]  # (b was skipped when a failed)
    assert len({run for cid, run, _ in rows if cid == "command/a"}) == 3  # one row per run
    proc = ws.run("status", "//app:dev", "--history", "--last", "1", "--format", "json")
    data = json.loads(proc.stdout)
    assert [e["status"] for e in data["history"]["command/a"]] == ["succeeded"]
    assert set(data["history"]["command/a"][0]) == {"run_id", "key", "status", "finished", "duration"}
    assert ws.run("status", "//app:dev", "--history", "--last", "0").returncode == 2
    assert ws.run("status", "//app:dev", "--last", "2").returncode == 2
