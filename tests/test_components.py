"""Component types end to end (SPEC 4), through the real CLI on real files.

terraform and nixpacks are not installed here, so each story puts a small
recording stand-in in their place (via atmos.yaml `toolchain:`): a Python
script that appends its argv, cwd and the environment that matters to a
JSON-lines file, and answers `output -json` like terraform does.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

STANDIN = r'''#!{python}
import json, os, sys, time
args = sys.argv[1:]
record = {{
    "tool": {tool!r},
    "argv": args,
    "cwd": os.getcwd(),
    "env": {{k: os.environ.get(k) for k in (
        "TF_DATA_DIR", "TF_IN_AUTOMATION", "TF_INPUT", "ATMOS_COMPONENT", "ATMOS_TARGET",
        "ATMOS_ACTION_KEY", "ATMOS_WORKSPACE")}},
    "start": time.time(),
}}
data_dir = os.environ.get("TF_DATA_DIR")
if {tool!r} == "terraform" and args[:1] == ["init"]:
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "owner"), "w") as fh:
        fh.write(os.environ["ATMOS_COMPONENT"])
if {tool!r} == "terraform" and args[:1] == ["apply"]:
    var_file = [a for a in args if a.startswith("-var-file=")][0].split("=", 1)[1]
    with open(var_file) as fh:
        record["var_file"] = json.load(fh)
    time.sleep({apply_sleep})
    with open(os.path.join(data_dir, "owner")) as fh:
        record["data_dir_owner"] = fh.read()
record["end"] = time.time()
with open({log!r}, "a") as fh:
    fh.write(json.dumps(record) + "\n")
if args[:2] == ["output", "-json"]:
    print("some warning on stderr", file=sys.stderr)
    print(json.dumps({{"url": {{"value": "x", "type": "string", "sensitive": False}}}}))
'''


def standin(ws, tool: str, apply_sleep: float = 0.0) -> tuple[Path, Path]:
    """A recording stand-in for `tool`; returns (its path, its JSON-lines log)."""
    log = ws.root.parent / f"{tool}-calls.jsonl"
    path = ws.root.parent / "bin" / tool
    path.parent.mkdir(exist_ok=True)
    path.write_text(STANDIN.format(python=sys.executable, tool=tool, log=str(log),
                                   apply_sleep=apply_sleep))
    path.chmod(0o755)
    return path, log


def calls(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def settings(ws, **toolchain: str) -> None:
    ws.write("atmos.yaml", "toolchain:\n" + "".join(f"  {k}: {v}\n" for k, v in toolchain.items())
             if toolchain else "{}\n")


def rollout(ws, *args: str, report: bool = True):
    """Run a rollout; return (process, report dict or None)."""
    path = ws.root.parent / "report.json"
    if path.exists():
        path.unlink()
    proc = ws.run("rollout", *args, *(["--report", str(path)] if report else []))
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(path.read_text()) if path.exists() else None
    return proc, data


def by_id(report: dict) -> dict[str, dict]:
    return {n["id"]: n for n in report["nodes"]}


def applied_outputs(ws, component: str) -> dict:
    db = sqlite3.connect(ws.state / "state.db")
    try:
        row = db.execute("SELECT outputs FROM applied WHERE component=?", (component,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0])


# -- terraform --------------------------------------------------------------------

TF_DEPLOYMENT = """\
deployment:
  vars: {region: eu-west-1}
  targets:
    dev: {vars: {replicas: 1}}
  components:
    terraform:
      ecr/api:
        source: modules/ecr
        vars: {name: "api-${target}", tags: {team: backend}}
    command:
      use:
        run: ["sh", "-c", "printf %s \\"$1\\" > \\"$ATMOS_ROOT/used.txt\\"", "sh",
              "${outputs.terraform/ecr/api.url}"]
