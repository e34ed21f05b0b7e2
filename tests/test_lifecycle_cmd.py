"""The lifecycle verbs (SPEC 10) with command and nixpack components: real
CLI, real processes; `preview:` and `destroy:` argv in YAML and the DSL."""

from __future__ import annotations

import json
import re

from atmosbuild.config.dsl import parse_dsl
from atmosbuild.config.fmt import format_dsl, format_yaml
from atmosbuild.config.yaml import parse_yaml

YAML = """\
deployment:
  targets: {dev: {}}
  components:
    command:
      base:
        run: ["sh", "-c", "echo base >> ../../../../../out/applied; echo '{\\"url\\": \\"u1\\"}' > $ATMOS_OUTPUTS"]
        preview: ["sh", "-c", "echo would deploy base; echo base >> ../../../../../out/previewed"]
        destroy: ["sh", "-c", "echo base >> ../../../../../out/destroyed"]
      app:
        run: ["sh", "-c", "echo app ${outputs.command/base.url} >> ../../../../../out/applied"]
        destroy: "echo app >> ../../../../../out/destroyed"
      solo:
        run: ["true"]
"""


def write(ws, text=YAML):
    ws.write("atmos.yaml", "{}\n")
    ws.write("app/deployment.yaml", text)
    (ws.root / "out").mkdir(exist_ok=True)


def lines(ws, name):
    p = ws.root / "out" / name
    return p.read_text().split() if p.exists() else []


def test_preview_runs_only_preview_argv_and_lists_the_rest(ws):
    write(ws)
    proc = ws.run("preview", "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines(ws, "previewed") == ["base"] and lines(ws, "applied") == []
    table = {l.split()[0]: l for l in proc.stdout.splitlines() if l.startswith("command/")}
    assert "previewed" in table["command/base"]
    assert "needs upstream: command/base" in table["command/app"]
    assert "would run" in table["command/solo"]
    assert re.search(r"^Preview \S+: 2 would change, 0 no change, 1 need upstream$", proc.stdout, re.M)
    assert "would deploy base" in proc.stdout


def test_destroy_runs_destroy_argv_dependents_first_and_status_says_destroyed(ws):
    write(ws)
    assert ws.run("rollout", "//app:dev").returncode == 0
    page, trace = ws.root.parent / "d.html", ws.root.parent / "d.trace.json"
    proc = ws.run("destroy", "//app:dev", "--yes", "-j4", "--report", str(page), "--profile", str(trace))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines(ws, "destroyed") == ["app", "base"]
    assert "3 destroyed" in page.read_text()
    assert {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]} >= {"command/app", "command/base"}
    status = ws.run("status", "//app:dev")
    assert status.stdout.count("destroyed (by run") == 3, status.stdout  # solo: nothing to run, recorded
    again = ws.run("destroy", "//app:dev", "--yes")
    assert again.returncode == 0 and "Nothing to destroy" in again.stdout
    assert lines(ws, "destroyed") == ["app", "base"]
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert lines(ws, "applied") == ["base", "app", "u1", "base", "app", "u1"]


