"""The YAML front end and the deployment model (SPEC 1, 2): what a file
compiles to, what it is refused for, how packages, labels and patterns are
found and named."""

from __future__ import annotations

import json
import textwrap

import pytest

from atmosbuild.components import TYPES
from atmosbuild.config.labels import Label, Pattern, parse_label
from atmosbuild.config.model import compile_document
from atmosbuild.config.workspace import (discover_packages, expand, find_root, load_package,
                                         load_settings)
from atmosbuild.config.yaml import parse_yaml
from atmosbuild.errors import ConfigError, UsageError

SPEC_EXAMPLE = """\
deployment:
  name: api                          # optional
  description: "API service"         # optional
  labels: {team: backend}            # optional, string->string
  vars: {region: us-east-1}          # defaults for every component and target
  env: {TF_IN_AUTOMATION: "1"}       # env for every component
  targets:
    dev:
      vars: {replicas: 1}
    prod:
      vars: {replicas: 4}
      components:                    # per-target overrides, same shape as below
        terraform:
          ecs/service-api: {vars: {cpu: 1024}}
  components:
    terraform:
      ecr/api:
        source: components/terraform/ecr   # dir relative to the root
        vars: {name: api}
        metadata: {depends_on: []}
      ecs/service-api:
        source: components/terraform/ecs
    nixpack:
      api:
        source: services/api
        metadata: {depends_on: [terraform/ecr/api]}
    command:
      smoke:
        run: ["./smoke.sh", "${target}"]   # argv list; a string runs under `sh -c`
        inputs: ["tests/smoke/**"]          # extra globs hashed into the key
        cache: false                         # always runs
        timeout: 300                         # seconds
        retries: 1
        enabled: true
        sensitive: [db_password]             # masked in output, never stored in clear
        metadata: {depends_on: [terraform/ecs/service-api]}
"""


def compile_yaml(text: str, package: str = "api", default_name: str = "api"):
    return compile_document(parse_yaml(textwrap.dedent(text), "deployment.yaml"), package, default_name, TYPES)


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_yaml(text)
    return info.value


# -- YAML -> model -------------------------------------------------------------------

def test_the_spec_example_compiles_to_the_model():
    spec = compile_yaml(SPEC_EXAMPLE)
    assert (spec.name, spec.package, spec.description) == ("api", "api", "API service")
    assert spec.labels == {"team": "backend"}
    assert spec.vars == {"region": "us-east-1"} and spec.env == {"TF_IN_AUTOMATION": "1"}
    assert list(spec.targets) == ["dev", "prod"]
    assert spec.targets["prod"].vars == {"replicas": 4}
    assert spec.targets["prod"].overrides == {"terraform/ecs/service-api": {"vars": {"cpu": 1024}}}
    # components by id TYPE/NAME, in the order the file lists them
    assert list(spec.components) == ["terraform/ecr/api", "terraform/ecs/service-api", "nixpack/api",
                                     "command/smoke"]
    smoke = spec.components["command/smoke"]
    assert (smoke.type, smoke.name) == ("command", "smoke")
    assert smoke.fields["cache"] is False and smoke.fields["timeout"] == 300
    assert smoke.fields["metadata"] == {"depends_on": ["terraform/ecs/service-api"]}


def test_a_yaml_and_a_dsl_file_compile_to_the_same_model():
    dsl = pytest.importorskip("atmosbuild.config.dsl", reason="the DSL front end is not written yet")
    text = """\
deployment "api" {
  description = "API service"
  labels { team = "backend" }
  vars { region = "us-east-1" }
  env { TF_IN_AUTOMATION = "1" }
  target "dev" { vars { replicas = 1 } }
  target "prod" {
    vars { replicas = 4 }
    terraform "ecs/service-api" { vars { cpu = 1024 } }
  }
  terraform "ecr/api" {
    source = "components/terraform/ecr"
    vars { name = "api" }
    depends_on = []
  }
  terraform "ecs/service-api" { source = "components/terraform/ecs" }
  nixpack "api" {
    source = "services/api"
    depends_on = ["terraform/ecr/api"]
  }
  command "smoke" {
    run = ["./smoke.sh", "${target}"]
    inputs = ["tests/smoke/**"]
    cache = false
    timeout = 300
    retries = 1
    enabled = true
    sensitive = ["db_password"]
    depends_on = ["terraform/ecs/service-api"]
  }
}
"""
    from_dsl = compile_document(dsl.parse_dsl(text, "BUILD.atmos"), "api", "api", TYPES)
    from_yaml = compile_yaml(SPEC_EXAMPLE)
    for attr in ("name", "description", "labels", "vars", "env", "targets", "components"):
        assert getattr(from_dsl, attr) == getattr(from_yaml, attr), attr


def test_yaml_anchors_and_merge_keys_work_and_dates_stay_text():
    spec = compile_yaml("""\
        deployment:
          vars: {released: 2024-01-31, version: "1.10"}
          targets: {dev: {}}
          components:
            command:
              base: &base {run: [echo], timeout: 60, vars: {tier: web}}
              copy: {<<: *base, retries: 2}
        """)
    assert spec.components["command/copy"].fields == {"run": ["echo"], "timeout": 60, "vars": {"tier": "web"},
                                                     "retries": 2}
    assert spec.vars == {"released": "2024-01-31", "version": "1.10"}