"""


ECR_MODULE = """\
variable "name" {}
variable "tags" { type = map(string) }
variable "replicas" { type = number }
resource "terraform_data" "r" {}
"""


def test_terraform_runs_init_workspace_apply_output_in_order(ws):
    tf, log = standin(ws, "terraform")
    settings(ws, terraform=str(tf))
    ws.write("modules/ecr/main.tf", ECR_MODULE)
    ws.write("app/deployment.yaml", TF_DEPLOYMENT)

    proc, report = rollout(ws, "//app:dev", "-j2")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The toolchain's identity is read once (for the keys), before anything runs.
    assert [r["argv"] for r in calls(log)][:1] == [["version", "-json"]]
    recs = [r for r in calls(log) if r["argv"] != ["version", "-json"]]
    workdir = recs[0]["cwd"]
    assert Path(workdir).parts[-3:] == ("terraform", "ecr", "api")
    assert Path(workdir).parent.parent.parent.parent == ws.state / "workspaces"
    assert [r["argv"] for r in recs] == [
        ["init", "-input=false", "-no-color", "-migrate-state", "-force-copy"],
        ["workspace", "select", "-or-create=true", "-no-color", "dev"],
        ["apply", "-auto-approve", "-input=false", "-no-color",
         f"-var-file={Path(workdir).parents[2]}/.atmos/terraform%2Fecr%2Fapi.tfvars.json"],
        ["output", "-json", "-no-color"],
    ]
    assert {r["cwd"] for r in recs} == {workdir}
    # Only the vars the module declares (SPEC 9): the deployment-wide
    # `region` it does not declare is left out.
    assert recs[2]["var_file"] == {"replicas": 1, "name": "api-dev", "tags": {"team": "backend"}}
    env = recs[0]["env"]
    # The data dir persists under the state dir, per deployment, target and component.
    assert env["TF_DATA_DIR"] == str(ws.state / "terraform" / "data" / "app@dev" / "terraform%2Fecr%2Fapi")
    assert env["TF_IN_AUTOMATION"] == "1" and env["ATMOS_TARGET"] == "dev"
    # `output -json` became {name: value}, and flowed into the dependent.
    assert applied_outputs(ws, "terraform/ecr/api") == {"url": "x"}
    assert (ws.root / "used.txt").read_text() == "x"
    assert by_id(report)["command/use"]["status"] == "succeeded"
    # stderr of the captured step is logged, never parsed as outputs.
    tf_log = Path(by_id(report)["terraform/ecr/api"]["log"]).read_text()
    assert "some warning on stderr" in tf_log


def test_parallel_terraform_components_of_one_module_never_share_a_data_dir(ws):
    tf, log = standin(ws, "terraform", apply_sleep=1.0)
    settings(ws, terraform=str(tf))
    ws.write("modules/net/main.tf", 'variable "cidr" {}\n')
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            terraform:
              net/a: {source: modules/net, vars: {cidr: 10.0.0.0/16}}
              net/b: {source: modules/net, vars: {cidr: 10.1.0.0/16}}
        """)

    proc, _ = rollout(ws, "//app:dev", "-j2")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    applies = {r["env"]["ATMOS_COMPONENT"]: r for r in calls(log) if r["argv"][0] == "apply"}
    a, b = applies["terraform/net/a"], applies["terraform/net/b"]
    assert a["start"] < b["end"] and b["start"] < a["end"], "they ran at the same time"
    assert a["env"]["TF_DATA_DIR"] != b["env"]["TF_DATA_DIR"]
    assert a["cwd"] != b["cwd"]
    # Each saw only what its own `init` wrote into its data dir.
    assert a["data_dir_owner"] == "terraform/net/a"
    assert b["data_dir_owner"] == "terraform/net/b"
    assert a["var_file"] == {"cidr": "10.0.0.0/16"} and b["var_file"] == {"cidr": "10.1.0.0/16"}