def test_bad_lifecycle_input_is_one_error_line_and_changes_nothing(ws):
    write(ws)
    assert ws.run("rollout", "//app:dev").returncode == 0
    before = (ws.state / "state.db").read_bytes()
    for args in (("rollout", "//app:dev", "--from-preview", "20990101-000000-deadbeef"),
                 ("destroy", "//app:dev"),  # no terminal here, no --yes
                 ("destroy", "//app:dev", "--yes", "--only", "command/nope"),
                 ("output", "//app:dev", "command/nope"),
                 ("output", "//app:dev", "command/base", "nope"),
                 ("preview", "//app:dev", "-j0")):
        proc = ws.run(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert (ws.state / "state.db").read_bytes() == before
    assert lines(ws, "destroyed") == []
    out = ws.run("output", "//app:dev", "command/base", "url")
    assert out.returncode == 0 and out.stdout == "u1\n"
    assert json.loads(ws.run("output", "//app:dev", "command/base", "--format", "json").stdout) == {"url": "u1"}


def test_preview_and_destroy_argv_survive_fmt_and_convert():
    doc = parse_yaml(YAML, "app/deployment.yaml")
    dsl = format_dsl(doc.data)
    assert "preview = [" in dsl and "destroy = " in dsl
    again = parse_dsl(dsl, "app/BUILD.atmos")
    assert again.data == doc.data
    assert parse_yaml(format_yaml(again.data), "x.yaml").data == doc.data


def test_preview_and_check_of_an_up_to_date_selection_and_from_preview_of_it(ws):
    write(ws)
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ws.run("rollout", "//app:dev").returncode == 0  # (the up-to-date record is written)
    proc = ws.run("preview", "//app:dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 would change, 3 no change, 0 need upstream" in proc.stdout
    assert lines(ws, "previewed") == []
    pid = re.search(r"^Saved preview (\S+):", proc.stdout, re.M).group(1)
    check = ws.run("check", "//app:dev")
    assert check.returncode == 0 and "No drift: 0 terraform components checked" in check.stdout
    applied = ws.run("rollout", "//app:dev", "--from-preview", pid)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert lines(ws, "applied") == ["base", "app", "u1"]
    ws.write("app/deployment.yaml", YAML.replace('["true"]', '["true", "x"]'))
    stale = ws.run("rollout", "//app:dev", "--from-preview", pid)
    assert stale.returncode == 2 and "command/solo" in stale.stderr and stale.stderr.count("\n") == 1


def _on_a_terminal(ws, args, answer: bytes) -> tuple[int, str]:
    """Run the CLI with a pty as stdin and stdout; type `answer` at the prompt."""
    import os
    import pty
    import select
    import subprocess
    import sys

    from conftest import REPO

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "atmosbuild", "-C", str(ws.root), *args],
                            stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out, answered = b"", False
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"Destroy them?" in out:
            os.write(master, answer)
            answered = True
    os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_destroy_on_a_terminal_lists_what_goes_and_asks(ws):
    write(ws)
    assert ws.run("rollout", "//app:dev").returncode == 0
    code, text = _on_a_terminal(ws, ["destroy", "//app:dev"], b"n\n")
    assert code == 0, text
    assert "This destroys 3 components, in this order:" in text
    assert text.index("command/app") < text.index("command/base")
    assert "Nothing destroyed." in text and lines(ws, "destroyed") == []
    code, text = _on_a_terminal(ws, ["destroy", "//app:dev", "-j1"], b"y\n")
    assert code == 0, text
    assert lines(ws, "destroyed") == ["app", "base"]


def test_ctrl_c_during_destroy_stops_it_and_records_only_what_finished(ws):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    slow = YAML.replace('''destroy: "echo app >> ../../../../../out/destroyed"''',
                        '''destroy: "echo started > ../../../../../out/started; exec sleep 60"''')
    write(ws, slow)
    assert ws.run("rollout", "//app:dev").returncode == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "atmosbuild", "-C", str(ws.root), "destroy", "//app:dev",
                             "--yes", "-j1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not (ws.root / "out" / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    status = ws.run("status", "//app:dev").stdout
    rows = {line.split()[0]: line for line in status.splitlines() if line.startswith("command/")}
    assert "destroyed" not in rows["command/app"] and "destroyed" not in rows["command/base"]
    assert lines(ws, "destroyed") == [], "base must not go while app (which needs it) stands"


def test_bad_lifecycle_input_leaves_every_file_as_it_was(ws):
    """Unknown preview id, stale preview, destroy without --yes off a
    terminal, `output` of an unknown component or key: exit 2, one `error:`
    line, and not a byte under the root (state, logs, previews, workspaces)
    created or changed."""
    write(ws)
    assert ws.run("rollout", "//app:dev").returncode == 0
    ws.write("app/deployment.yaml", YAML.replace('["true"]', '["true", "1"]'))
    pid = re.search(r"^Saved preview (\S+):", ws.run("preview", "//app:dev").stdout, re.M).group(1)
    ws.write("app/deployment.yaml", YAML.replace('["true"]', '["true", "2"]'))  # the preview is stale now
    # (Left out: .atmos/cache/, the parse and structure caches of the valid
    # config, which any command that reads it -- validate, plan -- writes;
    # and the lock files' contents: the stale check runs under the lock,
    # which names its holder there. Neither is state.)
    def snapshot():
        return {p: (b"" if p.startswith(".atmos/locks/") else b) for p, b in ws.snapshot_tree().items()
                if not p.startswith(".atmos/cache/")}

    before = snapshot()
    assert any(p.startswith(".atmos/previews/") for p in before)
    for args in (("rollout", "//app:dev", "--from-preview", "20990101-000000-deadbeef"),
                 ("rollout", "//app:dev", "--from-preview", "../../etc"),
                 ("rollout", "//app:dev", "--from-preview", pid),
                 ("destroy", "//app:dev"),
                 ("destroy", "//app:dev", "-j2", "--only", "command/app"),
                 ("output", "//app:dev", "command/nope"),
                 ("output", "//app:dev", "command/base", "nope"),
                 ("output", "//app:dev", "command/solo", "x")):
        proc = ws.run(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert proc.stdout == "", (args, proc.stdout)
        after = snapshot()
        assert after.keys() == before.keys(), (args, sorted(after.keys() ^ before.keys()))
        assert [p for p in after if after[p] != before[p]] == [], args
    stale = ws.run("rollout", "//app:dev", "--from-preview", pid)
    assert "command/solo" in stale.stderr and "nothing was run" in stale.stderr
    assert lines(ws, "destroyed") == [] and lines(ws, "applied") == ["base", "app", "u1"]
