"""The canonical writers: DSL (`atmosbuild fmt`, `convert --to dsl`) and YAML
(`convert --to yaml`).

The properties state the SPEC's promise -- "convert either way without
loss" -- for random documents: DSL and YAML round-trip with exact types,
formatting is idempotent, and user comments survive `fmt` in order.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atmosbuild.config.dsl import parse_dsl
from atmosbuild.config.fmt import format_dsl, format_yaml
from atmosbuild.errors import ConfigError


def typed(value):
    """`value` with every scalar tagged by its type, so 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list", [typed(v) for v in value]]
    return (type(value).__name__, value)


def fmt(text: str) -> str:
    doc = parse_dsl(text, "BUILD.atmos")
    return format_dsl(doc.data, doc.comments)


# ---------------------------------------------------------------------------
# the canonical DSL layout


UNORDERED = """\
deployment "api" {
  command "smoke" { depends_on = ["terraform/ecs/service-api"], cache = false, run = ["./smoke.sh", "${target}"] }
  vars { region = "us-east-1" }
  target "dev" { vars { replicas = 1 } }
  nixpack "api" {
    depends_on = ["terraform/ecr/api"]
    source = "services/api"
  }
  description = "API service"
  target "prod" {
    terraform "ecs/service-api" { vars { cpu = 1024 } }
    vars = { replicas = 4, "odd key" = { x = [1, 2.5, true, null, { y = "z" }] } }
  }
  terraform "ecr/api" {
    vars { name = "api" }
    source = "components/terraform/ecr"
  }
}
"""

CANONICAL = """\
deployment "api" {
  description = "API service"
  vars {
    region = "us-east-1"
  }

  target "dev" {
    vars {
      replicas = 1
    }
  }
  target "prod" {
    vars {
      replicas = 4
      "odd key" {
        x = [1, 2.5, true, null, { y = "z" }]
      }
    }
    terraform "ecs/service-api" {
      vars {
        cpu = 1024
      }
    }
  }

  command "smoke" {
    run = ["./smoke.sh", "${target}"]
    cache = false
    depends_on = ["terraform/ecs/service-api"]
  }
  nixpack "api" {
    source = "services/api"
    depends_on = ["terraform/ecr/api"]
  }
  terraform "ecr/api" {
    source = "components/terraform/ecr"
    vars {
      name = "api"
    }
  }
}
"""


def test_canonical_layout():
    assert fmt(UNORDERED) == CANONICAL
    assert fmt(CANONICAL) == CANONICAL


def test_the_spec_example_layout_is_canonical_once_maps_are_blocks():
    """Blank lines separate attributes, targets and components, as in SPEC 3."""
    spec_like = """\
deployment "api" {
  description = "API service"

  target "dev" {}
  target "prod" {}

  terraform "ecr/api" {
    source = "components/terraform/ecr"
  }
  nixpack "api" {
    source = "services/api"
    depends_on = ["terraform/ecr/api"]
  }
}
"""
    assert fmt(spec_like) == spec_like


def test_deployment_without_name_and_empty_blocks():
    assert format_dsl({"deployment": {}}) == "deployment {}\n"
    assert format_dsl({"deployment": {"vars": {}, "targets": {"dev": {}}}}) == (
        'deployment {\n  vars {}\n\n  target "dev" {}\n}\n')


def test_keys_are_bare_when_identifiers_and_quoted_otherwise():
    data = {"deployment": {"vars": {
        "plain_key-2": 1, "with space": 2, "a/b": 3, "2start": 4, "": 5, "ü": 6,
        "true": 7, "target": 8}}}
    text = format_dsl(data)
    assert 'plain_key-2 = 1' in text and '"with space" = 2' in text and '"a/b" = 3' in text
    assert '"2start" = 4' in text and '"" = 5' in text and '"ü" = 6' in text
    assert "true = 7" in text and "target = 8" in text
    assert typed(parse_dsl(text, "B").data) == typed(data)


def test_strings_escape_what_they_must():
    text = format_dsl({"deployment": {"description": 'q"b\\n\n\t\r\x00\x7f\u2028 ${x} $${y} é😀'}})
    assert text == ('deployment {\n  description = '
                    '"q\\"b\\\\n\\n\\t\\r\\u0000\\u007f\\u2028 ${x} $${y} é😀"\n}\n')