def test_missing_terraform_binary_fails_the_component_naming_the_setting(ws):
    settings(ws, terraform="terraform-not-installed-anywhere")
    ws.write("modules/ecr/main.tf", ECR_MODULE)
    ws.write("app/deployment.yaml", TF_DEPLOYMENT)

    proc, report = rollout(ws, "//app:dev", "-j2")

    node = by_id(report)["terraform/ecr/api"]
    assert node["status"] == "failed"
    assert "toolchain.terraform" in node["reason"]
    assert "toolchain.terraform" in proc.stderr
    assert by_id(report)["command/use"]["status"] == "skipped"
    assert proc.returncode == 1


# -- nixpack ------------------------------------------------------------------------

def test_nixpack_builds_with_a_key_derived_tag_and_outputs_image_and_tag(ws):
    nix, log = standin(ws, "nixpacks")
    settings(ws, nixpacks=str(nix))
    ws.write("services/api/app.py", "print('hi')\n")
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            nixpack:
              api: {source: services/api}
              web: {source: services/api, vars: {image: {name: shop/web}}}
            command:
              deploy:
                run: ["sh", "-c", "printf %s \\"$1\\" > \\"$ATMOS_ROOT/image.txt\\"", "sh",
                      "${outputs.nixpack/api.image}"]
        """)

    proc, report = rollout(ws, "//app:dev", "-j2")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes = by_id(report)
    tag = nodes["nixpack/api"]["key"][:12]
    web_tag = nodes["nixpack/web"]["key"][:12]
    assert len(tag) == 12 and int(tag, 16) >= 0
    recs = {r["env"]["ATMOS_COMPONENT"]: r for r in calls(log)}
    assert recs["nixpack/api"]["argv"] == ["build", ".", "--name", f"api:{tag}"]
    assert recs["nixpack/web"]["argv"] == ["build", ".", "--name", f"shop/web:{web_tag}"]
    assert Path(recs["nixpack/api"]["cwd"]).parts[-2:] == ("nixpack", "api")
    assert recs["nixpack/api"]["env"]["ATMOS_ACTION_KEY"] == nodes["nixpack/api"]["key"]
    assert applied_outputs(ws, "nixpack/api") == {"image": f"api:{tag}", "tag": tag}
    assert (ws.root / "image.txt").read_text() == f"api:{tag}"


def test_missing_nixpacks_binary_names_the_setting(ws):
    settings(ws, nixpacks="/nonexistent/nixpacks")
    ws.write("services/api/app.py", "print('hi')\n")
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            nixpack:
              api: {source: services/api}
        """)
    proc, report = rollout(ws, "//app:dev")
    assert "toolchain.nixpacks" in by_id(report)["nixpack/api"]["reason"]
    assert proc.returncode == 1


# -- command: argv, shell strings, quoting --------------------------------------------

NASTY = """a b 'c' "d" $(touch pwned) `touch pwned2` ; touch pwned3 $HOME"""

DUMP_ARGS = ("import json, os, sys; "
             "open(os.path.join(os.environ['ATMOS_ROOT'], sys.argv[1]), 'w')"
             ".write(json.dumps(sys.argv[2:]))")


