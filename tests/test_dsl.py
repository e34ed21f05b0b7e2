"""The DSL front end: BUILD.atmos text in, the YAML-shaped document out.

Each test parses a small inline file and asserts the exact data (with exact
Python types), the position `locate` gives, or the error a user would see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atmosbuild.config.dsl import parse_dsl
from atmosbuild.errors import ConfigError


def parse(text: str) -> dict:
    return parse_dsl(text, "BUILD.atmos").data


def typed(value):
    """`value` with every scalar tagged by its type, so 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list", [typed(v) for v in value]]
    return (type(value).__name__, value)


def dep(body: str, name: str | None = None) -> dict:
    """Parse `body` inside a deployment block; return the deployment dict."""
    head = f'deployment "{name}"' if name else "deployment"
    return parse(f"{head} {{\n{body}\n}}\n")["deployment"]


def attr(value_text: str):
    """The value of `a = <value_text>`."""
    return dep(f"a = {value_text}")["a"]


# ---------------------------------------------------------------------------
# the SPEC example


SPEC_EXAMPLE = """\
deployment "api" {
  description = "API service"
  vars { region = "us-east-1" }

  target "dev" { vars { replicas = 1 } }
  target "prod" {
    vars { replicas = 4 }
    terraform "ecs/service-api" { vars { cpu = 1024 } }   # per-target override
  }

  terraform "ecr/api" {
    source = "components/terraform/ecr"
    vars { name = "api" }
  }
  nixpack "api" {
    source = "services/api"
    depends_on = ["terraform/ecr/api"]
  }
  command "smoke" {
    run = ["./smoke.sh", "${target}"]
    depends_on = ["terraform/ecs/service-api"]
    cache = false
  }
}
"""


def test_spec_example_compiles_to_the_yaml_shape():
    doc = parse_dsl(SPEC_EXAMPLE, "api/BUILD.atmos")
    assert doc.kind == "dsl"
    assert doc.file == "api/BUILD.atmos"
    assert doc.text == SPEC_EXAMPLE
    assert typed(doc.data) == typed({"deployment": {
        "name": "api",
        "description": "API service",
        "vars": {"region": "us-east-1"},
        "targets": {
            "dev": {"vars": {"replicas": 1}},
            "prod": {
                "vars": {"replicas": 4},
                "components": {"terraform": {"ecs/service-api": {"vars": {"cpu": 1024}}}},
            },
        },
        "components": {
            "terraform": {"ecr/api": {"source": "components/terraform/ecr", "vars": {"name": "api"}}},
            "nixpack": {"api": {"source": "services/api",
                                "metadata": {"depends_on": ["terraform/ecr/api"]}}},
            "command": {"smoke": {"run": ["./smoke.sh", "${target}"], "cache": False,
                                  "metadata": {"depends_on": ["terraform/ecs/service-api"]}}},
        },
    }})


# ---------------------------------------------------------------------------
# values


@pytest.mark.parametrize("text, expected", [
    ('"hello"', "hello"),
    ('""', ""),
    ('"unicode ü 😀 ✓"', "unicode ü 😀 ✓"),
    ('"tab\there"', "tab\there"),  # a raw tab is allowed
    ("0", 0),
    ("42", 42),
    ("-7", -7),
    ("123456789012345678901234567890", 123456789012345678901234567890),
    ("1.5", 1.5),
    ("-0.25", -0.25),
    ("1.0", 1.0),
    ("1e3", 1000.0),
    ("2.5E-3", 0.0025),
    ("-1e+2", -100.0),
    ("true", True),
    ("false", False),
    ("null", None),
])
def test_scalar_values_keep_their_exact_type(text, expected):
    assert typed(attr(text)) == typed(expected)


@pytest.mark.parametrize("text, expected", [
    (r'"say \"hi\""', 'say "hi"'),
    (r'"back\\slash"', "back\\slash"),
    (r'"line\nbreak"', "line\nbreak"),
    (r'"a\tb\rc"', "a\tb\rc"),
    (r'"\u00e9\u4e2d"', "é中"),
    (r'"\ud83d\ude00"', "😀"),  # a surrogate pair is one character
    (r'"\\n is not a newline"', "\\n is not a newline"),
])
def test_string_escapes(text, expected):
    assert attr(text) == expected


