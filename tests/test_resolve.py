"""Resolving a deployment at a target (SPEC 2): var and env precedence,
interpolation, `${outputs...}` references, disabled components, per-target
overrides. Inline deployment text in, resolved components out; one story at
the end runs the real CLI to prove the shell sees what the user meant."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atmosbuild.components import TYPES
from atmosbuild.config.document import Document
from atmosbuild.config.model import compile_document
from atmosbuild.config.resolve import RenderError, render, resolve_target
from atmosbuild.config.yaml import parse_yaml
from atmosbuild.errors import ConfigError


def spec_of(text: str, name: str = "api"):
    return compile_document(parse_yaml(textwrap.dedent(text), "api/deployment.yaml"), "api", name, TYPES)


def resolve(text: str, target: str = "dev", name: str = "api"):
    spec = spec_of(text, name)
    return spec, resolve_target(spec, target)


def refused(text: str, target: str = "dev") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve(text, target)
    return info.value


# -- precedence --------------------------------------------------------------------

LAYERS = """\
deployment:
  vars:
    region: eu-west-1
    replicas: 1
    tags: {team: core, tier: web}
    zones: [a, b, c]
    only_deployment: yes-d
  env: {LOG: info, MODE: base, ONLY_D: d}
  targets:
    dev:
      vars: {replicas: 2, tags: {env: dev}, zones: [a]}
      env: {MODE: target}
    prod:
      vars: {replicas: 4}
      components:
        command:
          web:
            vars: {replicas: 8, tags: {tier: edge}}
            env: {MODE: override}
  components:
    command:
      web:
        run: [echo]
        vars: {replicas: 3, tags: {owner: web}, zones: [z]}
        env: {LOG: debug}
      other:
        run: [echo]
