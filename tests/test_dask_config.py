"""The executor setting and component `resources`, without a cluster:
validation with positions, YAML and DSL alike, fmt/convert, and that
resources say where an action runs, not what it does (not in the key)."""

from __future__ import annotations

import json
import textwrap

import pytest

from atmosbuild.components import TYPES
from atmosbuild.config.dsl import parse_dsl
from atmosbuild.config.model import compile_document
from atmosbuild.config.resolve import resolve_target
from atmosbuild.config.yaml import parse_yaml
from atmosbuild.errors import ConfigError
from conftest import rollout_with_report

YAML = textwrap.dedent("""\
    deployment:
      targets:
        dev: {}
      components:
        terraform:
          net:
            resources: {terraform: 1, memory_gb: 2.5}
""")
DSL = textwrap.dedent("""\
    deployment {
      target "dev" {}

      terraform "net" {
        resources {
          terraform = 1
          memory_gb = 2.5
        }
      }
    }
""")


def test_resources_are_the_same_in_yaml_and_the_dsl():
    from_yaml, from_dsl = parse_yaml(YAML, "d.yaml"), parse_dsl(DSL, "BUILD.atmos")
    assert from_yaml.data == from_dsl.data
    spec = compile_document(from_dsl, "", "x", TYPES)
    assert resolve_target(spec, "dev")["terraform/net"].resources == {"terraform": 1, "memory_gb": 2.5}


def test_a_target_override_replaces_the_resources():
    text = YAML.replace("    dev: {}\n", "    dev: {}\n    prod:\n      components:\n"
                        "        terraform:\n          net: {resources: {big: 1}}\n")
    spec = compile_document(parse_yaml(text, "d.yaml"), "", "x", TYPES)
    assert resolve_target(spec, "prod")["terraform/net"].resources == {"big": 1}
    assert resolve_target(spec, "dev")["terraform/net"].resources == {"terraform": 1, "memory_gb": 2.5}


@pytest.mark.parametrize("value, message", [
    ("[terraform]", "resources must be a map"),
    ("{terraform: 0}", "'terraform' must be a positive number"),
    ("{terraform: true}", "'terraform' must be a positive number"),
    ("{terraform: one}", "'terraform' must be a positive number"),
    ('{"a=b": 1}', "bad resource name 'a=b'"),
])
def test_bad_resources_are_an_error_at_their_position(value, message):
    text = YAML.replace("{terraform: 1, memory_gb: 2.5}", value)
    with pytest.raises(ConfigError) as err:
        compile_document(parse_yaml(text, "d.yaml"), "", "x", TYPES)
    assert message in err.value.message
    assert err.value.file == "d.yaml" and err.value.line == 7


def test_fmt_and_convert_keep_resources(ws):
    ws.write("app/BUILD.atmos", DSL)
    assert ws.run("fmt", "--check", str(ws.root / "app/BUILD.atmos")).returncode == 0
    to_yaml = ws.run("convert", str(ws.root / "app/BUILD.atmos"), "--to", "yaml")
    assert to_yaml.returncode == 0, to_yaml.stderr
    assert parse_yaml(to_yaml.stdout, "y").data == parse_dsl(DSL, "B").data
    ws.write("app2/deployment.yaml", to_yaml.stdout)
    back = ws.run("convert", str(ws.root / "app2/deployment.yaml"), "--to", "dsl")
    assert back.stdout == DSL


def test_resources_do_not_enter_the_action_key(ws):
    # (The local executor runs everything here: resources only route Dask tasks.)
    def write(resources):
        ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
            "command": {"a": {"run": "echo ran-a", "resources": resources}}}}}))

    write({"terraform": 1})
    first, report = rollout_with_report(ws, "//app:dev")
    assert first.returncode == 0 and "ran-a" in first.stdout
    assert report["nodes"][0]["worker"] == "local"
    write({"terraform": 2, "gpu": 1})
    second = ws.run("rollout", "//app:dev")
    assert second.returncode == 0 and "ran-a" not in second.stdout and "cached" in second.stdout


def test_a_bad_executor_setting_is_an_error_at_its_position(ws):
    ws.write("atmos.yaml", "parallelism: 2\nexecutor: dask:/host\n")
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"a": {"run": "true"}}}}}))
    before = ws.snapshot_tree()
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "atmos.yaml:2:" in proc.stderr.splitlines()[0]
    assert "executor must be 'local' or 'dask://HOST:PORT'" in proc.stderr
    assert ws.snapshot_tree() == before


@pytest.mark.parametrize("value", ["dask://", "dask://host", "tcp://h:1", "dask://h:99999", "local "])
def test_a_bad_atmos_executor_is_one_error_line(ws, value):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"a": {"run": "true"}}}}}))
    proc = ws.run("rollout", "//app:dev", env={"ATMOS_EXECUTOR": value})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: $ATMOS_EXECUTOR: executor must be 'local' or 'dask://HOST:PORT' (a Dask scheduler), got {value!r}"]


def test_atmos_executor_local_overrides_the_setting(ws):
    ws.write("atmos.yaml", "executor: dask://127.0.0.1:1\n")
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"a": {"run": "echo here"}}}}}))
    proc = ws.run("rollout", "//app:dev", env={"ATMOS_EXECUTOR": "local"})
    assert proc.returncode == 0 and "here" in proc.stdout