@pytest.mark.parametrize("text", [
    '"a${var.x}"', '"${target}-${deployment}"', '"$${not.interpolated}"',
    '"${outputs.terraform/ecr/api.url}"', '"cost: $5"', '"# not a comment"', '"// nor this"',
])
def test_interpolation_and_comment_markers_stay_verbatim_in_strings(text):
    assert attr(text) == text[1:-1]


def test_lists():
    assert attr("[]") == []
    assert typed(attr('[1, "two", 3.0, true, null]')) == typed([1, "two", 3.0, True, None])
    assert attr("[1, 2,]") == [1, 2]  # trailing comma
    assert attr("[\n  1,\n  2,\n]") == [1, 2]  # newlines
    assert attr("[[1, [2]], []]") == [[1, [2]], []]
    assert attr('[{ a = 1 }, { "b c" = [2] }]') == [{"a": 1}, {"b c": [2]}]


def test_maps():
    assert attr("{}") == {}
    assert attr("{ a = 1, b = 2 }") == {"a": 1, "b": 2}
    assert attr("{ a = 1, b = 2, }") == {"a": 1, "b": 2}
    assert attr("{\n  a = 1\n  b = 2\n}") == {"a": 1, "b": 2}
    assert attr('{ "quoted key" = 1, "x/y" = 2, "" = 3 }') == {"quoted key": 1, "x/y": 2, "": 3}
    assert attr("{ outer = { inner = [1] } }") == {"outer": {"inner": [1]}}
    assert attr("{ image { name = \"x\" } }") == {"image": {"name": "x"}}


def test_map_key_order_is_document_order():
    assert list(attr("{ z = 1, a = 2, m = 3 }")) == ["z", "a", "m"]


def test_identifiers_may_hold_dashes_underscores_and_digits():
    assert dep("my-key_2 = 1\n_private = 2") == {"my-key_2": 1, "_private": 2}


def test_keywords_are_plain_keys_where_a_key_is_expected():
    assert dep("vars { target = 1, true = 2, null = 3, deployment = 4 }")["vars"] == {
        "target": 1, "true": 2, "null": 3, "deployment": 4}
    # a word that only starts with a keyword is one word
    assert dep("vars { nullable = 1, true-ish = 2, targets = 3 }")["vars"] == {
        "nullable": 1, "true-ish": 2, "targets": 3}


@pytest.mark.parametrize("word", ["true", "false", "null", "deployment", "target"])
@pytest.mark.parametrize("body, expected", [
    ("W = 1", {"W": 1}),
    ("a = 1\nW = 2", {"a": 1, "W": 2}),
    ("v {}\nW = 2", {"v": {}, "W": 2}),
    ('c "n" {\n  a = [1]\n  W = 1\n}', {"components": {"c": {"n": {"a": [1], "W": 1}}}}),
    ('target "t" {\n  a {}\n  W = 1\n}', {"targets": {"t": {"a": {}, "W": 1}}}),
    ("vars = { a = [1]\nW { W = 1 } }", {"vars": {"a": [1], "W": {"W": 1}}}),
])
def test_keyword_like_words_are_keys_in_every_key_position(word, body, expected):
    """LALR merges look-ahead sets across contexts; no keyword may leak into
    a key position through them."""
    def swap(value):
        if isinstance(value, dict):
            return {(word if k == "W" else k): swap(v) for k, v in value.items()}
        return value

    assert dep(body.replace("W", word)) == swap(expected)


# ---------------------------------------------------------------------------
# statements and blocks


def test_both_comment_styles_anywhere():
    text = """\
# leading
// another
deployment { # after the brace
  a = 1  // trailing
  b = [ # inside a list
    2, // after an item
  ]
  # before the end
} // after the end
# last
"""
    assert parse(text) == {"deployment": {"a": 1, "b": [2]}}