def test_an_empty_file_is_refused():
    err = refused("")
    assert "no deployment" in err.message


def test_a_yaml_boolean_where_a_name_belongs_gets_a_hint():
    err = refused("""\
        deployment:
          targets: {dev: {}}
          components:
            command:
              on: {run: [echo]}
        """)
    assert "keys must be strings" in err.message and "quote the name" in err.message


@pytest.mark.parametrize("field, says", [
    ("timeout: -1", "timeout must be a positive number"),
    ("timeout: true", "timeout must be a positive number"),
    ("retries: 1.5", "retries must be a whole number"),
    ("retries: -1", "retries must be a whole number"),
    ("cache: 'no'", "cache must be true or false"),
    ("enabled: 1", "enabled must be true or false"),
    ("run: []", "run must not be empty"),
    ("run: '  '", "run must be a list of arguments or a non-empty string"),
    ("run: [echo, {a: 1}]", "each argument must be a string or number"),
    ("inputs: 'src/**'", "inputs must be a list of strings"),
    ("sensitive: [1]", "sensitive must be a list of strings"),
    ("vars: [a, b]", "vars must be a map"),
    ("env: {A: {b: 1}}", "'A' must be a string, number or boolean"),
    ("source: [a]", "source must be a string"),
    ("metadata: {depends_on: command/a}", "depends_on must be a list"),
])
def test_bad_field_values_are_refused_at_their_key(field, says):
    text = f"""\
        deployment:
          targets: {{dev: {{}}}}
          components:
            command:
              a: {{run: [echo]}}
              c:
                {field}
        """
    err = refused(text)
    assert says in err.message
    # at the key, or deeper at the offending item
    assert (err.file, err.line) == ("deployment.yaml", 7) and err.col >= 9
    assert err.context and err.context[-1].strip() == "^"


@pytest.mark.parametrize("deployment, says", [
    ("labels: {team: 1}", "label 'team' must be a string"),
    ("name: 'a b'", "bad deployment name"),
    ("name: 7", "deployment name must be a string"),
    ("description: [x]", "description must be a string"),
    ("targets: {'dev prod': {}}", "bad target name 'dev prod'"),
    ("targets: {dev: {components: {command: {ghost: {}}}}}", "overrides unknown component 'command/ghost'"),
])
def test_bad_deployment_values_are_refused(deployment, says):
    err = refused(f"""\
        deployment:
          {deployment}
          components: {{command: {{c: {{run: [echo]}}}}}}
        """)
    assert says in err.message and err.line == 2


# -- names ----------------------------------------------------------------------------

def test_the_deployment_is_named_after_its_package_unless_named(tmp_path):
    root = tmp_path / "shop"
    for rel, body in {"deployment.yaml": "deployment: {}\n",
                      "api/deployment.yaml": "deployment: {}\n",
                      "services/web/deployment.yaml": "deployment: {}\n",
                      "named/deployment.yaml": "deployment: {name: storefront}\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    assert load_package(str(root), "", TYPES).name == "shop"
    assert load_package(str(root), "api", TYPES).name == "api"
    assert load_package(str(root), "services/web", TYPES).name == "services/web"
    assert load_package(str(root), "named", TYPES).name == "storefront"


def test_the_root_package_works_from_the_cli(ws):
    ws.write("deployment.yaml", """\
        deployment:
          targets: {ci: {}}
          components: {command: {lint: {run: [echo, "${deployment}"]}}}
        """)
    proc = ws.run("graph", "//:ci", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["label"], data["deployment"], data["target"]) == ("//:ci", "ws", "ci")


# -- labels and patterns -------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("//api:dev", Label("api", "dev")),
    ("//services/web:prod-eu.1", Label("services/web", "prod-eu.1")),
    ("//:ci", Label("", "ci")),
    ("//...:dev", Pattern("", "dev")),
    ("//infra/...:dev", Pattern("infra", "dev")),
    ("//a/b/...:x_y", Pattern("a/b", "x_y")),
])
def test_labels_and_patterns_parse(text, parsed):
    assert parse_label(text) == parsed
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["api:dev", "//api", "//api:", "/api:dev", "//a pi:dev", "//api:d$v",
                                  "//../api:dev", "//./api:dev", "///api:dev", "//api/:dev", "//a/.../b:dev",
                                  "//....:dev", ""])
def test_bad_labels_are_usage_errors(text):
    with pytest.raises(UsageError, match="bad label"):
        parse_label(text)


def test_a_pattern_is_refused_where_one_label_is_needed():
    with pytest.raises(UsageError, match="not a pattern"):
        parse_label("//...:dev", allow_pattern=False)


def test_a_pattern_prefix_matches_whole_path_segments():
    infra = Pattern("infra", "dev")
    assert infra.matches("infra") and infra.matches("infra/net") and infra.matches("infra/net/vpc")
    assert not infra.matches("infrastructure") and not infra.matches("app/infra")
    assert Pattern("", "dev").matches("anything/at/all")


