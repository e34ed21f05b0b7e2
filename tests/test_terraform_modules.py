"""Reading Terraform modules (components/tfmodule.py): properties in the
words of SPEC 9, over generated modules and directory trees."""

from __future__ import annotations

import json
import posixpath

from hypothesis import given, settings
from hypothesis import strategies as st

from atmosbuild.components.tfmodule import Module, ModuleError, local_modules, summarize

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


def hcl(variables, modules, sensitive) -> str:
    out = [f'variable "{v}" {{\n  type = string\n}}\n' for v in variables]
    out += [f'module "{name}" {{\n  source = "{src}"\n  x = var.y\n}}\n' for name, src in modules]
    out += [f'output "{o}" {{\n  value = "v"\n  sensitive = true\n}}\n' for o in sensitive]
    return "\n".join(out)


def as_json(variables, modules, sensitive) -> str:
    doc = {}
    if variables:
        doc["variable"] = {v: {"type": "string"} for v in variables}
    if modules:
        doc["module"] = {name: {"source": src} for name, src in modules}
    if sensitive:
        doc["output"] = {o: {"value": "v", "sensitive": True} for o in sensitive}
    return json.dumps(doc, indent=1)


SOURCES = st.sampled_from(["./a", "../b", "../../modules/label", "hashicorp/consul/aws",
                           "git::https://example.com/x.git"])


@settings(max_examples=40, deadline=None)
@given(st.sets(NAMES, max_size=5), st.dictionaries(NAMES, SOURCES, max_size=3), st.sets(NAMES, max_size=3))
def test_tf_and_tf_json_declare_the_same_variables_and_modules(variables, modules, sensitive):
    a = summarize("main.tf", hcl(sorted(variables), sorted(modules.items()), sorted(sensitive)))
    b = summarize("main.tf.json", as_json(sorted(variables), sorted(modules.items()), sorted(sensitive)))
    assert "error" not in a and "error" not in b
    assert sorted(a["variables"]) == sorted(b["variables"]) == sorted(variables)
    assert sorted(m[:2] for m in a["modules"]) == sorted(m[:2] for m in b["modules"]) == \
        sorted([name, src] for name, src in modules.items())
    assert sorted(a["sensitive_outputs"]) == sorted(sensitive)
    # The position of each module's `source` is where it is written.
    text = hcl(sorted(variables), sorted(modules.items()), sorted(sensitive))
    for name, _, _, (line, col) in a["modules"]:
        assert text.splitlines()[line - 1][col - 1:].startswith("source")


TREE_DIRS = st.sampled_from(["root", "root/sub", "modules/a", "modules/b", "x/y/z"])


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(TREE_DIRS, st.lists(st.sampled_from(
    ["./sub", "../modules/a", "../../modules/b", "../../../out", "../b", "../../root", "hashicorp/x/y"]),
    max_size=3), min_size=1))
def test_local_modules_are_followed_once_each_and_never_outside_the_root(calls):
    calls.setdefault("root", [])

    def read(d: str) -> Module:
        if d not in calls:
            raise FileNotFoundError(d)
        mods = [[f"m{i}", src, None, [i + 1, 3]] for i, src in enumerate(calls[d])]
        return Module(d, {"main.tf": {"variables": [], "modules": mods}})

    # What a user expects: everything reachable through local sources,
    # resolved against the calling module's directory.
    reach, todo, bad = {"root"}, ["root"], None
    while todo and bad is None:
        d = todo.pop()
        for src in calls[d]:
            if not src.startswith("."):
                continue
            target = posixpath.normpath(posixpath.join(d, src))
            if target.startswith("..") or target not in calls:
                bad = target
                break
            if target not in reach:
                reach.add(target)
                todo.append(target)
    try:
        found = local_modules("root", read)
    except ModuleError as exc:
        assert bad is not None, exc.message  # some module reachable from the root calls it
        assert exc.line is not None and exc.file.endswith("main.tf")
        return
    assert bad is None
    dirs = [m.dir for m in found]
    assert dirs[0] == "root" and len(dirs) == len(set(dirs))
    assert set(dirs) == reach


def test_a_parse_error_is_a_summary_with_its_position():
    s = summarize("main.tf", 'variable "x" {\n  default = [1, 2\n}\n')
    line, col, message = s["error"]
    assert line in (2, 3) and col and "cannot parse" in message
    j = summarize("x.tf.json", '{"variable": {"x": }}')
    assert j["error"][0] == 1 and "JSON" in j["error"][2]


def test_the_providers_init_may_install_are_known_from_the_files():
    from atmosbuild.components.tfmodule import provider_addresses

    def mod(d, **files):
        return Module(d, {name: summarize(name, text) for name, text in files.items()})

    builtin = mod("a", **{"main.tf": 'resource "terraform_data" "x" {}\n'})
    assert provider_addresses([builtin]) == []
    explicit = mod("b", **{"versions.tf": 'terraform {\n  required_providers {\n'
                           '    null = { source = "Example.com/Test/Null" }\n  }\n}\n',
                           "main.tf": 'resource "null_thing" "x" {}\nresource "aws_instance" "y" {}\n'
                                      'data "http" "z" {}\nprovider "google" {}\n'})
    assert provider_addresses([builtin, explicit]) == [
        "example.com/test/null", "registry.terraform.io/hashicorp/aws",
        "registry.terraform.io/hashicorp/google", "registry.terraform.io/hashicorp/http"]
