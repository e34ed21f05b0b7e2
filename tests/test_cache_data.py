"""Caches hold data, never code (SPEC 14). `.atmos/` lives in the repository
and may come with a clone: whatever its cache files hold, no command runs
code from them. Every file there is replaced by a pickle whose loading
would create a file, and by marshal data holding a code object; every
command still works (the caches are rebuilt) and nothing ever runs."""

from __future__ import annotations

import json
import marshal
import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RECORD, REPO, ran, settle, write_chain
from atmosbuild.components import TYPES
from atmosbuild.fileops import load_plain, plain_data


class Planted:
    """Unpickling this creates `path`: the proof a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _cache_files(ws) -> list:
    return sorted(p for p in (ws.state / "cache").rglob("*") if p.is_file())


def _plant(ws, payload: bytes) -> list:
    files = _cache_files(ws)
    for path in files:
        path.write_bytes(payload)
    return files


def _payloads(proof: str) -> dict[str, bytes]:
    code = compile(f"__import__('os').mkdir({proof!r})", "planted", "exec")
    return {
        "pickle": pickle.dumps(Planted(proof)),
        "pickle in a marshal record": marshal.dumps((4, "token", pickle.dumps(Planted(proof)))),
        "code object": marshal.dumps(code),
        "code object inside a record": marshal.dumps((4, "token", ((), (), {"n": code}), code)),
        # Plain data shaped like the structure cache's encoding, naming a
        # function where a dataclass of atmosbuild belongs.
        "a function as a class": marshal.dumps((1, (b"D", "builtins:eval", ("1",), ()), True)),
        "a module function as a class": marshal.dumps((1, (b"D", "atmosbuild.cli:main", (), ()), True)),
    }


@pytest.mark.parametrize("kind", sorted(_payloads("x")))
def test_a_planted_cache_never_runs_and_every_command_still_works(ws, kind):
    write_chain(ws)
    settle()
    assert ws.run("rollout", "//app:dev").returncode == 0
    ws.write("src/base/lib/util.sh", "util v2\n")  # a partial rollout: the record's delta too
    assert ws.run("rollout", "//app:dev").returncode == 0
    ran(ws)
    names = {p.name.split("-")[0].split(".")[0] for p in _cache_files(ws)}
    assert {"structure", "nodes", "trees", "uptodate"} <= names, names
    assert any(p.suffix == ".delta" for p in _cache_files(ws))
    proof = ws.root.parent / "PWNED"
    payload = _payloads(str(proof))[kind]
    planted = _plant(ws, payload)
    for args in (["plan", "//app:dev"], ["status", "//app:dev"], ["validate"],
                 ["explain", "//app:dev", "command/app"], ["rollout", "//app:dev"],
                 ["rollout", "//app:dev"]):
        proc = ws.run(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and not proof.exists(), args
    assert ran(ws) == []  # the state said so: nothing ran, whatever the caches held
    rebuilt = [p for p in planted if p.exists() and p.read_bytes() != payload]
    assert rebuilt, "no cache was rebuilt"
    ws.write("src/solo/main.sh", "echo solo v2\n")  # and they work again
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/solo"] and not proof.exists()


def test_the_parse_cache_in_the_user_cache_holds_data_only_too(ws):
    """The parsed-document cache lives in XDG_CACHE_HOME (private to the
    suite): a planted entry there is not run either."""
    write_chain(ws)
    assert ws.run("validate").returncode == 0
    base = os.environ["XDG_CACHE_HOME"]
    entries = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(base, "atmosbuild")) for f in fs
               if f.endswith(".marshal")]
    assert entries
    proof = ws.root.parent / "PWNED"
    code = compile(f"__import__('os').mkdir({str(proof)!r})", "planted", "exec")
    for entry in entries:
        with open(entry, "wb") as fh:
            fh.write(marshal.dumps({"deployment": code}))
    proc = ws.run("validate")
    assert proc.returncode == 0 and not proof.exists(), proc.stderr


def test_nothing_in_atmosbuild_unpickles():
    """The simplest proof there is no unpickling: no module loads a pickle."""
    import re

    pattern = re.compile(r"\bpickle\.loads?\b|\bUnpickler\b|^\s*import shelve|\bmarshal\.loads?\(")
    offenders = []
    for base, _, files in os.walk(REPO / "atmosbuild"):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(base, name)
                with open(path, encoding="utf-8") as fh:
                    for number, line in enumerate(fh, 1):
                        if pattern.search(line) and not line.lstrip().startswith("#"):
                            offenders.append(f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}")
    # marshal is read in two places only: in fileops.load_plain (which
    # checks), and from the stat helpers' own pipe (never a file).
    allowed = ("atmosbuild/fileops.py:", "atmosbuild/state/files.py:")
    assert [o for o in offenders if not o.startswith(allowed)] == []
    assert [o for o in offenders if o.startswith("atmosbuild/state/files.py:")] == [
        next(o for o in offenders if "marshal.loads(data)]" in o)]


# -- the check itself ------------------------------------------------------------------

PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: (st.lists(inner) | st.tuples(inner, inner) | st.dictionaries(st.text(), inner)
                   | st.frozensets(st.integers() | st.text())),
    max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(value=PLAIN)
def test_plain_data_reads_back_and_passes(value):
    assert load_plain(marshal.dumps(value)) == value


@settings(max_examples=300, deadline=None)
@given(value=PLAIN, where=st.integers(0, 1000))
def test_a_code_object_anywhere_is_refused(value, where):
    code = compile("1", "x", "eval")

    def plant(v, n):
        """`v` with the code object put in `n` levels down (or where the path ends)."""
        if isinstance(v, (list, tuple)):
            if n == 0 or not v:
                return type(v)([*v, code])
            i = n % len(v)
            return type(v)([*v[:i], plant(v[i], n - 1), *v[i + 1:]])
        if isinstance(v, dict):
            if n == 0 or not v:
                return {**v, "k": code}
            key = list(v)[n % len(v)]
            return {**v, key: plant(v[key], n - 1)}
        if isinstance(v, frozenset):
            return frozenset({*v, code})
        return [v, code]

    planted = plant(value, where)
    assert not plain_data(planted)
    with pytest.raises(ValueError):
        load_plain(marshal.dumps(planted))


def test_shared_containers_cannot_make_the_check_run_away():
    """marshal shares one object many times over; nesting shared lists 60
    deep names 2**60 items in a few bytes: the budget stops the walk."""
    value: list = [1]
    for _ in range(60):
        value = [value, value]
    data = marshal.dumps(value)
    assert len(data) < 2000
    with pytest.raises(ValueError):
        load_plain(data)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        load_plain(marshal.dumps(cyclic))


def test_the_structure_cache_keeps_every_field_and_type(tmp_path):
    """The encoding round-trips what the structure holds, exactly: tuples
    stay tuples, keys stay Labels, documents come back lazily."""
    from atmosbuild.config.labels import Label
    from atmosbuild.config.workspace import load_specs
    from atmosbuild.graph.actions import build_structure
    from atmosbuild.graph.cache import decode, encode

    root = tmp_path / "ws"
    (root / "app").mkdir(parents=True)
    (root / "atmos.yaml").write_text("{}\n")
    (root / "app" / "BUILD.atmos").write_text(
        'deployment "app" {\n  vars { region = "eu" }\n  target "dev" {}\n  target "prod" {}\n'
        '  command "a" {\n    run = ["echo", "${var.region}"]\n    inputs = ["x/*"]\n  }\n'
        '  command "b" {\n    run = "echo b"\n    depends_on = ["command/a"]\n    timeout = 1.5\n  }\n}\n')
    labels = [Label("app", "dev"), Label("app", "prod")]
    specs = load_specs(str(root), labels, TYPES)
    st_ = build_structure(specs, labels)
    back = decode(load_plain(marshal.dumps(encode(st_))))
    assert back.resolved == st_.resolved and back.where == st_.where and back.specs == st_.specs
    assert back.dag.order == st_.dag.order and dict(back.dag.deps) == dict(st_.dag.deps)
    comp = back.resolved[labels[0]]["command/a"]
    assert type(comp.run) is tuple and comp.run == ("echo", "eu") and type(comp.inputs) is tuple
    assert all(type(label) is Label for label in back.resolved)
    doc = back.specs[labels[0]].document
    assert doc.file.endswith("BUILD.atmos") and doc.locate(("deployment",)) is not None
    assert json.dumps(back.where[st_.dag.order[0]][1])  # plain strings


def test_every_example_deployment_is_cached_not_skipped():
    """An unencodable value (say a function some type put in a resolved
    component) would silently switch the structure cache off: every example
    (command, terraform, nixpack; YAML and DSL) must encode and read back."""
    from atmosbuild.config.labels import Label
    from atmosbuild.config.workspace import discover_packages, load_package, load_specs
    from atmosbuild.graph.actions import build_structure
    from atmosbuild.graph.cache import decode, encode

    root = str(REPO / "examples")
    packages = discover_packages(root)
    assert len(packages) >= 3
    for package in packages:
        spec = load_package(root, package, TYPES)
        labels = [Label(package, target) for target in spec.targets]
        st_ = build_structure(load_specs(root, labels, TYPES), labels)
        back = decode(load_plain(marshal.dumps(encode(st_))))
        assert back.resolved == st_.resolved and back.specs == st_.specs, package
