"""Values are data, secrets stay secret (SPEC 2 and 14).

An interpolated value never runs as code: in a string-form `run` it reaches
`sh -c` through the environment whatever quotes surround the reference, or
the config is refused where no expansion can be data (single quotes). A
secret — a sensitive var, env entry or output, or anything built from one —
never appears in a byte atmosbuild prints or writes.

The quoting is checked with many examples straight against `sh` (resolve,
render, `sh -c`, no CLI), and with fewer through the real CLI.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from atmosbuild.components import TYPES
from atmosbuild.config.model import compile_document
from atmosbuild.config.resolve import render, resolve_target
from atmosbuild.config.shell import BARE, DQ, Ref, ShellContextError, classify
from atmosbuild.config.yaml import parse_yaml
from atmosbuild.errors import ConfigError
from conftest import Workspace

# -- values that try to escape --------------------------------------------------------

ATTACKS = [
    "a; touch PWNED #", "$(touch PWNED)", "`touch PWNED`", "'; touch PWNED; '",
    '"; touch PWNED; "', "&& touch PWNED", "\ntouch PWNED\n", "\\", "\\'", '\\"', "-n",
    "--help", "$HOME", "${HOME}", "$${x}", "*", "~", "é日🚀", "", " ", "a\\\nb", "'\"'\"'",
    "$((1+1))", "x\ttab", "#", "!", "%s%d",
]
_ALPHABET = st.sampled_from(list("ab -'\"$`\\;&|()<>{}*?~#!\n\t=%") + ["é", "日", "🚀"])
VALUES = st.one_of(
    st.sampled_from(ATTACKS),
    st.lists(st.one_of(st.sampled_from(ATTACKS), st.text(_ALPHABET, max_size=6)), max_size=5).map("".join),
)


def _escaped(value: str) -> str:
    """The value as written in a deployment file (`$${` is a literal `${`)."""
    return value.replace("${", "$${")


def _resolve_run(run, value: str):
    doc = parse_yaml(json.dumps({"deployment": {
        "vars": {"v": _escaped(value)}, "targets": {"dev": {}},
        "components": {"command": {"c": {"run": run}}}}}, ensure_ascii=False), "app/deployment.yaml")
    spec = compile_document(doc, "app", "app", TYPES)
    return spec, resolve_target(spec, "dev")["command/c"]


def _sh(template: str, value: str, cwd: str) -> str:
    spec, comp = _resolve_run(template, value)
    # the value is never in the shell text, only in the environment
    assert comp.run_env == {"ATMOS_V_1": _escaped(value)} and "${ATMOS_V_1}" in comp.run
    run = render(comp.run, {}, spec.components)
    values = render(dict(comp.run_env), {}, spec.components)
    proc = subprocess.run(["sh", "-c", run], cwd=cwd, capture_output=True,
                          env={"PATH": os.environ["PATH"], **values})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


# Where a reference stands -> what the shell must print for a value.
POSITIONS = {
    "bare": ("printf '%s' ${var.v}", lambda v: v),
    "bare, glued to text": ("printf '%s' pre${var.v}post", lambda v: f"pre{v}post"),
    "double quotes": ("printf '%s' \"${var.v}\"", lambda v: v),
    "double quotes, glued": ("printf '%s' \"<${var.v}>\"", lambda v: f"<{v}>"),
    "twice": ("printf '%s|' ${var.v} \"${var.v}\"", lambda v: f"{v}|{v}|"),
    "in $( )": ("printf '%s' \"$(printf '%s' ${var.v})\"", lambda v: v.rstrip("\n")),
    "in \"$( \"...\" )\"": ("printf '%s' \"$(printf '%s' \"${var.v}\")\"", lambda v: v.rstrip("\n")),
    "after a comment with a quote": ("# don't\nprintf '%s' ${var.v}", lambda v: v),
    "after a single-quoted string": ("printf '%s' 'it''s:'${var.v}", lambda v: f"its:{v}"),
    "after escapes": ("printf '%s' \\'\\\"${var.v}", lambda v: f"'\"{v}"),
    "after $${ }": ("X=1; printf '%s' \"$${X}\"${var.v}", lambda v: f"1{v}"),
    "as an assignment": ("x=${var.v}; printf '%s' \"$x\"", lambda v: v),
    "in a here-document": ("cat <<EOF\n<${var.v}>\nEOF", lambda v: f"<{v}>\n"),
    "after a here-document": ("cat <<'E' # it's\n'$${x}' \"\nE\nprintf '%s' ${var.v}",
                              lambda v: "'${x}' \"\n" + v),
    "in the second of two": ("cat <<A <<-B\na'\nA\n\t<${var.v}>\n\tB\n",
                             lambda v: f"<{v}>\n"),
}


@pytest.mark.parametrize("position", sorted(POSITIONS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
@example(value="a; touch PWNED #")
@example(value="$(touch PWNED)")
def test_the_shell_prints_exactly_the_value_wherever_the_reference_stands(position, value):
    template, expected = POSITIONS[position]
    with tempfile.TemporaryDirectory() as work:
        assert _sh(template, value, work) == expected(value)
        assert os.listdir(work) == []  # nothing the value tried to create


@pytest.mark.parametrize("template, why", [
    ("echo '${var.v}'", "single quotes"),
    ("echo \"it's\" 'a ${var.v} b'", "single quotes"),
    ("echo `echo ${var.v}`", "backquotes"),
    ("echo ${HOME:-${var.v}}".replace("${HOME", "$${HOME"), "${...}"),
    ("echo $(( ${var.v} + 1 ))", "$(( ))"),
    ("echo \\${var.v}", "backslash"),
    ("cat <<'EOF'\n${var.v}\nEOF", "delimiter is quoted"),
    ("cat <<\\EOF\n${var.v}\nEOF", "delimiter is quoted"),
    ("x=$(cat <<EOF\na\nEOF\n)\necho ${var.v}", "here-document inside $( )"),
    ("cat <<<a; echo ${var.v}", "<<<"),
    ("echo $(case a in a) echo ${var.v};; esac)", "case"),
    ("echo $'\\'' ${var.v}", "ANSI-C"),
])
def test_a_reference_that_cannot_be_made_safe_is_a_config_error_saying_how_to_write_it(template, why):
    with pytest.raises(ConfigError) as info:
        _resolve_run(template, "x")
    err = info.value
    assert "${var.v}" in err.message and why in err.message, err.message
    assert "cannot be passed safely" in err.message
    assert err.file == "app/deployment.yaml" and err.line is not None


def test_the_lexer_follows_nesting():
    def ctx(text: str) -> list[str]:
        items: list = []
        for i, part in enumerate(text.split("@")):
            if i:
                items.append(Ref(i - 1))
            items.extend(part)
        return classify(items)

    assert ctx('a @ "@" x') == [BARE, DQ]
    assert ctx("\"$(echo @ \"@\")\" @") == [BARE, DQ, BARE]
    assert ctx("echo ')' $(echo \")\" @) @") == [BARE, BARE]
    assert ctx("echo \"`date`\" @ #'\n@") == [BARE, BARE]
    with pytest.raises(ShellContextError):  # a `#` inside a word starts no comment
        ctx("a=b#c '@'")
    with pytest.raises(ShellContextError):
        ctx("echo $((1)) '@'")


def test_an_argv_run_passes_values_as_they_are():
    _, comp = _resolve_run(["printf", "%s", "${var.v}", "x ${var.v}"], "a 'b' $(c)")
    assert comp.run == ("printf", "%s", "a 'b' $(c)", "x a 'b' $(c)") and comp.run_env == {}


def test_keys_change_with_a_value_passed_through_the_environment_and_yaml_equals_dsl(tmp_path):
    from atmosbuild.graph.keys import config_ingredients, digest

    def key(value: str) -> str:
        _, comp = _resolve_run("echo ${var.v}", value)
        return digest(config_ingredients(comp, "1"))

    assert key("a") != key("b")
    (tmp_path / "app").mkdir()
    (tmp_path / "atmos.yaml").write_text("{}\n")
    dsl = tmp_path / "app" / "BUILD.atmos"
    dsl.write_text('deployment "app" {\n  vars { v = "a" }\n  target "dev" {}\n'
                   '  command "c" { run = "echo \\"${var.v}\\" $${HOME}" }\n}\n')
    from atmosbuild.config.workspace import load_package
    spec = load_package(str(tmp_path), "app", TYPES)
    from_dsl = resolve_target(spec, "dev")["command/c"]
    _, from_yaml = _resolve_run('echo "${var.v}" $${HOME}', "a")
    assert config_ingredients(from_dsl, "1") == config_ingredients(from_yaml, "1")


def test_env_and_vars_interpolation_stays_plain_data():
    _, comp = _resolve_run(["true"], "it's $(x)")
    doc = parse_yaml(json.dumps({"deployment": {
        "vars": {"v": "it's $(x)", "w": "<${var.v}>"}, "env": {"E": "${var.w}"},
        "targets": {"dev": {}}, "components": {"command": {"c": {"run": ["true"]}}}}}), "d.yaml")
    comp = resolve_target(compile_document(doc, "app", "app", TYPES), "dev")["command/c"]
    assert comp.vars["w"] == "<it's $(x)>" and comp.env["E"] == "<it's $(x)>"


def test_atmos_v_names_are_reserved_in_env():
    doc = parse_yaml(json.dumps({"deployment": {
        "env": {"ATMOS_V_1": "x"}, "targets": {"dev": {}},
        "components": {"command": {"c": {"run": "echo hi"}}}}}), "d.yaml")
    with pytest.raises(ConfigError, match="ATMOS_V_"):
        resolve_target(compile_document(doc, "app", "app", TYPES), "dev")


# -- the real CLI ------------------------------------------------------------------------

CLI_RUNS = {
    "bare": "printf '%s' ${var.v} > \"$ATMOS_ROOT/out\"",
    "double quotes": "printf '%s' \"${var.v}\" > \"$ATMOS_ROOT/out\"",
    "single quotes": "printf '%s' '${var.v}' > \"$ATMOS_ROOT/out\"",
    "argv": ["sh", "-c", "printf '%s' \"$1\" > \"$ATMOS_ROOT/out\"", "sh", "${var.v}"],
    "from an upstream output": "printf '%s' ${outputs.command/up.v} > \"$ATMOS_ROOT/out\"",
}


# Real CLI runs: few examples, and no shrinking (each costs seconds); the
# direct test above covers the quoting with many more.
CLI = settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
               suppress_health_check=[HealthCheck.function_scoped_fixture])


@CLI
@given(value=VALUES, position=st.sampled_from(sorted(CLI_RUNS)))
@example(value="a; touch $ATMOS_ROOT/PWNED #", position="single quotes")
@example(value="a; touch $ATMOS_ROOT/PWNED #", position="bare")
@example(value="\"; touch $ATMOS_ROOT/PWNED; \"$(touch $ATMOS_ROOT/PWNED)", position="double quotes")
@example(value="'; touch $ATMOS_ROOT/PWNED; '", position="from an upstream output")
def test_through_the_cli_a_value_prints_as_itself_or_the_config_is_refused(value, position):
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        comps = {"c": {"run": CLI_RUNS[position]}}
        if position == "from an upstream output":
            comps["up"] = {"env": {"V": "${var.v}"}, "run": [
                "python3", "-c", "import json, os; json.dump({'v': os.environ['V']}, "
                "open(os.environ['ATMOS_OUTPUTS'], 'w'))"]}
        ws.write("app/deployment.yaml", json.dumps({"deployment": {
            "vars": {"v": _escaped(value)}, "targets": {"dev": {}},
            "components": {"command": comps}}}, ensure_ascii=False))
        proc = ws.run("rollout", "//app:dev", "-j1")
        assert not (ws.root / "PWNED").exists()
        if position == "single quotes":
            assert proc.returncode == 2, proc.stdout + proc.stderr
            lines = proc.stderr.splitlines()
            assert lines[0].startswith("error: ") and "app/deployment.yaml:1:" in lines[0]
            assert "single quotes" in lines[0] and "\"...${var.v}...\"" in lines[0]
            assert "Traceback" not in proc.stderr and not (ws.root / "out").exists()
            return
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (ws.root / "out").read_bytes().decode() == value


# -- secrets ---------------------------------------------------------------------------

_PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=8)
# A fixed "Zq" inside keeps a random secret from being some ordinary text
# atmosbuild prints anyway ("0000" in a key, "cach" in "cached").
SECRETS = st.tuples(_PRINTABLE, _PRINTABLE).map(lambda p: f"{p[0]}Zq{p[1]}")


def _encodings(secret: str) -> set[bytes]:
    """The bytes a leaked secret would show as: raw, JSON- and HTML-escaped."""
    import html

    return {secret.encode(), json.dumps(secret)[1:-1].encode(),
            json.dumps(secret, ensure_ascii=False)[1:-1].encode(), html.escape(secret).encode(),
            html.escape(secret, quote=False).encode()}


def _state_files(ws) -> dict[str, bytes]:
    return ws.snapshot_tree(ws.state)


def _assert_nowhere(secrets, haystacks: dict[str, bytes]) -> None:
    for secret in secrets:
        for form in _encodings(secret):
            for name, data in haystacks.items():
                assert form not in data, f"secret {secret!r} appears in {name}"


SECRET_DEPLOYMENT = {
    "deployment": {
        "vars": {"db_password": "S1", "region": "eu"},
        "targets": {"dev": {}},
        "components": {"command": {
            "up": {
                # env built from a secret; the output holding it is sensitive
                "env": {"CONN": "pg://u:${var.db_password}@db", "NOTE": "${var.note}"},
                "run": ["python3", "-c", "import json, os; json.dump({'conn': os.environ['CONN'], "
                        "'plain': 'p', 'note_out': os.environ['NOTE']}, open(os.environ['ATMOS_OUTPUTS'], 'w')); "
                        "print('up says', os.environ['CONN'])"],
                "vars": {"note": "S2"},
                "sensitive": ["note", "NOTE", "note_out"],
            },
            "shell": {
                "vars": {"dsn": "u:${var.db_password}@h"},
                "run": "printf 'dsn=%s\\n' ${var.dsn}; printf 'pw=%s %s\\n' \"${var.db_password}\" "
                       "\"$(printf '%s' ${var.db_password})\"",
            },
            "down": {
                "vars": {"pwo": "${outputs.command/up.conn}", "n": "N1"},
                "env": {"FROM_UP": "x${outputs.command/up.note_out}"},
                "sensitive": ["pwo"],
                "run": ["sh", "-c", "printf 'got=%s env=%s\\n' \"$1\" \"$FROM_UP\"; cat \"$ATMOS_VARS_FILE\"", "sh",
                        "${var.pwo}"],
            },
            "fails": {
                "env": {"API_TOKEN": "${var.db_password}"},
                "run": ["sh", "-c", "echo failing with $API_TOKEN >&2; echo \"$API_TOKEN\"; exit 3"],
            },
            "snapshot": {
                # copies the live database and its WAL right after `down` is recorded
                "metadata": {"depends_on": ["command/down"]},
                "run": ["sh", "-c", "mkdir -p $ATMOS_ROOT/snap && cp $ATMOS_ROOT/.atmos/state.db* $ATMOS_ROOT/snap/"],
            },
        }},
    }
}


def _secret_deployment(s1: str, s2: str, n: str = "N1") -> str:
    text = json.dumps(SECRET_DEPLOYMENT)
    # (json.dumps again: the secrets hold quotes and backslashes)
    text = text.replace('"S1"', json.dumps(_escaped(s1))).replace('"S2"', json.dumps(_escaped(s2)))
    return text.replace('"N1"', json.dumps(n))


def _everything(ws, report: Path, *outputs) -> dict[str, bytes]:
    haystacks = {f"output {i}": (p.stdout + p.stderr).encode() for i, p in enumerate(outputs)}
    haystacks.update(_state_files(ws))
    if report.exists():
        haystacks["report"] = report.read_bytes()
    snap = ws.root / "snap"
    if snap.exists():
        for path in snap.iterdir():
            haystacks[f"snap/{path.name}"] = path.read_bytes()
    return haystacks


@settings(CLI, max_examples=5)  # each example: 9 CLI runs
@given(s1=SECRETS, s2=SECRETS)
@example(s1="it's-Zq-\"x\"", s2="$(id)Zq`id`\\")
def test_secrets_never_reach_any_output_stream_or_any_byte_under_the_state_dir(s1, s2):
    assume(s1 != s2 and s1 not in s2 and s2 not in s1)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        report = Path(tmp) / "report.json"
        ws.write("app/deployment.yaml", _secret_deployment(s1, s2))
        first = ws.run("rollout", "//app:dev", "-j2", "-k", "--report", str(report))
        assert first.returncode == 1, first.stdout + first.stderr  # `fails` fails
        assert "got=*** env=x***" in first.stdout and "dsn=u:***@h" in first.stdout, first.stdout
        # A dependent's own change, its upstream cached: its sensitive
        # outputs are not stored, so it cannot get them (command cannot read
        # them back) and fails saying why.
        ws.write("app/deployment.yaml", _secret_deployment(s1, s2, n="N2"))
        second = ws.run("rollout", "//app:dev", "-j2", "-k", "--report", str(report))
        assert "needs the sensitive output 'conn' of command/up" in second.stdout + second.stderr
        # Then the secret changes: plan, explain, status say so without it.
        ws.write("app/deployment.yaml", _secret_deployment(s1[::-1] + "!", s2, n="N2"))
        views = [ws.run("plan", "//app:dev"), ws.run("explain", "//app:dev", "command/up"),
                 ws.run("explain", "//app:dev", "command/shell"), ws.run("status", "//app:dev"),
                 ws.run("rollout", "//app:dev", "--dry-run", "--graph", "json"),
                 ws.run("plan", "//app:dev", "--format", "json"),
                 ws.run("status", "//app:dev", "--format", "json"),
                 ws.run("explain", "//app:dev", "command/down", "--format", "json")]
        assert "(sensitive, values hidden)" in views[1].stdout
        page, trace = Path(tmp) / "report.html", Path(tmp) / "trace.json"
        third = ws.run("rollout", "//app:dev", "-j1", "-k", "--report", str(report))
        fourth = ws.run("rollout", "//app:dev", "-j1", "-k", "--force", "--report", str(page),
                        "--profile", str(trace))
        assert third.returncode == 1 and (ws.root / "snap" / "state.db").exists()
        assert fourth.returncode == 1 and page.exists() and trace.exists()
        haystacks = _everything(ws, report, first, second, third, fourth, *views)
        haystacks.update({"html report": page.read_bytes(), "profile": trace.read_bytes()})
        _assert_nowhere([s1, s2, s1[::-1] + "!"], haystacks)


def _applied(ws, component: str, column: str):
    with sqlite3.connect(ws.state / "state.db") as db:
        (text,) = db.execute(f"SELECT {column} FROM applied WHERE component = ?", (component,)).fetchone()
    return json.loads(text)


SECRET = "hunter2-it's-\"Zq\""


def test_a_secret_holding_a_quote_never_shows_on_the_echoed_command_line(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "vars": {"db_password": SECRET}, "targets": {"dev": {}},
        "components": {"command": {
            "argv": {"run": ["echo", "--pw=${var.db_password}", "${var.db_password}"]},
            "shell": {"run": "echo ${var.db_password} \"${var.db_password}\""}}}}}))
    cache = ws.root.parent / "user-cache"  # the parsed-file cache lives there
    proc = ws.run("rollout", "//app:dev", "-j1", env={"XDG_CACHE_HOME": str(cache)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = {p.name: p.read_text() for p in ws.state.rglob("*.log")}
    assert logs["argv.log"].splitlines()[0] == "$ echo --pw=*** ***"
    assert logs["shell.log"].splitlines()[0].startswith("$ sh -c 'echo \"${ATMOS_V_1}\"")
    # A clean run leaves its up-to-date record: the next one is decided from it.
    again = ws.run("rollout", "//app:dev", "-j1", env={"XDG_CACHE_HOME": str(cache)})
    assert again.returncode == 0 and "2 cached" in again.stdout
    assert list((ws.state / "cache").glob("uptodate-*"))
    cached = {str(p): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    _assert_nowhere([SECRET, "hunter2"], {**_state_files(ws), **cached, "console": proc.stdout.encode()})


def test_secrets_never_reach_explain_or_the_stored_ingredients(ws):
    deployment = {"deployment": {
        "vars": {"api_token": SECRET, "dsn": "pg://${var.api_token}@db", "plain": "p"},
        "targets": {"dev": {}},
        "components": {"command": {"c": {
            "env": {"DSN": "${var.dsn}"},
            "run": ["echo", "${var.dsn}", "${var.plain}"]}}}}}
    ws.write("app/deployment.yaml", json.dumps(deployment))
    assert ws.run("rollout", "//app:dev").returncode == 0
    ingredients = _applied(ws, "command/c", "ingredients")
    assert ingredients["vars"]["plain"] == "p"  # plain values stay readable
    assert set(ingredients["vars"]["dsn"]) == {"sha"} and set(ingredients["env"]["DSN"]) == {"sha"}
    deployment["deployment"]["vars"]["api_token"] = SECRET + "2"
    ws.write("app/deployment.yaml", json.dumps(deployment))
    explain = ws.run("explain", "//app:dev", "command/c")
    assert "var `dsn` changed (sensitive, values hidden)" in explain.stdout
    assert "env `DSN` changed (sensitive, values hidden)" in explain.stdout
    _assert_nowhere([SECRET, "hunter2"], {**_state_files(ws), "explain": explain.stdout.encode()})


def test_a_sensitive_var_set_from_an_upstream_output_is_masked(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {}},
        "components": {"command": {
            "up": {"run": ["sh", "-c", "printf '{\"v\": \"%s\"}' \"$(printf hun; printf ter2-Zq)\" "
                           "> $ATMOS_OUTPUTS"]},
            "down": {"vars": {"pwo": "${outputs.command/up.v}"}, "sensitive": ["pwo"],
                     "run": ["echo", "pwo=${var.pwo}"]}}}}}))
    proc = ws.run("rollout", "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pwo=***" in proc.stdout and "hunter2-Zq" not in proc.stdout
    _assert_nowhere(["hunter2-Zq"], {p.name: p.read_bytes() for p in ws.state.rglob("*.log")})


def test_sensitive_outputs_are_stored_as_a_marker_masked_in_dependents_and_keep_early_cutoff(ws):
    def write(value: str) -> None:
        ws.write("app/deployment.yaml", json.dumps({"deployment": {
            "targets": {"dev": {}},
            "components": {"command": {
                "up": {"sensitive": ["conn"], "vars": {"n": value},
                       "run": ["sh", "-c", "printf '{\"conn\": \"%s\", \"db_password\": \"%s\", \"url\": \"u\"}' "
                               "\"$(printf se; printf cret-Zq)\" \"$(printf pa; printf ss-Zq)\" > $ATMOS_OUTPUTS"]},
                "down": {"run": ["echo", "conn=${outputs.command/up.conn}", "pw=${outputs.command/up.db_password}",
                                 "url=${outputs.command/up.url}"]}}}}}))

    write("1")
    proc = ws.run("rollout", "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "conn=*** pw=*** url=u" in proc.stdout
    marker = {"$atmosbuild": "sensitive"}
    assert _applied(ws, "command/up", "outputs") == {"conn": marker, "db_password": marker, "url": "u"}
    # up runs again to the same outputs: down is cached (early cutoff works
    # on the real values, not on the markers).
    write("2")
    proc = ws.run("rollout", "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[command/down] cached" in proc.stdout
    _assert_nowhere(["secret-Zq", "pass-Zq"], {**_state_files(ws), "console": proc.stdout.encode()})


# -- type hooks: sensitive_outputs and recover_outputs ------------------------------------

def _in_process_rollout(root: Path, monkeypatch, ctype, capsys=None) -> tuple[int, str]:
    """`atmosbuild rollout //app:dev -j1` run in this process, with `ctype`
    as the `command` type (a type of our own: the seam the terraform type
    plugs into)."""
    import gc

    from atmosbuild import cli
    from atmosbuild.components import TYPES

    monkeypatch.setitem(TYPES, "command", ctype)
    try:
        cli.main(["-C", str(root), "rollout", "//app:dev", "-j1"])
    except SystemExit as exc:
        code = exc.code
    finally:
        gc.enable()
        gc.unfreeze()
    captured = capsys.readouterr()
    return code, captured.out + captured.err


class _Marking:
    """A command type whose `blob` output is sensitive and can be read back."""

    def __new__(cls, reads: list, value: str):
        from atmosbuild.components.command import Command

        class Marking(Command):
            def sensitive_outputs(self, ctx, captured):
                return frozenset({"blob"})

            def recover_outputs(self, ctx):
                reads.append(ctx.component_id)
                if ctx.component_id != "command/up":
                    return None
                assert os.path.isdir(ctx.workdir)  # its source is there to read from
                return {"blob": value, "url": "u"}

        return Marking()


def _marking_deployment(ws, n: int, blob: str = "\"$(printf tOpZq; printf -- -secret)\"") -> None:
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {}},
        "components": {"command": {
            "up": {"source": "src/up",
                   "run": ["sh", "-c", f"printf '{{\"blob\": \"%s\", \"url\": \"u\"}}' {blob} "
                           "> $ATMOS_OUTPUTS"]},
            "down": {"source": "src/down", "vars": {"n": n},
                     "run": ["echo", "blob=${outputs.command/up.blob}"]}}}}}))
    ws.write("src/up/main.sh", "up\n")
    ws.write("src/down/main.sh", "down\n")


def test_a_type_marks_outputs_sensitive_and_reads_them_back_for_a_dependent(ws, monkeypatch, capsys):
    reads: list = []
    _marking_deployment(ws, 1)
    code, out = _in_process_rollout(ws.root, monkeypatch, _Marking(reads, "tOpZq-secret"), capsys)
    assert code == 0, out
    assert "blob=***" in out and reads == []
    assert _applied(ws, "command/up", "outputs")["blob"] == {"$atmosbuild": "sensitive"}
    _marking_deployment(ws, 2)  # down runs, up is cached: the value is read back from the type
    code, out = _in_process_rollout(ws.root, monkeypatch, _Marking(reads, "tOpZq-secret"), capsys)
    assert code == 0, out
    assert reads == ["command/up"] and "blob=***" in out
    _assert_nowhere(["tOpZq-secret"], {**_state_files(ws), "console": out.encode()})


def test_a_partial_rollout_reads_a_sensitive_output_back_from_a_recorded_upstream(ws, monkeypatch, capsys):
    import time

    reads: list = []
    _marking_deployment(ws, 1)
    time.sleep(2.1)  # sources settle: the next rollout may be decided from its record
    code, out = _in_process_rollout(ws.root, monkeypatch, _Marking(reads, "tOpZq-secret"), capsys)
    assert code == 0, out
    assert list((ws.state / "cache").glob("uptodate-*"))  # recorded
    ws.write("src/down/main.sh", "down, edited\n")  # only down's tree moved
    from atmosbuild.run.decide import Decider

    compiled = []
    original = Decider.action_node

    def spy(self, dep):
        node = original(self, dep)
        compiled.append((dep, type(node).__name__))
        return node

    monkeypatch.setattr(Decider, "action_node", spy)
    code, out = _in_process_rollout(ws.root, monkeypatch, _Marking(reads, "tOpZq-secret"), capsys)
    assert code == 0, out
    assert "[command/up] cached" in out and "blob=***" in out
    # decided from the record: up was only a record until down needed its output
    assert compiled == [("command/up", "ActionNode")] and reads == ["command/up"]


def test_outputs_read_back_that_differ_from_the_recorded_ones_fail_the_dependent(ws, monkeypatch, capsys):
    reads: list = []
    _marking_deployment(ws, 1, blob="b")
    assert _in_process_rollout(ws.root, monkeypatch, _Marking(reads, "changed"), capsys)[0] == 0
    _marking_deployment(ws, 2, blob="b")
    code, out = _in_process_rollout(ws.root, monkeypatch, _Marking(reads, "changed"), capsys)
    assert code == 1 and "differ from the recorded ones" in out, out
    assert "atmosbuild rollout //app:dev --force --only command/down" in out


def test_masking_has_no_length_minimum_and_never_leaves_a_secret_spelled_by_the_mask():
    from atmosbuild.run.process import make_masker

    assert make_masker(["ab"])("xaby") == "x***y"
    assert make_masker(["**x*"])("**x**x*") .count("**x*") == 0
    # each line of a multi-line secret is masked on its own, whatever its length
    assert make_masker(["a\nb"])("a and b") == "*** ***nd ***"


def test_a_config_error_quoting_a_line_with_a_secret_masks_it(ws):
    ws.write("app/deployment.yaml", """\
        deployment:
          targets: {dev: {}}
          components:
            command:
              c:
                vars: {db_password: "hunter2-Zq-x", other: "${var.nope}"}
                run: ["true"]
        """)
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2 and "unknown var 'nope'" in proc.stderr, proc.stderr
    assert 'vars: {db_password: "***"' in proc.stderr  # the quoted line, masked
    assert "hunter2-Zq-x" not in proc.stdout + proc.stderr


def test_a_secret_is_masked_in_a_shell_trace_too(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "vars": {"api_token": "it's-Zq-tok"}, "targets": {"dev": {}},
        "components": {"command": {"c": {"run": "set -x; : \"${var.api_token}\""}}}}}))
    proc = ws.run("rollout", "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = next(ws.state.rglob("c.log")).read_text()
    assert "***" in log.splitlines()[-1], log  # the trace line
    for form in ("it's-Zq-tok", "'it'\"'\"'s-Zq-tok'", "'it'\\''s-Zq-tok'"):
        assert form not in log and form not in proc.stdout


def test_the_error_points_at_the_reference_itself(ws):
    ws.write("app/BUILD.atmos", """\
        deployment "app" {
          vars { x = "a" }
          target "dev" {}
          command "c" {
            run = "echo ${var.x} '${var.x}'"
          }
        }
        """)
    proc = ws.run("validate")
    first, source, caret = proc.stderr.splitlines()[:3]
    assert proc.returncode == 2 and "app/BUILD.atmos:5:27: " in first, proc.stderr
    assert source[caret.index("^"):].startswith("${var.x}'")  # the second one, in quotes