def test_command_argv_and_string_forms_pass_values_intact_and_never_execute_them(ws):
    ws.write("app/deployment.yaml", f"""\
        deployment:
          vars:
            nasty: {json.dumps(NASTY)}
            literal: "$${{HOME}}"
          targets: {{dev: {{}}}}
          components:
            command:
              up:
                run: ["python3", "-c", "import json,os; json.dump({{'v': os.environ['NASTY']}}, open(os.environ['ATMOS_OUTPUTS'], 'w'))"]
                env: {{NASTY: "${{var.nasty}}"}}
              argv:
                run: ["python3", "-c", {json.dumps(DUMP_ARGS)}, "argv.json", "${{var.nasty}}", "x ${{var.nasty}} y", "${{var.literal}}", "${{outputs.command/up.v}}"]
              shell:
                run: 'python3 "$ATMOS_ROOT/dump.py" shell.json ${{var.nasty}} "${{target}}" ${{var.literal}} ${{outputs.command/up.v}}'
              viavar:
                vars: {{fromup: "${{outputs.command/up.v}}"}}
                run: 'python3 "$ATMOS_ROOT/dump.py" viavar.json ${{var.fromup}}'
        """)
    ws.write("dump.py", DUMP_ARGS.replace("; ", "\n") + "\n")

    proc, _ = rollout(ws, "//app:dev", "-j2", "--keep-workspace")

    assert json.loads((ws.root / "argv.json").read_text()) == [
        NASTY, f"x {NASTY} y", "${HOME}", NASTY]
    assert json.loads((ws.root / "shell.json").read_text()) == [NASTY, "dev", "${HOME}", NASTY]
    leaked = [p for p in ws.root.rglob("pwned*")]
    assert leaked == [], f"interpolated text was executed: {leaked}"
    # A var holding an upstream output, interpolated into a shell string, is
    # quoted exactly once too.
    assert json.loads((ws.root / "viavar.json").read_text()) == [NASTY]
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- command: the outputs file -----------------------------------------------------------

def outputs_deployment(ws, writer: str) -> None:
    ws.write("app/deployment.yaml", f"""\
        deployment:
          targets: {{dev: {{}}}}
          components:
            command:
              up:
                run: {json.dumps(writer)}
              down:
                run: ["echo", "${{outputs.command/up.url}}"]
              independent:
                run: ["true"]
        """)


@pytest.mark.parametrize("writer, message", [
    ("printf '{not json' > $ATMOS_OUTPUTS", "not valid JSON"),
    ("printf '[1, 2]' > $ATMOS_OUTPUTS", "must hold a JSON object, got list"),
])
def test_a_bad_outputs_file_fails_the_component_with_a_clear_message(ws, writer, message):
    outputs_deployment(ws, writer)
    proc, report = rollout(ws, "//app:dev", "-j2", "-k")
    nodes = by_id(report)
    assert nodes["command/up"]["status"] == "failed"
    assert message in nodes["command/up"]["reason"] and "ATMOS_OUTPUTS" in nodes["command/up"]["reason"]
    assert message in proc.stderr
    assert nodes["command/down"]["status"] == "skipped"
    assert "command/up" in nodes["command/down"]["reason"]
    assert nodes["command/independent"]["status"] == "succeeded"
    # Nothing recorded: the failed upstream runs again next time.
    assert "last attempt failed" in ws.run("explain", "//app:dev", "command/up").stdout
    assert proc.returncode == 1


def test_no_outputs_file_means_no_outputs_and_a_missing_key_names_what_there_is(ws):
    outputs_deployment(ws, "echo no outputs here")
    proc, report = rollout(ws, "//app:dev", "-j2", "-k")
    nodes = by_id(report)
    assert nodes["command/up"]["status"] == "succeeded"
    assert applied_outputs(ws, "command/up") == {}
    assert nodes["command/down"]["status"] == "failed"
    assert "command/up has no output 'url' (it output: no outputs)" in nodes["command/down"]["reason"]
    assert proc.returncode == 1

    outputs_deployment(ws, """printf '{"host": "h", "port": 5432}' > $ATMOS_OUTPUTS""")
    proc, report = rollout(ws, "//app:dev", "-j2", "-k")
    reason = by_id(report)["command/down"]["reason"]
    assert "command/up has no output 'url' (it output: host, port)" in reason
    assert "url" in proc.stderr and "host, port" in proc.stderr
    assert proc.returncode == 1