@pytest.fixture
def tree(tmp_path):
    """A workspace with packages at many depths, and some where none may be found."""
    root = tmp_path / "repo"
    files = {
        "atmos.yaml": "{}\n",
        "deployment.yaml": "deployment: {targets: {ci: {}}}\n",
        "api/deployment.yaml": "deployment: {targets: {dev: {}, prod: {}}}\n",
        "infra/net/deployment.yaml": "deployment: {targets: {dev: {}}}\n",
        "infra/db/deployment.yaml": "deployment: {targets: {prod: {}}}\n",
        "infrastructure/deployment.yaml": "deployment: {targets: {dev: {}}}\n",
        "infra/net/modules/readme.txt": "not a package\n",
        # never packages: VCS data, our state, dependency trees, hidden dirs
        ".git/deployment.yaml": "deployment: {targets: {dev: {}}}\n",
        ".atmos/vendor-cache/x/deployment.yaml": "deployment: {targets: {dev: {}}}\n",
        "web/node_modules/pkg/deployment.yaml": "deployment: {targets: {dev: {}}}\n",
        "api/.terraform/modules/deployment.yaml": "deployment: {targets: {dev: {}}}\n",
        ".hidden/deployment.yaml": "deployment: {targets: {dev: {}}}\n",
    }
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    return root


def test_package_discovery_skips_vcs_state_and_dependency_dirs(tree):
    assert discover_packages(str(tree)) == ["", "api", "infra/db", "infra/net", "infrastructure"]
    assert discover_packages(str(tree), "infra") == ["infra/db", "infra/net"]


def test_patterns_expand_to_the_packages_having_the_target(tree):
    root = str(tree)
    assert expand(root, [parse_label("//...:dev")], TYPES) == [
        Label("api", "dev"), Label("infra/net", "dev"), Label("infrastructure", "dev")]
    assert expand(root, [parse_label("//infra/...:dev")], TYPES) == [Label("infra/net", "dev")]
    assert expand(root, [parse_label("//...:ci")], TYPES) == [Label("", "ci")]
    # labels keep their order, and each appears once
    assert expand(root, [parse_label("//api:prod"), parse_label("//...:prod"), parse_label("//api:dev")], TYPES) == [
        Label("api", "prod"), Label("infra/db", "prod"), Label("api", "dev")]
    with pytest.raises(UsageError, match="matches no package"):
        expand(root, [parse_label("//infra/...:staging")], TYPES)


def test_patterns_from_the_cli(tree):
    from conftest import run_cli

    proc = run_cli("validate", "//...:dev", cwd=tree / "infra" / "net")  # root found upwards
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "ok //api: deployment 'api', 0 components, targets dev",
        "ok //infra/net: deployment 'infra/net', 0 components, targets dev",
        "ok //infrastructure: deployment 'infrastructure', 0 components, targets dev",
    ]


# -- the workspace root and its settings ------------------------------------------------

def test_the_root_is_the_nearest_atmos_yaml_else_the_current_directory(tree, tmp_path):
    assert find_root(None, str(tree / "infra" / "net" / "modules")) == str(tree)
    assert find_root(str(tree / "api"), str(tmp_path)) == str(tree / "api")  # -C wins
    lonely = tmp_path / "lonely" / "dir"
    lonely.mkdir(parents=True)
    assert find_root(None, str(lonely)) == str(lonely)
    with pytest.raises(UsageError, match="not a directory"):
        find_root(str(tmp_path / "missing"))


def test_settings_are_read_and_checked(tmp_path):
    (tmp_path / "atmos.yaml").write_text(
        "parallelism: 3\nschedule: eager\nkeep_going: true\ntoolchain: {terraform: tofu}\nstate_dir: .state\n")
    s = load_settings(str(tmp_path))
    assert (s.parallelism, s.schedule, s.keep_going, dict(s.toolchain), s.state_dir) == (
        3, "eager", True, {"terraform": "tofu"}, ".state")
    for bad, says in [("parallelism: 0", "parallelism"), ("schedule: fast", "schedule must be"),
                      ("keep_going: maybe", "keep_going"), ("toolchain: {terraform: 1}", "toolchain.terraform"),
                      ("state_dir: ''", "state_dir"), ("[1, 2]", "map of settings")]:
        (tmp_path / "atmos.yaml").write_text(bad + "\n")
        with pytest.raises(ConfigError, match=says):
            load_settings(str(tmp_path))


def test_a_directory_with_its_own_atmos_yaml_is_another_workspace(tree):
    """Like a nested WORKSPACE to Bazel: `//...` does not reach into it."""
    (tree / "vendor-ws" / "svc").mkdir(parents=True)
    (tree / "vendor-ws" / "atmos.yaml").write_text("{}\n")
    (tree / "vendor-ws" / "svc" / "deployment.yaml").write_text("deployment: {targets: {dev: {}}}\n")
    assert "vendor-ws/svc" not in discover_packages(str(tree))
    assert Label("vendor-ws/svc", "dev") not in expand(str(tree), [parse_label("//...:dev")], TYPES)