"""


def test_precedence_deployment_target_component_override():
    _, dev = resolve(LAYERS, "dev")
    _, prod = resolve(LAYERS, "prod")
    # component vars beat target vars, which beat deployment vars
    assert dev["command/web"].vars["replicas"] == 3
    assert dev["command/other"].vars["replicas"] == 2
    # the per-target override beats everything
    assert prod["command/web"].vars["replicas"] == 8
    assert prod["command/other"].vars["replicas"] == 4
    # maps merge deeply, key by key, at every level
    assert dev["command/web"].vars["tags"] == {"team": "core", "tier": "web", "env": "dev", "owner": "web"}
    assert prod["command/web"].vars["tags"] == {"team": "core", "tier": "edge", "owner": "web"}
    # lists replace (no concatenation, no element merge)
    assert dev["command/web"].vars["zones"] == ["z"]
    assert dev["command/other"].vars["zones"] == ["a"]
    assert prod["command/other"].vars["zones"] == ["a", "b", "c"]
    # untouched deployment vars reach every component
    assert {c.vars["only_deployment"] for c in (*dev.values(), *prod.values())} == {"yes-d"}


def test_env_follows_the_same_precedence():
    _, dev = resolve(LAYERS, "dev")
    _, prod = resolve(LAYERS, "prod")
    assert dict(dev["command/web"].env) == {"LOG": "debug", "MODE": "target", "ONLY_D": "d"}
    assert dict(dev["command/other"].env) == {"LOG": "info", "MODE": "target", "ONLY_D": "d"}
    assert dict(prod["command/web"].env) == {"LOG": "debug", "MODE": "override", "ONLY_D": "d"}
    assert dict(prod["command/other"].env) == {"LOG": "info", "MODE": "base", "ONLY_D": "d"}


def test_a_map_replaces_a_scalar_and_a_scalar_replaces_a_map():
    _, r = resolve("""\
        deployment:
          vars: {db: {host: h, port: 1}, flag: plain}
          targets: {dev: {vars: {db: none}}}
          components:
            command:
              c: {run: [echo], vars: {flag: {nested: true}}}
        """)
    assert r["command/c"].vars["db"] == "none"
    assert r["command/c"].vars["flag"] == {"nested": True}


# The property: for random nested maps at the four layers, every leaf of the
# result comes from the highest layer that defines that path, and every leaf
# of a layer survives unless a higher layer defines the same path or replaces
# one of its ancestors with a non-map.
_keys = st.sampled_from(["a", "b", "c", "d"])
_scalars = st.one_of(st.integers(-5, 5), st.booleans(), st.text("xyz ", max_size=3),
                     st.lists(st.integers(0, 3), max_size=2))
_trees = st.recursive(_scalars, lambda inner: st.dictionaries(_keys, inner, min_size=1, max_size=3),
                      max_leaves=8)
_layer = st.dictionaries(_keys, _trees, max_size=4)
_env_layer = st.dictionaries(st.sampled_from(["A", "B", "C"]), st.text("xyz", max_size=2), max_size=3)


def _leaves(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _get(tree, path):
    for step in path:
        if not isinstance(tree, dict) or step not in tree:
            return KeyError
        tree = tree[step]
    return tree


@settings(max_examples=100, deadline=None)
@given(layers=st.lists(_layer, min_size=4, max_size=4), envs=st.lists(_env_layer, min_size=4, max_size=4))
def test_merging_obeys_the_precedence_order(layers, envs):
    deployment_vars, target_vars, component_vars, override_vars = layers
    data = {"deployment": {
        "vars": deployment_vars, "env": envs[0],
        "targets": {"dev": {"vars": target_vars, "env": envs[1], "components": {
            "command": {"c": {"vars": override_vars, "env": envs[3]}}}}},
        "components": {"command": {"c": {"run": ["true"], "vars": component_vars, "env": envs[2]}}},
    }}
    spec = compile_document(Document(data=data, file="generated"), "p", "p", TYPES)
    comp = resolve_target(spec, "dev")["command/c"]
    lowest_first = [deployment_vars, target_vars, component_vars, override_vars]

    result = _leaves(comp.vars)
    for path, value in result.items():
        defined = [layer for layer in lowest_first if _get(layer, path) is not KeyError]
        assert defined, f"{path} appears from nowhere"
        assert value == _get(defined[-1], path)
    for i, layer in enumerate(lowest_first):
        for path, value in _leaves(layer).items():
            higher = lowest_first[i + 1:]
            replaced = any(_get(h, path) is not KeyError or any(
                               not isinstance(_get(h, path[:n]), dict) and _get(h, path[:n]) is not KeyError
                               for n in range(1, len(path))) for h in higher)
            assert replaced or path in result
    assert set(comp.vars) == set().union(*lowest_first)

    expected_env = {}
    for env in envs:
        expected_env.update(env)
    assert dict(comp.env) == expected_env


# -- interpolation ----------------------------------------------------------------

def test_target_deployment_and_dotted_vars():
    _, r = resolve("""\
        deployment:
          name: shop
          vars: {db: {primary: {host: db1}}, region: eu}
          targets: {dev: {}}
          components:
            command:
              c:
                run: ["deploy", "${target}", "${deployment}", "${var.db.primary.host}"]
                env: {WHERE: "${deployment}-${target}-${var.region}"}
        """)
    c = r["command/c"]
    assert c.run == ("deploy", "dev", "shop", "db1")
    assert c.env["WHERE"] == "shop-dev-eu"


def test_deployment_defaults_to_the_package_name():
    _, r = resolve("""\
        deployment:
          targets: {dev: {}}
          components: {command: {c: {run: ["${deployment}"]}}}
        """, name="services/web")
    assert r["command/c"].run == ("services/web",)


def test_vars_may_refer_to_vars_at_any_layer():
    _, r = resolve("""\
        deployment:
          vars: {prefix: "${var.service}-${target}", url: "https://${var.prefix}.example"}
          targets: {dev: {vars: {service: api}}}
          components:
            command:
              c: {run: [echo, "${var.url}"], vars: {service: web}}
        """)
    assert r["command/c"].vars["url"] == "https://web-dev.example"
    assert r["command/c"].run == ("echo", "https://web-dev.example")


@pytest.mark.parametrize("vars_, chain", [
    ('{a: "${var.b}", b: "${var.a}"}', "a -> b -> a"),
    ('{a: "x${var.a}"}', "a -> a"),
    ('{a: "${var.b}", b: {deep: "${var.c}"}, c: "${var.a}"}', "a -> b -> c -> a"),
])
def test_var_cycles_are_refused_naming_the_cycle(vars_, chain):
    err = refused(f"""\
        deployment:
          vars: {vars_}
          targets: {{dev: {{}}}}
          components: {{command: {{c: {{run: [echo]}}}}}}
        """)
    assert "cycle" in err.message and chain in err.message
    assert (err.file, err.line) == ("api/deployment.yaml", 2)


def test_a_whole_string_var_reference_keeps_the_type():
    _, r = resolve("""\
        deployment:
          vars: {n: 3, yes_: true, tags: {a: 1}, zones: [x, y], none: null}
          targets: {dev: {}}
          components:
            command:
              c:
                run: [echo, "n=${var.n} on=${var.yes_} tags=${var.tags}"]
                vars:
                  n2: "${var.n}"
                  on2: "${var.yes_}"
                  tags2: "${var.tags}"
                  zones2: "${var.zones}"
                  first: "${var.zones}"
                  text: "${var.n}${var.n}"
                  spaced: " ${var.n}"
        """)
    v = r["command/c"].vars
    assert (v["n2"], v["on2"], v["tags2"], v["zones2"]) == (3, True, {"a": 1}, ["x", "y"])
    # inside a longer string the value becomes text: numbers as written,
    # booleans as true/false, maps and lists as JSON
    assert (v["text"], v["spaced"]) == ("33", " 3")
    assert r["command/c"].run == ("echo", 'n=3 on=true tags={"a":1}')


def test_a_literal_dollar_brace_survives_until_render():
    spec, r = resolve("""\
        deployment:
          vars: {tmpl: "$${HOME}/x", ref: "$${var.tmpl}"}
          targets: {dev: {}}
          components:
            command:
              c:
                run: [echo, "$${target}", "${var.tmpl}"]
                env: {T: "pre-$${X}-${target}"}
        """)
    c = r["command/c"]
    # The key hashes the template as written: escapes are not yet undone...
    assert c.vars == {"tmpl": "$${HOME}/x", "ref": "$${var.tmpl}"}
    assert c.run == ("echo", "$${target}", "$${HOME}/x")
    assert c.env["T"] == "pre-$${X}-dev"
    # ...and render(), just before running, turns `$${` into a literal `${`.
    assert render(c.run, {}, spec.components) == ("echo", "${target}", "${HOME}/x")
    assert render(dict(c.env), {}, spec.components) == {"T": "pre-${X}-dev"}
    assert render(dict(c.vars), {}, spec.components) == {"tmpl": "${HOME}/x", "ref": "${var.tmpl}"}


TRICKY = "it's a \"test\" $(touch pwned) `id` $HOME; exit 7 && echo *"


def test_a_string_run_passes_every_interpolated_value_through_the_environment(tmp_path):
    spec, r = resolve(f"""\
        deployment:
          vars: {{msg: {json.dumps(TRICKY)}, empty: ""}}
          targets: {{dev: {{}}}}
          components:
            command:
              up: {{run: [echo]}}
              c:
                vars: {{from_up: "v=${{outputs.command/up.value}}!"}}
                run: "printf '<%s>\\\\n' ${{var.msg}} ${{target}} ${{var.empty}} ${{outputs.command/up.value}} ${{var.from_up}} $${{LIT}}"
        """)
    c = r["command/c"]
    assert isinstance(c.run, str)
    # No value is in the shell text: only quoted expansions of ATMOS_V_n.
    assert TRICKY not in c.run and "touch" not in c.run
    outputs = {"command/up": {"value": TRICKY}}
    rendered = render(c.run, outputs, spec.components)
    values = render(dict(c.run_env), outputs, spec.components)
    proc = subprocess.run(["sh", "-c", rendered], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "LIT": "lit", **values})
    assert proc.returncode == 0, proc.stderr
    # Each value arrives as exactly one argument, byte for byte.
    assert proc.stdout.splitlines() == [f"<{TRICKY}>", "<dev>", "<>", f"<{TRICKY}>", f"<v={TRICKY}!>", "<lit>"]
    assert not (tmp_path / "pwned").exists()


def test_a_list_run_is_never_quoted():
    _, r = resolve("""\
        deployment:
          vars: {msg: "a b 'c'"}
          targets: {dev: {}}
          components: {command: {c: {run: [echo, "${var.msg}", "x ${var.msg}"]}}}
        """)
    assert r["command/c"].run == ("echo", "a b 'c'", "x a b 'c'")


# -- ${outputs...} ------------------------------------------------------------------

OUTPUTS = """\
deployment:
  targets: {dev: {}}
  components:
    terraform:
      ecr/api: {source: infra}
    command:
      v1.2: {run: [echo]}
      deploy:
        vars: {image: "${outputs.terraform/ecr/api.repository_url}:latest", port: "${outputs.command/v1.2.port}"}
        env: {URL: "${outputs.terraform/ecr/api.repository_url}"}
        run: [deploy, "--tag", "${outputs.command/v1.2.tag.name}"]