def test_map_attribute_as_block_and_nested_blocks():
    assert dep('vars { replicas = 1 }')["vars"] == {"replicas": 1}
    assert dep('vars { image { name = "x", tag { major = 1 } } }')["vars"] == {
        "image": {"name": "x", "tag": {"major": 1}}}
    assert dep('vars = { replicas = 1 }') == dep("vars { replicas = 1 }")
    assert dep('labels { "team.name" = "backend" }')["labels"] == {"team.name": "backend"}


def test_empty_blocks():
    assert parse("deployment {}") == {"deployment": {}}
    assert dep("vars {}") == {"vars": {}}
    assert dep('target "dev" {}') == {"targets": {"dev": {}}}
    assert dep('command "x" {}') == {"components": {"command": {"x": {}}}}


def test_deployment_label_sets_the_name_and_no_label_leaves_it_absent():
    assert parse('deployment "api" {}') == {"deployment": {"name": "api"}}
    assert parse("deployment {}") == {"deployment": {}}
    assert parse('deployment { name = "api" }') == {"deployment": {"name": "api"}}


def test_components_of_any_type_are_filed_by_type_in_document_order():
    d = dep('terraform "b" {}\nhelmfile "x" {}\nterraform "a" {}')
    assert d == {"components": {"terraform": {"b": {}, "a": {}}, "helmfile": {"x": {}}}}
    assert list(d["components"]["terraform"]) == ["b", "a"]
    assert list(d["components"]) == ["terraform", "helmfile"]


def test_component_names_may_hold_slashes_and_anything_quoted():
    assert dep('terraform "ecs/service-api/v2" {}')["components"]["terraform"] == {"ecs/service-api/v2": {}}
    assert dep('"my type" "n" {}')["components"] == {"my type": {"n": {}}}


def test_depends_on_becomes_metadata_depends_on():
    d = dep('nixpack "api" {\n  depends_on = ["terraform/ecr/api", "command/x"]\n}')
    assert d["components"]["nixpack"]["api"] == {
        "metadata": {"depends_on": ["terraform/ecr/api", "command/x"]}}


def test_metadata_block_merges_with_depends_on():
    d = dep('c "x" {\n  metadata { owner = "me" }\n  depends_on = []\n}')
    assert d["components"]["c"]["x"] == {"metadata": {"owner": "me", "depends_on": []}}
    d = dep('c "x" {\n  metadata { depends_on = ["a/b"] }\n}')
    assert d["components"]["c"]["x"] == {"metadata": {"depends_on": ["a/b"]}}


def test_a_quoted_depends_on_key_stays_a_plain_key():
    assert dep('c "x" { "depends_on" = [] }')["components"]["c"]["x"] == {"depends_on": []}


def test_every_component_key():
    d = dep("""
  command "smoke" {
    source = "tests"
    vars { a = 1 }
    env { B = "2" }
    run = "./smoke.sh ${target}"
    inputs = ["tests/smoke/**"]
    cache = false
    timeout = 300
    retries = 1
    enabled = true
    sensitive = ["db_password"]
    depends_on = ["terraform/ecs/service-api"]
  }""")
    assert typed(d["components"]["command"]["smoke"]) == typed({
        "source": "tests", "vars": {"a": 1}, "env": {"B": "2"}, "run": "./smoke.sh ${target}",
        "inputs": ["tests/smoke/**"], "cache": False, "timeout": 300, "retries": 1,
        "enabled": True, "sensitive": ["db_password"],
        "metadata": {"depends_on": ["terraform/ecs/service-api"]}})


def test_target_overrides():
    d = dep("""
  target "prod" {
    vars { replicas = 4 }
    env { MODE = "prod" }
    terraform "ecs/service-api" {
      vars { cpu = 1024 }
      depends_on = ["terraform/ecr/api"]
    }
    nixpack "api" { enabled = false }
  }""")
    assert d == {"targets": {"prod": {
        "vars": {"replicas": 4},
        "env": {"MODE": "prod"},
        "components": {
            "terraform": {"ecs/service-api": {"vars": {"cpu": 1024},
                                              "metadata": {"depends_on": ["terraform/ecr/api"]}}},
            "nixpack": {"api": {"enabled": False}},
        },
    }}}


