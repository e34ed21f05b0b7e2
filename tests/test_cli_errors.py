"""Bad input, end to end (SPEC 8): the real CLI on real files.

Every case is something a user can get wrong. For each one the promise is
the same: exit code 2, one message whose first line starts with `error:`
(with `file:line:col` when a file is at fault), never a Python traceback,
and nothing written -- no `.atmos/`, no workspace, not a byte of the tree
changed. A lock held by another rollout (exit 3) is tested elsewhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import pytest

# A valid deployment; each case breaks it in one place.
BASE = """\
deployment:
  description: API service
  vars: {region: eu-west-1, service: api}
  targets:
    dev:
      vars: {replicas: 1}
    prod:
      vars: {replicas: 3}
      components:
        command:
          deploy: {vars: {replicas: 5}}
  components:
    command:
      build:
        source: src
        run: ["sh", "build.sh", "${var.region}"]
        inputs: ["tools/**"]
      deploy:
        run: ["echo", "${outputs.command/build.image}"]
        metadata: {depends_on: [command/build]}
"""


def at(text: str, needle: str, nth: int = 1) -> str:
    """`line:col` (1-based) of the nth occurrence of `needle` in `text`."""
    pos = -1
    for _ in range(nth):
        pos = text.index(needle, pos + 1)
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"{line}:{col}"


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once in the base deployment"
    return text.replace(old, new)


@dataclass
class Case:
    id: str
    deployment: str = BASE  # api/deployment.yaml
    args: tuple = ("//api:dev",)
    where: str | None = None  # expected "FILE:LINE:COL" in the first line
    says: tuple = ()  # substrings of stderr (message, hint, listing)
    extra: dict = field(default_factory=dict)  # more files: path -> text
    links: dict = field(default_factory=dict)  # symlinks: path -> target ("{outside}" expands)
    # True when the error is found before the state directory could be opened
    # (labels, flags); the others exercise the "nothing written" promise hardest.
    early: bool = False


def yaml_at(deployment: str, needle: str, nth: int = 1) -> str:
    return f"api/deployment.yaml:{at(deployment, needle, nth)}"


def _case(id, deployment=BASE, *, needle=None, nth=1, **kw) -> Case:
    if needle is not None:
        kw["where"] = yaml_at(deployment, needle, nth)
    return Case(id, deployment, **kw)


MALFORMED = edit("      vars: {replicas: 1}\n", "      vars: {replicas: 1}}\n")
TAB_INDENT = edit("  description: API service\n", "  description: API service\n\tname: api\n")
DUP_COMPONENT = edit("      deploy:\n", "      build:\n        run: [echo]\n      deploy:\n")
DUP_KEY = edit("        source: src\n", "        source: src\n        source: other\n")

CASES = [
    # -- YAML syntax ------------------------------------------------------------
    # The message points at the stray second brace.
    _case("malformed-yaml", MALFORMED, where=yaml_at(MALFORMED, "}\n    prod:"),
          says=("invalid YAML",)),
    _case("tab-indentation", TAB_INDENT, needle="\tname", says=("invalid YAML",)),
    _case("duplicate-component", DUP_COMPONENT, needle="build:", nth=2,
          says=("duplicate key 'build'",)),
    _case("duplicate-key", DUP_KEY, needle="source: other", says=("duplicate key 'source'",)),
    # -- unknown keys, at every level, with a did-you-mean -------------------------
    _case("unknown-top-level-key", "deploymnet:\n  targets: {dev: {}}\n", needle="deploymnet",
          says=("unknown key 'deploymnet'", "did you mean 'deployment'")),
    _case("unknown-deployment-key", edit("  description:", "  descripton:"),
          needle="descripton", says=("unknown key 'descripton'", "did you mean 'description'")),
    _case("unknown-target-key", edit("      vars: {replicas: 1}", "      varz: {replicas: 1}"),
          needle="varz", says=("unknown key 'varz'", "did you mean 'vars'")),
    _case("unknown-component-key", edit("        source: src", "        sorce: src"),
          needle="sorce", says=("unknown key 'sorce'", "did you mean 'source'")),
    _case("unknown-metadata-key", edit("{depends_on: [command/build]}", "{depend_on: [command/build]}"),
          needle="depend_on", says=("unknown key 'depend_on'", "did you mean 'depends_on'")),
    _case("unknown-override-key", edit("deploy: {vars: {replicas: 5}}", "deploy: {varss: {replicas: 5}}"),
          needle="varss", says=("unknown key 'varss'", "did you mean 'vars'")),
    Case("unknown-settings-key", extra={"atmos.yaml": "schedule: waves\nparalelism: 2\n"},
         where="atmos.yaml:2:1", says=("unknown setting 'paralelism'", "did you mean 'parallelism'"),
         early=True),
    Case("unknown-toolchain-key", extra={"atmos.yaml": "toolchain:\n  terraform: tofu\n  nixpack: np\n"},
         where="atmos.yaml:3:3", says=("'nixpack'", "did you mean 'nixpacks'"), early=True),
    Case("malformed-settings", extra={"atmos.yaml": "schedule: [waves\n"},
         where="atmos.yaml:2:1", says=("invalid YAML",), early=True),
    # -- component types and names ------------------------------------------------
    _case("unknown-type", edit("    command:\n      build:", "    commnd:\n      build:"),
          needle="commnd", says=("unknown component type 'commnd'", "did you mean 'command'",
                                 "command, nixpack, terraform")),
    *[_case(f"bad-component-name-{slug}", edit("      deploy:\n", f"      {key}:\n"), needle=key,
            says=("bad component name",))
      for slug, key in [("dotdot", "'..'"), ("dotdot-segment", "a/../b"), ("dot-segment", "a/./b"),
                        ("empty-segment", "a//b"), ("trailing-slash", "'a/'"),
                        ("leading-slash", "/abs"), ("space", "'my app'"),
                        ("tab", '"my\\tapp"'), ("control-char", '"my\\x01app"')]],
    # -- labels, packages, targets -------------------------------------------------
    *[Case(f"bad-label-{slug}", args=(label,), early=True, says=("bad label",))
      for slug, label in [("no-slashes", "api:dev"), ("no-target", "//api"),
                          ("empty-target", "//api:"), ("space-in-package", "//a pi:dev"),
                          ("bad-target-chars", "//api:d$v"), ("dotdot-package", "//../api:dev"),
                          ("triple-slash", "///api:dev"), ("empty", "")]],
    Case("unknown-package", args=("//apx:dev",), says=("unknown package //apx", "did you mean 'api'",
                                                        "//api")),
    Case("unknown-target", args=("//api:prd",), says=("unknown target 'prd'", "did you mean 'prod'",
                                                      "dev, prod")),
    Case("pattern-matches-nothing", args=("//...:qa",), says=("matches no package",), early=True),
    Case("both-front-ends", extra={"api/BUILD.atmos": 'deployment "api" {}\n'},
         says=("BUILD.atmos", "deployment.yaml", "keep exactly one")),
    # -- paths outside the root ------------------------------------------------------
    *[_case(f"source-outside-{slug}", edit("source: src", f"source: {path}"), needle="source:",
            says=("resolves outside the workspace root",))
      for slug, path in [("dotdot", "../outside"), ("absolute", "/etc"),
                         ("normalised-dotdot", "src/../../outside")]],
    _case("source-symlink-outside", edit("source: src", "source: escape"), needle="source:",
          links={"escape": "{outside}"}, says=("resolves outside the workspace root",)),
    *[_case(f"inputs-outside-{slug}", edit('inputs: ["tools/**"]', f'inputs: ["{pattern}"]'),
            needle=f'"{pattern}"', says=("outside the workspace root",))
      for slug, pattern in [("dotdot", "../outside/**"), ("absolute", "/etc/hostname")]],
    _case("inputs-symlink-outside", needle='"tools/**"', links={"tools/escape": "{outside}"},
          says=("outside the workspace root", "tools/escape")),
    _case("source-missing", edit("source: src", "source: nowhere"), needle="source:",
          says=("'nowhere'", "not a directory")),
    _case("source-missing-in-override", edit("deploy: {vars: {replicas: 5}}", "deploy: {source: gone}"),
          args=("//api:prod",), needle="source: gone", says=("'gone'", "at target 'prod'")),
    # -- the graph -------------------------------------------------------------------------
    _case("cycle", edit("        inputs:", "        metadata: {depends_on: [command/deploy]}\n        inputs:"),
          needle="command/deploy]",
          says=("dependency cycle: command/build -> command/deploy -> command/build",)),
    _case("self-dependency", edit("[command/build]}", "[command/deploy]}"), needle="command/deploy]",
          says=("dependency cycle: command/deploy -> command/deploy",)),
    _case("unknown-depends-on", edit("[command/build]}", "[command/biuld]}"), needle="command/biuld",
          says=("unknown component 'command/biuld'", "did you mean 'command/build'")),
    # -- interpolation -------------------------------------------------------------
    _case("unknown-reference", edit('"${var.region}"', '"${tagret}"'), needle='"${tagret}"',
          says=("unknown reference '${tagret}'",)),
    _case("unknown-var", edit('"${var.region}"', '"${var.regoin}"'), needle='"${var.regoin}"',
          says=("unknown var 'regoin'",)),
    _case("outputs-of-missing-component", edit("command/build.image", "command/biuld.image"),
          needle='"${outputs', says=("${outputs.command/biuld.image}", "does not name a component")),
    # -- flags -------------------------------------------------------------------------
    Case("parallelism-zero", args=("//api:dev", "-j0"), early=True, says=("-j/--parallelism",)),
    Case("parallelism-negative", args=("//api:dev", "-j", "-1"), early=True, says=("-j/--parallelism",)),
]

CYCLE3 = """\
deployment:
  targets: {dev: {}}
  components:
    command:
      a: {run: [echo], metadata: {depends_on: [command/c]}}
      b: {run: [echo], metadata: {depends_on: [command/a]}}
      c: {run: ["${outputs.command/b.x}"]}
      d: {run: [echo], metadata: {depends_on: [command/a]}}