def test_keyword_and_odd_names_stay_what_they_are():
    data = {"deployment": {
        "target": "a key named target",
        "components": {"target": {"x": {}}, "my type": {"y": {}}},
        "targets": {"has space": {}},
    }}
    text = format_dsl(data)
    assert 'target = "a key named target"' in text
    assert '"target" "x" {}' in text and '"my type" "y" {}' in text
    assert typed(parse_dsl(text, "B").data) == typed(data)


@pytest.mark.parametrize("deployment", [
    {"components": {}},
    {"components": {"terraform": {}}},
    {"targets": {}},
    {"targets": {"dev": None}},
    {"targets": {"dev": {"components": {}}}},
    {"components": {"c": {"x": {"metadata": {"owner": "me", "depends_on": ["a/b"]}}}}},
    {"components": {"c": {"x": {"metadata": {}}}}},
    {"components": {"c": {"x": {"depends_on": ["literal key"], "metadata": {"depends_on": []}}}}},
    {"components": {"c": {"x": None}}},
    {"name": 7},
])
def test_shapes_blocks_cannot_express_still_round_trip(deployment):
    data = {"deployment": deployment}
    assert typed(parse_dsl(format_dsl(data), "B").data) == typed(data)


@pytest.mark.parametrize("data, message", [
    ({"deployment": {"vars": {"x": float("inf")}}}, "cannot write the number inf"),
    ({"deployment": {"vars": {"x": float("nan")}}}, "cannot write the number nan"),
    ({"deployment": {"vars": {1: "x"}}}, "keys must be strings"),
    ({"deployment": {"vars": {"x": {1, 2}}}}, "cannot write a set value"),
    ({"other": {}}, "cannot write the DSL"),
])
def test_what_the_dsl_cannot_hold_is_a_config_error(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        format_dsl(data)


# ---------------------------------------------------------------------------
# comments survive fmt


COMMENTED = """\
# Package api: the API service.
// maintained by backend
deployment "api" { # the deployment
  description = "API service"  # shown in `status`

  # defaults for every target
  vars { region = "us-east-1" }

  target "prod" {
    vars { replicas = 4 } // four is enough
    # overrides
    terraform "ecs/service-api" {
      vars { cpu = 1024 }
    } # end of override
  }

  terraform "ecr/api" {
    source = "components/terraform/ecr"
    # vars { name = "old" }
  }
  nixpack "api" {
    source = "services/api"
    depends_on = [
      # the registry must exist first
      "terraform/ecr/api",  # ECR
    ]
  }
  # commented-out component:
  # command "smoke" { run = ["./smoke.sh"] }
}
# trailing notes
"""


def test_comments_survive_fmt_in_order_and_fmt_is_idempotent():
    once = fmt(COMMENTED)
    comments = re.findall(r"(?:#|//)[^\n]*", COMMENTED)
    positions = [once.index(c) for c in comments]
    assert positions == sorted(positions), once
    assert fmt(once) == once


def test_comments_are_placed_next_to_their_statements():
    assert fmt(COMMENTED) == """\
# Package api: the API service.
// maintained by backend
deployment "api" {  # the deployment
  description = "API service"  # shown in `status`
  # defaults for every target
  vars {
    region = "us-east-1"
  }

  target "prod" {
    vars {
      replicas = 4
    }  // four is enough
    # overrides
    terraform "ecs/service-api" {
      vars {
        cpu = 1024
      }
    }  # end of override
  }

  terraform "ecr/api" {
    source = "components/terraform/ecr"
    # vars { name = "old" }
  }
  nixpack "api" {
    source = "services/api"
    # the registry must exist first
    depends_on = ["terraform/ecr/api"]  # ECR
  }
  # commented-out component:
  # command "smoke" { run = ["./smoke.sh"] }
}
# trailing notes
"""


def test_several_trailing_comments_of_one_statement_share_its_line():
    text = 'deployment {\n  run = [ # a\n    "x", # b\n    # c\n  ]\n}\n'
    assert fmt(text) == 'deployment {\n  run = ["x"]  # a # b # c\n}\n'


def test_comments_of_an_empty_block_stay_inside_it():
    text = 'deployment {\n  vars {\n    # nothing yet\n  }\n}\n'
    assert fmt(text) == text
    assert fmt('deployment {\n  vars { # a\n  }\n}\n') == 'deployment {\n  vars {}  # a\n}\n'


def test_format_without_comments_is_the_plain_layout():
    doc = parse_dsl(COMMENTED, "B")
    assert "#" not in format_dsl(doc.data).replace("# ", "")  # no comment text at all
    assert not any(line.lstrip().startswith(("#", "//")) for line in format_dsl(doc.data).splitlines())


# ---------------------------------------------------------------------------
# YAML


def test_yaml_layout_is_block_style_in_canonical_key_order():
    data = {"deployment": {
        "components": {"nixpack": {"api": {"metadata": {"depends_on": ["terraform/ecr/api"]},
                                           "source": "services/api"}}},
        "vars": {"z": 1, "a": 2},
        "name": "api",
    }}
    assert format_yaml(data) == """\
deployment:
  name: api
  vars:
    z: 1
    a: 2
  components:
    nixpack:
      api:
        source: services/api
        metadata:
          depends_on:
          - terraform/ecr/api
"""


@pytest.mark.parametrize("value", [
    "yes", "no", "on", "off", "true", "True", "1", "1.5", "0x1F", "1e3", "null", "~", "",
    "${target}", "$${x}", "a: b", "- x", "#x", "x #y", "'q'", '"q"', " lead", "trail ",
    "multi\nline", "multi\nline\n", "\nleading newline", "trailing\n\n", "tab\tin", "\x00", "\x85",
    "\u2028", "é中😀", "2024-01-01", ".inf", "=", "<<", "!tag", "&anchor", "*alias", "%", "@", "`",
    "|", ">", "? x", "[a]", "{a}", "a\r\nb",
])
def test_yaml_strings_read_back_as_the_same_strings(value):
    data = {"deployment": {"vars": {value: value, "list": [value]}}}
    assert typed(yaml.safe_load(format_yaml(data))) == typed(data)


def test_yaml_multi_line_strings_are_literal_blocks():
    text = format_yaml({"deployment": {"description": "line one\nline two\n"}})
    assert text == "deployment:\n  description: |\n    line one\n    line two\n"


def test_yaml_never_writes_anchors():
    shared = {"a": 1}
    text = format_yaml({"deployment": {"vars": {"x": shared, "y": shared}}})
    assert "&" not in text and "*" not in text


# ---------------------------------------------------------------------------
# properties over random documents

IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True)
TRICKY = st.sampled_from([
    "", "yes", "no", "1", "1.0", "null", "true", "~", "${x}", "$${x}", "a${var.b}c", 'say "hi"',
    "back\\slash", "\\n", "multi\nline\n", "  lead", "trail ", "# not a comment", "// nor this",
    "ü", "😀", "\t", "a: b", "- x", "\r\n", "{}", "[]", "=", "target", "deployment",
])
TEXT = st.one_of(st.text(max_size=12), TRICKY)
KEYS = st.one_of(IDENT, TEXT)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False), TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=8,
)
USER_MAP = st.dictionaries(KEYS, VALUES, max_size=3)
COMPONENT_NAME = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,6}(/[a-z0-9._-]{1,6}){0,2}", fullmatch=True), st.text(min_size=1, max_size=8))
COMPONENT_ID = st.builds(lambda t, n: f"{t}/{n}", IDENT, COMPONENT_NAME)
COMPONENT = st.fixed_dictionaries({}, optional={
    "source": TEXT,
    "vars": USER_MAP,
    "env": st.dictionaries(KEYS, TEXT, max_size=3),
    "run": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
    "inputs": st.lists(TEXT, max_size=2),
    "cache": st.booleans(),
    "timeout": st.one_of(st.integers(0, 10**6), st.floats(0, 1e6)),
    "retries": st.integers(0, 5),
    "enabled": st.booleans(),
    "sensitive": st.lists(KEYS, max_size=2),
    "resources": st.dictionaries(KEYS, st.one_of(st.integers(1, 8), st.floats(0.5, 4)), max_size=2),
    "metadata": st.fixed_dictionaries({"depends_on": st.lists(COMPONENT_ID, max_size=3)}),
})
TYPE = st.one_of(st.sampled_from(["terraform", "nixpack", "command"]), IDENT)
COMPONENTS = st.dictionaries(TYPE, st.dictionaries(COMPONENT_NAME, COMPONENT, min_size=1, max_size=3),
                             max_size=3)