def test_targets_and_other_deployment_keys_in_document_order():
    d = dep('target "b" {}\ntarget "a" {}\ndescription = "x"\nlabels { team = "t" }\nenv { X = "1" }')
    assert list(d["targets"]) == ["b", "a"]
    assert d["labels"] == {"team": "t"} and d["env"] == {"X": "1"} and d["description"] == "x"


def test_commas_and_newlines_both_separate_entries():
    assert dep("a = 1, b = 2") == dep("a = 1\nb = 2") == {"a": 1, "b": 2}


def test_crlf_line_endings_and_a_byte_order_mark():
    text = '\ufeffdeployment "x" {\r\n  a = "v" # c\r\n  b = [1,\r\n 2]\r\n}\r\n'
    doc = parse_dsl(text, "B")
    assert doc.data == {"deployment": {"name": "x", "a": "v", "b": [1, 2]}}
    assert [c[2] for c in doc.comments] == ["# c"]


# ---------------------------------------------------------------------------
# positions


LOCATE_EXAMPLE = """\
deployment "api" {
  vars { region = "us-east-1" }
  target "prod" {
    vars { replicas = 4 }
    terraform "ecs/service-api" { vars { cpu = 1024 } }
  }
  terraform "ecr/api" {
    source = "components/terraform/ecr"
    vars {
      region = "eu-west-1"
      tags = { team = "a" }
    }
  }
  nixpack "api" {
    depends_on = ["terraform/ecr/api"]
  }
}
"""


@pytest.mark.parametrize("path, where", [
    (("deployment",), (1, 1)),
    (("deployment", "name"), (1, 12)),
    (("deployment", "vars"), (2, 3)),
    (("deployment", "vars", "region"), (2, 10)),
    (("deployment", "targets"), (3, 3)),
    (("deployment", "targets", "prod"), (3, 3)),
    (("deployment", "targets", "prod", "vars", "replicas"), (4, 12)),
    (("deployment", "targets", "prod", "components", "terraform", "ecs/service-api"), (5, 5)),
    (("deployment", "targets", "prod", "components", "terraform", "ecs/service-api", "vars", "cpu"), (5, 42)),
    (("deployment", "components", "terraform"), (7, 3)),
    (("deployment", "components", "terraform", "ecr/api"), (7, 3)),
    (("deployment", "components", "terraform", "ecr/api", "source"), (8, 5)),
    (("deployment", "components", "terraform", "ecr/api", "vars", "region"), (10, 7)),
    (("deployment", "components", "terraform", "ecr/api", "vars", "tags", "team"), (11, 16)),
    (("deployment", "components", "nixpack", "api"), (14, 3)),
    (("deployment", "components", "nixpack", "api", "metadata"), (15, 5)),
    (("deployment", "components", "nixpack", "api", "metadata", "depends_on"), (15, 5)),
])
def test_locate_points_at_the_attribute_name_or_block_keyword(path, where):
    assert parse_dsl(LOCATE_EXAMPLE, "B").locate(path) == where


def test_locate_falls_back_to_the_deepest_existing_path():
    doc = parse_dsl(LOCATE_EXAMPLE, "B")
    # a list item resolves to its attribute, a missing key to its block
    assert doc.locate(("deployment", "components", "nixpack", "api", "metadata", "depends_on", 0)) == (15, 5)
    assert doc.locate(("deployment", "components", "nixpack", "api", "source")) == (14, 3)
    assert doc.locate(("nothing",)) is None
    assert doc.locate(()) is None


# ---------------------------------------------------------------------------
# errors


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_dsl(text, "pkg/BUILD.atmos")
    return info.value


VALUE = "a value (string, number, true/false/null, list or map)"