"""


def test_outputs_references_are_kept_and_imply_dependencies():
    spec, r = resolve(OUTPUTS)
    d = r["command/deploy"]
    # kept verbatim: the value only exists once the upstream has run
    assert d.vars["image"] == "${outputs.terraform/ecr/api.repository_url}:latest"
    assert d.env["URL"] == "${outputs.terraform/ecr/api.repository_url}"
    # each reference is a dependency, though depends_on names none; a dotted
    # component name is matched whole (the longest known id wins)
    assert d.depends_on == ("command/v1.2", "terraform/ecr/api")
    assert set(d.output_refs) == {("terraform/ecr/api", "repository_url"), ("command/v1.2", "port"),
                                  ("command/v1.2", "tag.name")}
    outputs = {"terraform/ecr/api": {"repository_url": "r.example/api"},
               "command/v1.2": {"port": 8080, "tag": {"name": "v7"}}}
    assert render(dict(d.vars), outputs, spec.components) == {"image": "r.example/api:latest", "port": 8080}
    assert render(d.run, outputs, spec.components) == ("deploy", "--tag", "v7")
    with pytest.raises(RenderError, match="no output 'repository_url'"):
        render(dict(d.env), {"terraform/ecr/api": {"url": "x"}}, spec.components)


@pytest.mark.parametrize("ref, says", [
    ("${outputs.command/nope.x}", "does not name a component"),
    ("${outputs.command/c.x}", "its own outputs"),
    ("${outputs.command/disabled.x}", "disabled at target 'dev'"),
    ("${outputs.command/up}", "does not name a component"),
    ("${output.command/up.x}", "unknown reference"),
    ("${targets}", "unknown reference"),
    ("${var.nope}", "unknown var 'nope'"),
    ("${var.m.nope}", "unknown var 'm.nope'"),
    ("${var.}", "unknown var"),
])
def test_bad_references_are_refused(ref, says):
    err = refused(f"""\
        deployment:
          vars: {{m: {{k: 1}}}}
          targets: {{dev: {{components: {{command: {{disabled: {{enabled: false}}}}}}}}}}
          components:
            command:
              up: {{run: [echo]}}
              disabled: {{run: [echo]}}
              c: {{run: [echo, "{ref}"]}}
        """)
    assert says in err.message
    assert (err.line, err.col) == (8, 23)  # the argument itself


def test_an_error_points_at_the_layer_the_bad_value_comes_from():
    text = """\
        deployment:
          vars: {a: ok, broken: "${nope}"}
          targets:
            dev:
              vars: {b: ok}
          components:
            command:
              c: {run: [echo], vars: {c: ok}}
        """
    err = refused(text)
    assert (err.line, err.col) == (2, 17)  # `broken`, in the deployment's vars
    err = refused(text.replace('broken: "${nope}"', "z: 1").replace("{b: ok}", '{b: "${nope}"}'))
    assert (err.line, err.col) == (5, 14)  # `b`, in the target's vars
    err = refused(text.replace('broken: "${nope}"', "z: 1").replace("{c: ok}", '{c: "${nope}"}'))
    assert (err.line, err.col) == (8, 31)  # `c`, in the component's vars


# -- enabled, overrides ---------------------------------------------------------------

def test_disabled_components_vanish_per_target():
    text = """\
        deployment:
          targets:
            dev: {}
            prod:
              components:
                command:
                  debug: {enabled: false}
                  canary: {enabled: true}
          components:
            command:
              app: {run: [echo], metadata: {depends_on: [command/debug, command/canary]}}
              debug: {run: [echo]}
              canary: {run: [echo], enabled: false}
        """
    _, dev = resolve(text, "dev")
    _, prod = resolve(text, "prod")
    assert list(dev) == ["command/app", "command/debug"]
    assert list(prod) == ["command/app", "command/canary"]
    # a dependency on a disabled component is dropped, not an error
    assert dev["command/app"].depends_on == ("command/debug",)
    assert prod["command/app"].depends_on == ("command/canary",)


def test_per_target_overrides_replace_fields_and_merge_vars():
    text = """\
        deployment:
          targets:
            dev: {}
            prod:
              components:
                command:
                  app:
                    run: "deploy --prod ${var.size}"
                    source: src/prod
                    timeout: 900
                    retries: 2
                    cache: false
                    vars: {size: large}
                    metadata: {depends_on: []}
          components:
            command:
              base: {run: [echo]}
              app:
                source: src/dev
                run: [deploy, "${var.size}"]
                timeout: 60
                vars: {size: small, keep: me}
                metadata: {depends_on: [command/base]}
        """
    _, dev = resolve(text, "dev")
    _, prod = resolve(text, "prod")
    a, b = dev["command/app"], prod["command/app"]
    assert (a.run, a.source, a.timeout, a.retries, a.cache) == (("deploy", "small"), "src/dev", 60.0, 0, True)
    # (a string-form run carries its values in run_env, never in the shell text)
    assert (b.run, b.source, b.timeout, b.retries, b.cache) == (
        'deploy --prod "$${ATMOS_V_1}"', "src/prod", 900.0, 2, False)
    assert b.run_env == {"ATMOS_V_1": "large"}
    assert b.vars == {"size": "large", "keep": "me"}
    assert (a.depends_on, b.depends_on) == (("command/base",), ())


def test_source_is_interpolated_and_normalised():
    _, r = resolve("""\
        deployment:
          vars: {flavour: blue}
          targets: {dev: {}}
          components:
            command:
              c: {run: [echo], source: "./stacks/${var.flavour}/../${target}//x/"}
        """)
    assert r["command/c"].source == "stacks/dev/x"


def test_sensitive_values_are_marked_by_list_and_by_name():
    _, r = resolve("""\
        deployment:
          vars: {db_password: x, api_token: y, region: z, note: n}
          env: {AWS_SECRET_ACCESS_KEY: s}
          targets: {dev: {}}
          components:
            command:
              c: {run: [echo], sensitive: [note]}
        """)
    assert set(r["command/c"].sensitive) == {"db_password", "api_token", "note", "AWS_SECRET_ACCESS_KEY"}


def test_command_components_need_run():
    err = refused("""\
        deployment:
          targets: {dev: {}}
          components: {command: {c: {source: src}}}
        """)
    assert "no `run`" in err.message and err.line == 3


# -- the story, end to end ---------------------------------------------------------------

def test_the_shell_receives_values_and_upstream_outputs_verbatim(ws):
    """An upstream writes an awkward output; a string-form `run` downstream
    passes it, a var and a literal `${` to a script, each as one argument."""
    ws.write("app/deployment.yaml", f"""\
        deployment:
          vars: {{msg: {json.dumps(TRICKY)}}}
          targets: {{dev: {{}}}}
          components:
            command:
              up:
                run: ["python3", "-c", "import json, os; json.dump({{'v': os.environ['V']}}, open(os.environ['ATMOS_OUTPUTS'], 'w'))"]
                env: {{V: "${{var.msg}}"}}
              down:
                run: "printf '<%s>\\\\n' ${{outputs.command/up.v}} ${{var.msg}} '$${{x}}' > \\"$ATMOS_ROOT/out.txt\\""
        """)
    proc = ws.run("rollout", "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ws.root / "out.txt").read_text().splitlines() == [f"<{TRICKY}>", f"<{TRICKY}>", "<${x}>"]
    assert not list(ws.root.rglob("pwned"))