TARGET = st.fixed_dictionaries({}, optional={
    "vars": USER_MAP, "env": st.dictionaries(KEYS, TEXT, max_size=2), "components": COMPONENTS})
DOCUMENT = st.builds(
    lambda d: {"deployment": d},
    st.fixed_dictionaries({}, optional={
        "name": TEXT,
        "description": TEXT,
        "labels": st.dictionaries(KEYS, TEXT, max_size=3),
        "vars": USER_MAP,
        "env": st.dictionaries(KEYS, TEXT, max_size=3),
        "targets": st.dictionaries(TEXT, TARGET, max_size=3),
        "components": COMPONENTS,
    }),
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(DOCUMENT)
def test_dsl_round_trip_keeps_data_and_types(data):
    text = format_dsl(data)
    assert typed(parse_dsl(text, "B").data) == typed(data)


@PROPERTY
@given(DOCUMENT)
def test_formatting_is_idempotent(data):
    text = format_dsl(data)
    assert fmt(text) == text


@PROPERTY
@given(DOCUMENT)
def test_yaml_round_trip_keeps_data_and_types(data):
    assert typed(yaml.safe_load(format_yaml(data))) == typed(data)


@PROPERTY
@given(DOCUMENT)
def test_yaml_to_dsl_to_yaml_gives_the_same_text(data):
    yaml_text = format_yaml(data)
    via_dsl = parse_dsl(format_dsl(yaml.safe_load(yaml_text)), "B").data
    assert format_yaml(via_dsl) == yaml_text


@PROPERTY
@given(DOCUMENT, st.data())
def test_fmt_keeps_every_comment_in_order(data, draw):
    """Comments sprinkled over a canonical file -- after code or on their own
    lines, anywhere -- all survive fmt, in order, and fmt is then stable."""
    lines = format_dsl(data).splitlines()
    out, n = [], 0
    for line in lines + [""]:
        if draw.draw(st.booleans()):
            out.append(f"{' ' * draw.draw(st.integers(0, 6))}// own-{n}")
            n += 1
        if line and draw.draw(st.booleans()):
            line = f"{line}  # trail-{n}"
            n += 1
        out.append(line)
    text = "\n".join(out)
    once = fmt(text)
    found = [int(m) for m in re.findall(r"(?:own|trail)-(\d+)", once)]
    assert found == list(range(n)), once
    assert fmt(once) == once


def test_formatting_does_not_import_the_parser():
    """`fmt.py` is used by `convert --to yaml`; lark stays out of that path."""
    code = "import sys, atmosbuild.config.fmt; assert 'lark' not in sys.modules, 'lark imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---------------------------------------------------------------------------
# the `fmt` command (SPEC 3): in place and atomic, --check, --diff, `-`


MESSY = 'deployment "api" {\n  # the region\n  vars { region = "eu" }\n    target "dev" {}\n}\n'


def _cli(*args, cwd, input=None):
    from conftest import run_cli

    return run_cli(*args, cwd=cwd, input=input)


def test_fmt_rewrites_in_place_keeping_comments_mode_and_a_symlink(tmp_path):
    real = tmp_path / "real.atmos"
    real.write_text(MESSY)
    real.chmod(0o640)
    link = tmp_path / "BUILD.atmos"
    link.symlink_to(real.name)
    proc = _cli("fmt", "BUILD.atmos", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "formatted BUILD.atmos\n", proc.stderr
    assert link.is_symlink() and real.read_text() == fmt(MESSY)
    assert "# the region" in real.read_text()
    assert real.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BUILD.atmos", "real.atmos"]  # no temporary left
    again = _cli("fmt", "BUILD.atmos", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == ""


def test_fmt_check_changes_nothing_and_exits_1_when_a_file_would_change(tmp_path):
    messy, tidy = tmp_path / "a.atmos", tmp_path / "b.atmos"
    messy.write_text(MESSY)
    tidy.write_text(fmt(MESSY))
    before = messy.stat()
    proc = _cli("fmt", "--check", "a.atmos", "b.atmos", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "would reformat a.atmos\n"
    assert messy.read_text() == MESSY and messy.stat().st_mtime_ns == before.st_mtime_ns
    assert _cli("fmt", "--check", "b.atmos", cwd=tmp_path).returncode == 0


def test_fmt_diff_prints_a_unified_diff_that_patch_applies(tmp_path):
    (tmp_path / "BUILD.atmos").write_text(MESSY)
    proc = _cli("fmt", "--check", "--diff", "BUILD.atmos", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("--- a/BUILD.atmos\n+++ b/BUILD.atmos\n@@ ")
    assert (tmp_path / "BUILD.atmos").read_text() == MESSY  # --check: nothing written
    patched = subprocess.run(["patch", "-p1", "--dry-run", "-o", "-"], input=proc.stdout, text=True,
                             capture_output=True, cwd=tmp_path)
    if patched.returncode == 0:  # (where `patch` is installed)
        assert fmt(MESSY) in patched.stdout
    proc = _cli("fmt", "--diff", "BUILD.atmos", cwd=tmp_path)  # without --check: written too
    assert proc.returncode == 0 and proc.stdout.startswith("--- a/BUILD.atmos")
    assert (tmp_path / "BUILD.atmos").read_text() == fmt(MESSY)


def test_fmt_dash_reads_stdin_and_prints_the_result(tmp_path):
    proc = _cli("fmt", "-", cwd=tmp_path, input=MESSY)
    assert proc.returncode == 0 and proc.stdout == fmt(MESSY)
    assert list(tmp_path.iterdir()) == []
    check = _cli("fmt", "--check", "-", cwd=tmp_path, input=MESSY)
    assert check.returncode == 1 and check.stdout == "" and "would reformat <stdin>" in check.stderr
    assert _cli("fmt", "--check", "-", cwd=tmp_path, input=fmt(MESSY)).returncode == 0


@pytest.mark.parametrize("broken, where", [
    ('deployment "api" {\n  vars { region = \n}\n', "3:1"),
    ('deployment "api" {\n  vars { region = "eu" }\n', "2:25"),
    ('deployment "api" {\n  description = "a"\n  description = "b"\n}\n', "3:3"),
])
def test_a_parse_error_is_one_line_with_its_position_and_changes_no_file(tmp_path, broken, where):
    (tmp_path / "good.atmos").write_text(MESSY)
    (tmp_path / "bad.atmos").write_text(broken)
    proc = _cli("fmt", "good.atmos", "bad.atmos", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: bad.atmos:{where}: "), proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert (tmp_path / "good.atmos").read_text() == MESSY  # parsed first, so not written either
    assert (tmp_path / "bad.atmos").read_text() == broken
    stdin = _cli("fmt", "-", cwd=tmp_path, input=broken)
    assert stdin.returncode == 2 and stdin.stderr.startswith(f"error: <stdin>:{where}: ")


def test_fmt_refuses_what_it_cannot_format(tmp_path):
    (tmp_path / "deployment.yaml").write_text("deployment: {}\n")
    (tmp_path / "latin1.atmos").write_bytes('deployment "caf\xe9" {}\n'.encode("latin-1"))
    for args, message in ((["deployment.yaml"], "convert"), (["missing.atmos"], "no such file"),
                          (["latin1.atmos"], "latin1.atmos: not UTF-8")):
        proc = _cli("fmt", *args, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_write_atomic_from_many_threads_never_shows_half_a_file(tmp_path):
    """fmt and every cache write through fileops.write_atomic: a reader sees
    one whole version or another, never a mix, and no temporary is left,
    even with threads of one process writing the same file at once."""
    import threading

    from atmosbuild.fileops import write_atomic

    path = tmp_path / "BUILD.atmos"
    versions = [bytes([65 + i]) * 200_000 for i in range(8)]
    write_atomic(str(path), versions[0])
    errors: list = []
    stop = threading.Event()

    def writer(data):
        try:
            for _ in range(20):
                write_atomic(str(path), data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader():
        while not stop.is_set():
            data = path.read_bytes()
            if data not in versions:
                errors.append(AssertionError(f"a torn read: {data[:1]!r}...{data[-1:]!r}, {len(data)} bytes"))

    threads = [threading.Thread(target=writer, args=(v,)) for v in versions]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["BUILD.atmos"]