@pytest.mark.parametrize("text, message, line, col", [
    ("deployment {\n  vars = }\n}", f"unexpected '}}', expected {VALUE}", 2, 10),
    ('deployment {\n  description = "abc\n}', "unterminated string", 2, 17),
    ('deployment {\n  d = "abc', "unterminated string", 2, 7),
    ('deployment {\n  d = "a\\qb"\n}', "invalid escape '\\q' in string", 2, 9),
    ('deployment {\n  source = services/api\n}',
     f"unexpected name 'services', expected {VALUE} (strings need double quotes)", 2, 12),
    ('deployment {\n  nixpack "x" {\n    source "y"\n  }\n}',
     "expected '=' between source and \"y\" (or '{' after it to open a block)", 3, 12),
    ("deployment {\n  vars {\n    a = 1\n",
     "unexpected end of file, expected an attribute, a block or '}'", 3, 10),
    ("deployment {\n  a = [1, 2\n  b = 3\n}", "unexpected name 'b', expected ',' or ']'", 3, 3),
    ("deployment {\n  a = 01\n}", "invalid number '01'", 2, 7),
    ("deployment {\n  a = 1.\n}", "invalid number '1.'", 2, 7),
    ("deployment {\n  a = @\n}", f"unexpected character '@', expected {VALUE}", 2, 7),
    ("deployment {\n  a == 1\n}", f"unexpected '=', expected {VALUE}", 2, 6),
    ('deployment {\n  a = 1e999\n}', "number 1e999 is out of range", 2, 7),
    ('deployment {\n  a = "\\ud800"\n}', "invalid \\u escape: unpaired surrogate", 2, 7),
    ('deploymnet "x" {}', "unexpected name 'deploymnet', expected a 'deployment' block", 1, 1),
    ('deployment {} extra', "unexpected name 'extra', expected a 'deployment' block", 1, 15),
])
def test_syntax_errors_say_what_was_found_and_what_was_expected(text, message, line, col):
    err = error_of(text)
    assert err.message.startswith(message), err.message
    assert (err.file, err.line, err.col) == ("pkg/BUILD.atmos", line, col)
    assert err.context[-1] == "    " + " " * (col - 1) + "^"
    assert err.render().startswith(f"error: pkg/BUILD.atmos:{line}:{col}: {message}")


@pytest.mark.parametrize("text, message, line, col", [
    ("deployment {\n  a = 1\n  a = 2\n}", "duplicate attribute 'a' (first at line 2)", 3, 3),
    ("deployment {\n  vars { x = 1 }\n  vars = {}\n}", "duplicate attribute 'vars' (first at line 2)", 3, 3),
    ("deployment {\n  vars = { x = 1, x = 2 }\n}", "duplicate attribute 'x' (first at line 2)", 2, 19),
    ('deployment "n" {\n  name = "m"\n}', "duplicate attribute 'name' (first at line 1)", 2, 3),
    ('deployment {\n  target "dev" {}\n  target "prod" {}\n  target "dev" {}\n}',
     "duplicate target 'dev' (first at line 2)", 4, 3),
    ('deployment {\n  terraform "x" {}\n  nixpack "x" {}\n  terraform "x" {}\n}',
     "duplicate component 'terraform/x' (first at line 2)", 4, 3),
    ('deployment {\n  target "p" {\n    c "x" {}\n    c "x" {}\n  }\n}',
     "duplicate component 'c/x' (first at line 3)", 4, 5),
    ('deployment {\n  c "x" {\n    depends_on = []\n    metadata { depends_on = [] }\n  }\n}',
     "duplicate attribute 'depends_on' (first at line 3)", 4, 16),
    ('deployment {\n  c "x" {\n    source = "a"\n    source = "b"\n  }\n}',
     "duplicate attribute 'source' (first at line 3)", 4, 5),
    ('deployment {\n  components = {}\n  terraform "x" {}\n}',
     "this block conflicts with the 'components' attribute at line 2", 3, 3),
    ("deployment {}\n\ndeployment {}", "second deployment block: a file holds exactly one", 3, 1),
])
def test_duplicates_point_at_the_second_occurrence(text, message, line, col):
    err = error_of(text)
    assert err.message.startswith(message), err.message
    assert (err.line, err.col) == (line, col)
    assert "^" in err.context[-1]


@pytest.mark.parametrize("text, message, line, col", [
    ('deployment {\n  target "a" {\n    target "b" {}\n  }\n}',
     "a target block cannot be inside a target", 3, 5),
    ('deployment {\n  nixpack "a" {\n    target "x" {}\n  }\n}',
     "a target block cannot be inside component 'nixpack/a'", 3, 5),
    ('deployment {\n  nixpack "a" {\n    source = "s"\n    terraform "x" {}\n  }\n}',
     "a terraform \"x\" block cannot be inside component 'nixpack/a'", 4, 5),
])
def test_labeled_blocks_only_where_they_belong(text, message, line, col):
    err = error_of(text)
    assert err.message == message
    assert (err.line, err.col) == (line, col)