def test_outputs_flow_from_a_cached_upstream(ws):
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            command:
              up:
                run: ["sh", "-c", "echo up >> $ATMOS_ROOT/ran; echo '{\\"url\\": \\"https://one\\"}' > $ATMOS_OUTPUTS"]
              down:
                vars: {n: 1}
                run: ["sh", "-c", "echo \\"$1\\" >> $ATMOS_ROOT/received", "sh", "${outputs.command/up.url} n=${var.n}"]
        """)
    assert rollout(ws, "//app:dev")[0].returncode == 0
    text = (ws.root / "app/deployment.yaml").read_text()
    ws.write("app/deployment.yaml", text.replace("vars: {n: 1}", "vars: {n: 2}"))

    proc, report = rollout(ws, "//app:dev")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert by_id(report)["command/up"]["status"] == "cached"
    assert by_id(report)["command/down"]["status"] == "succeeded"
    assert (ws.root / "ran").read_text() == "up\n"
    assert (ws.root / "received").read_text().splitlines() == ["https://one n=1", "https://one n=2"]


# -- masking -------------------------------------------------------------------------

PASSWORD = "hunter2-Sup3r-S3cret"
CREDENTIAL = "opensesame-credential-42"


def test_sensitive_values_never_reach_console_logs_report_or_state(ws):
    ws.write("snap/.keep", "")
    ws.write("app/deployment.yaml", f"""\
        deployment:
          vars: {{db_password: "{PASSWORD}", region: eu}}
          targets: {{dev: {{}}}}
          components:
            command:
              app:
                vars:
                  api_cred: "{CREDENTIAL}"
                  dsn: "pg://u:${{var.db_password}}@db/${{var.api_cred}}"
                env: {{DSN: "${{var.dsn}}"}}
                sensitive: [api_cred]
                run: ["sh", "-c", "echo pw=$1 cred=$2; echo dsn=$DSN >&2; cat $ATMOS_VARS_FILE", "sh",
                      "${{var.db_password}}", "${{var.api_cred}}"]
              shell:
                sensitive: [api_cred]
                vars: {{api_cred: "{CREDENTIAL}"}}
                run: 'echo shell ${{var.db_password}} ${{var.api_cred}}; exit 3'
              later:
                # Blocked behind `app` in the plan after the secret changes.
                metadata: {{depends_on: [command/app]}}
                run: ["sh", "-c", "echo later $1", "sh", "${{var.db_password}}"]
              snapshot:
                # Runs once `app` is recorded: copies the live database and its
                # WAL, whose bytes hold what was just committed.
                metadata: {{depends_on: [command/app]}}
                run: ["sh", "-c", "cp $ATMOS_ROOT/.atmos/state.db* $ATMOS_ROOT/snap/"]
        """)

    proc, report = rollout(ws, "//app:dev", "-j2", "-k")
    # Change the secret: plan and explain must say so without showing it.
    text = (ws.root / "app/deployment.yaml").read_text()
    ws.write("app/deployment.yaml", text.replace(PASSWORD, PASSWORD[::-1]))
    plan = ws.run("plan", "//app:dev")
    explain = ws.run("explain", "//app:dev", "command/app")
    status = ws.run("status", "//app:dev")

    assert by_id(report)["command/app"]["status"] == "succeeded"
    assert by_id(report)["command/shell"]["status"] == "failed"
    assert "pw=*** cred=***" in proc.stdout
    assert "var `db_password` changed (sensitive, values hidden)" in explain.stdout
    later = next(line for line in plan.stdout.splitlines() if " command/later " in line)
    assert "run changed" not in later and "var `db_password` changed" in later
    assert (ws.root / "snap" / "state.db-wal").exists()
    haystacks = {
        "console": (proc.stdout + proc.stderr).encode(),
        "plan/explain/status": (plan.stdout + plan.stderr + explain.stdout + status.stdout).encode(),
        "report": (ws.root.parent / "report.json").read_bytes(),
    }
    for path in list(ws.state.rglob("*.log")) + list((ws.root / "snap").glob("state.db*")) \
            + list(ws.state.glob("state.db*")):
        haystacks[str(path.relative_to(ws.root))] = path.read_bytes()
    assert any(name.endswith(".log") for name in haystacks)
    for secret in (PASSWORD, CREDENTIAL, PASSWORD[::-1]):
        for name, data in haystacks.items():
            assert secret.encode() not in data, f"{secret!r} appears in {name}"