"""
CASES.append(_case("cycle-through-outputs", CYCLE3, needle="command/c]",
                   says=("dependency cycle: command/a -> command/c -> command/b -> command/a",)))



def setup(ws, case: Case) -> None:
    ws.write("api/deployment.yaml", case.deployment)
    ws.write("src/build.sh", "echo building\n", mode=0o755)
    ws.write("tools/gen.py", "print('tool')\n")
    outside = ws.root.parent / "outside"
    (outside / "sub").mkdir(parents=True, exist_ok=True)
    (outside / "sub" / "secret.txt").write_text("not yours\n")
    for rel, text in case.extra.items():
        ws.write(rel, text)
    for rel, target in case.links.items():
        os.symlink(target.format(outside=outside), ws.root / rel)


def assert_refused(ws, args, *, where=None, says=(), cwd=None, early=False):
    """The SPEC 8 promise for one bad input."""
    before = ws.snapshot_tree()
    proc = ws.run(*args, cwd=cwd or ws.root)
    stderr_lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert stderr_lines and stderr_lines[0].startswith("error:"), proc.stderr
    assert sum(line.startswith("error:") for line in stderr_lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if where is not None:
        assert stderr_lines[0].startswith(f"error: {where}:"), proc.stderr
        assert_quotes_the_line(ws, where, stderr_lines[1:])
    for text in says:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr}"
    after = {path: data for path, data in ws.snapshot_tree().items() if not path.startswith(".atmos/")}
    assert after == before, "bad input changed files under the root"
    assert not ws.state.exists(), "bad input created the state directory"
    return proc


def assert_quotes_the_line(ws, where: str, context: list[str]) -> None:
    """Under the message: the offending source line, and a caret at the column."""
    file, line, col = where.rsplit(":", 2)
    source = (ws.root / file).read_text().splitlines()
    if int(line) > len(source):
        return  # the problem is the end of the file: there is no line to quote
    assert context[:2] == ["    " + source[int(line) - 1].replace("\t", " "),
                           "    " + " " * (int(col) - 1) + "^"], "\n".join(context)


def test_the_base_deployment_is_valid(ws):
    """Every case below breaks this deployment in exactly one place."""
    setup(ws, Case("valid"))
    proc = ws.run("plan", "//api:dev", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    assert "command/build" in proc.stdout and "command/deploy" in proc.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_one_message_and_no_side_effects(ws, case):
    """`rollout` is the command that writes state, so it is the one to test."""
    setup(ws, case)
    assert_refused(ws, ("rollout", *case.args), where=case.where, says=case.says, early=case.early)


@pytest.mark.parametrize("case_id", ["malformed-yaml", "unknown-target", "cycle"])
def test_rollout_of_bad_config_creates_no_state_directory(ws, case_id):
    case = CASES[[c.id for c in CASES].index(case_id)]
    setup(ws, case)
    proc = ws.run("rollout", *case.args, cwd=ws.root)
    assert proc.returncode == 2, proc.stderr
    assert not ws.state.exists()


@pytest.mark.parametrize("command", ["plan", "graph", "status", "explain", "validate"])
def test_every_command_refuses_bad_config(ws, command):
    case = CASES[[c.id for c in CASES].index("unknown-component-key")]
    setup(ws, case)
    args = ("//api:dev", "command/build") if command == "explain" else ("//api:dev",)
    assert_refused(ws, (command, *args), where=case.where, says=case.says)


def test_validate_refuses_the_same_inputs(ws):
    """`validate` with no label checks every package and target."""
    setup(ws, Case("cycle", CYCLE3))
    assert_refused(ws, ("validate",), says=("dependency cycle",))


@pytest.mark.parametrize("case_id, shown", [
    ("unknown-component-key", "deployment.yaml"),  # below the user: relative to them
    ("both-front-ends", "BUILD.atmos"),
    ("unknown-settings-key", "{root}/atmos.yaml"),  # above the user: absolute
])
def test_messages_name_the_file_as_seen_from_where_the_user_stands(ws, case_id, shown):
    """`file:line:col` must open from the user's shell, wherever they stand."""
    case = CASES[[c.id for c in CASES].index(case_id)]
    setup(ws, case)
    proc = assert_refused(ws, ("plan", "//api:dev"), cwd=ws.root / "api")
    assert proc.stderr.startswith(f"error: {shown.format(root=ws.root)}:"), proc.stderr


def test_bad_dsl_is_refused_with_its_position(ws):
    pytest.importorskip("atmosbuild.config.dsl", reason="the DSL front end is not written yet")
    ws.write("api/BUILD.atmos", 'deployment "api" {\n  target "dev" {}\n  vars { region = }\n}\n')
    proc = assert_refused(ws, ("plan", "//api:dev"))
    assert re.match(r"error: api/BUILD\.atmos:3:\d+:", proc.stderr), proc.stderr


def test_duplicate_component_in_the_dsl_is_refused(ws):
    pytest.importorskip("atmosbuild.config.dsl", reason="the DSL front end is not written yet")
    ws.write("api/BUILD.atmos", 'deployment "api" {\n  target "dev" {}\n'
             '  command "a" { run = ["echo"] }\n  command "a" { run = ["true"] }\n}\n')
    proc = assert_refused(ws, ("plan", "//api:dev"))
    assert re.match(r"error: api/BUILD\.atmos:4:\d+:", proc.stderr), proc.stderr
    assert "command/a" in proc.stderr or "'a'" in proc.stderr