def test_target_is_a_plain_key_outside_a_deployment_body():
    assert dep('target = "x"\nvars { target = 1, a = 2 }\n"target" "t" {}') == {
        "target": "x", "vars": {"target": 1, "a": 2}, "components": {"target": {"t": {}}}}


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_a_file_without_deployment_block_is_an_error(text):
    err = error_of(text)
    assert err.message.startswith("no deployment block")
    assert (err.line, err.col) == (1, 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_lark_exception_ever_escapes(data):
    """Any edit of a valid file either parses or raises ConfigError."""
    text = SPEC_EXAMPLE
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 5))
        insert = data.draw(st.text(alphabet='{}[]=",#/\\\n ab1.-$u', max_size=4))
        text = text[:at] + insert + text[at + cut:]
    try:
        doc = parse_dsl(text, "B")
    except ConfigError as err:
        assert err.line is not None and err.col is not None
        assert err.render().startswith("error: B:")
    else:
        assert isinstance(doc.data["deployment"], dict)


# ---------------------------------------------------------------------------
# the compiled-grammar cache


def test_grammar_cache_is_per_user_and_survives_corruption(tmp_path):
    """The parse table is cached under $XDG_CACHE_HOME/atmosbuild; a broken
    or unwritable cache costs time, never a failure or a message."""
    code = ("from atmosbuild.config.dsl import parse_dsl; "
            "print(parse_dsl('deployment \"x\" {}', 'B').data)")
    root = Path(__file__).parents[1]

    def run(cache_home) -> subprocess.CompletedProcess:
        env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
        return subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                              capture_output=True, text=True, check=True)

    assert run(tmp_path).stdout == "{'deployment': {'name': 'x'}}\n"
    (cached,) = (tmp_path / "atmosbuild").glob("grammar-*.lark-cache")
    cached.write_bytes(b"garbage")
    again = run(tmp_path)
    assert (again.stdout, again.stderr) == ("{'deployment': {'name': 'x'}}\n", "")
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert run(blocked).stdout == "{'deployment': {'name': 'x'}}\n"


# ---------------------------------------------------------------------------
# scale


def big_dsl(n: int) -> str:
    """A deployment with `n` components, each with a source, a 3-key vars map
    and a depends_on list: the benchmark shape of the task brief."""
    out = ['deployment "big" {', '  vars { region = "us-east-1" }',
           '  target "dev" { vars { replicas = 1 } }']
    for i in range(n):
        deps = ", ".join(f'"nixpack/svc/c{j}"' for j in range(max(0, i - 2), i))
        out += [
            f'  nixpack "svc/c{i}" {{',
            f'    source = "services/c{i}"',
            "    vars {",
            f'      name = "c{i}"',
            f"      replicas = {i % 5}",
            "      debug = true",
            "    }",
            f"    depends_on = [{deps}]",
            "  }",
        ]
    out.append("}")
    return "\n".join(out) + "\n"


def test_five_thousand_components_parse_quickly():
    text = big_dsl(5000)
    parse_dsl('deployment {}', "warm")  # grammar load is not what this measures
    started = time.process_time()
    doc = parse_dsl(text, "big/BUILD.atmos")
    elapsed = time.process_time() - started
    comps = doc.data["deployment"]["components"]["nixpack"]
    assert len(comps) == 5000
    assert comps["svc/c4999"] == {"source": "services/c4999",
                                  "vars": {"name": "c4999", "replicas": 4, "debug": True},
                                  "metadata": {"depends_on": ["nixpack/svc/c4997", "nixpack/svc/c4998"]}}
    assert doc.locate(("deployment", "components", "nixpack", "svc/c4999", "vars", "debug")) == (
        3 + 9 * 4999 + 6, 7)
    # ~0.8 s on an idle core; the bound only catches a quadratic slip on a busy machine
    assert elapsed < 6.0
