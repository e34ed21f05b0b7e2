"""The tree cache (state/files.py): a source tree whose every directory and
file keeps its stat signature is listed from the cache; any change a user can
make shows up; signatures too new to trust are never trusted."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atmosbuild.state.files import FileDigester, load_trees, save_trees, signature


def _later() -> int:
    """A clock a minute ahead: the files these tests just wrote are settled."""
    return time.time_ns() + 60 * 10**9


def _fresh(root: Path) -> list:
    """The listing computed from scratch, with no cache of any kind."""
    return FileDigester(str(root), clock=_later).tree("src")


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "src" / "lib").mkdir(parents=True)
    (tmp_path / "src" / "main.tf").write_text("resource {}\n")
    (tmp_path / "src" / "lib" / "util.sh").write_text("util() { :; }\n")
    return tmp_path


def _second_pass(root: Path, first: FileDigester) -> FileDigester:
    """A later run: only the tree cache survives (as on disk), not the stat cache."""
    return FileDigester(str(root), cache={}, trees=first.trees, clock=_later)


def test_an_unchanged_tree_is_listed_from_the_cache_without_reading(tree):
    first = FileDigester(str(tree), clock=_later)
    listing = first.tree("src")
    second = _second_pass(tree, first)
    assert second.tree("src") == listing
    assert second.reads == 0 and not second.trees_changed


@pytest.mark.parametrize("change", [
    "edit", "add_nested", "remove", "rename", "chmod_x", "to_symlink", "same_size_mtime_back",
    "new_subdir", "remove_subdir",
])
def test_every_kind_of_change_is_seen_through_the_cache(tree, change):
    first = FileDigester(str(tree), clock=_later)
    before = first.tree("src")
    util = tree / "src" / "lib" / "util.sh"
    time.sleep(0.01)  # let the timestamp clock tick past the first pass
    if change == "edit":
        util.write_text("util() { echo changed; }\n")
    elif change == "add_nested":
        (tree / "src" / "lib" / "new.sh").write_text("new\n")
    elif change == "remove":
        util.unlink()
    elif change == "rename":
        util.rename(tree / "src" / "lib" / "renamed.sh")
    elif change == "chmod_x":
        util.chmod(0o755)
    elif change == "to_symlink":
        util.unlink()
        util.symlink_to("../main.tf")
    elif change == "same_size_mtime_back":
        old = util.stat()
        util.write_text("UTIL() { :; }\n")
        os.utime(util, ns=(old.st_atime_ns, old.st_mtime_ns))
    elif change == "new_subdir":
        (tree / "src" / "lib" / "deep").mkdir()
        (tree / "src" / "lib" / "deep" / "x.txt").write_text("x\n")
    elif change == "remove_subdir":
        shutil.rmtree(tree / "src" / "lib")
    after = _second_pass(tree, first).tree("src")
    assert after != before
    assert after == _fresh(tree)


def test_a_file_too_new_to_trust_is_read_again_on_the_next_pass(tree):
    """git's "racily clean" case: timestamps have a coarse tick, so a file
    rewritten within the tick of the pass that read it could keep its whole
    signature with new bytes. Such a signature is never trusted later."""
    now = FileDigester(str(tree))  # the real clock: the files were written just now
    listing = now.tree("src")
    assert now.changed == {}  # nothing went into the stat cache
    util = tree / "src" / "lib" / "util.sh"
    old = util.stat()
    util.write_text("UTIL() { :; }\n")  # same size ...
    os.utime(util, ns=(old.st_atime_ns, old.st_mtime_ns))  # ... same mtime
    again = FileDigester(str(tree), cache=dict(now.cache), trees=now.trees)
    assert again.tree("src") != listing
    assert again.reads == 2  # both files, as neither was trusted


def test_the_tree_cache_survives_a_save_and_load_and_ignores_garbage(tree):
    state = tree / ".atmos"
    first = FileDigester(str(tree), clock=_later)
    first.tree("src")
    save_trees(str(state), str(tree), first.trees)
    loaded = load_trees(str(state), str(tree))
    assert FileDigester(str(tree), cache={}, trees=loaded, clock=_later).tree("src") == _fresh(tree)
    assert load_trees(str(state), "/some/other/root") == {}
    (state / "cache" / "trees.marshal").write_bytes(b"\x00garbage")
    assert load_trees(str(state), str(tree)) == {}


def test_no_cache_env_turns_the_tree_cache_off(tree, monkeypatch):
    state = tree / ".atmos"
    first = FileDigester(str(tree), clock=_later)
    first.tree("src")
    monkeypatch.setenv("ATMOS_NO_CACHE", "1")
    save_trees(str(state), str(tree), first.trees)
    assert not (state / "cache" / "trees.marshal").exists()


# -- the property: through any sequence of edits, the cache agrees with a fresh scan --------

_NAMES = st.sampled_from(["a", "b", "c.txt", "d/e", "d/f.sh", "d/g/h", "i/j"])
_EDITS = st.lists(st.tuples(
    st.sampled_from(["write", "same_size", "delete", "chmod", "mkdir_file", "rename", "link"]),
    _NAMES, _NAMES, st.binary(min_size=0, max_size=8)), min_size=1, max_size=12)


def _apply(src: Path, edit, step: int) -> None:
    kind, name, other, data = edit
    path, dest = src / name, src / other
    try:
        if kind == "write":
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_symlink():
                path.unlink()
            path.write_bytes(data)
        elif kind == "same_size" and path.is_file() and not path.is_symlink():
            old = path.stat()
            body = path.read_bytes()
            path.write_bytes(bytes((b + 1) % 256 for b in body))
            os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
        elif kind == "delete" and (path.is_symlink() or path.is_file()):
            path.unlink()
        elif kind == "delete" and path.is_dir():
            shutil.rmtree(path)
        elif kind == "chmod" and path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode ^ 0o100)
        elif kind == "mkdir_file" and not path.exists():
            path.mkdir(parents=True)
            (path / "inner").write_bytes(data)
        elif kind == "rename" and path.exists() and not dest.exists() and not str(dest).startswith(str(path) + "/"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            path.rename(dest)
        elif kind == "link" and not path.exists() and not path.is_symlink():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(other)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, FileNotFoundError):
        pass  # a parent is a file, and the like: that edit does not apply


def _check_history(edits, clock=time.time_ns, pause: float = 0.0) -> None:
    """Apply the edits one by one; after each, the listing through the tree
    cache kept from the passes before must equal a fresh scan."""
    root = Path(tempfile.mkdtemp())
    try:
        src = root / "src"
        src.mkdir()
        (src / "a").write_bytes(b"first")
        trees: dict = {}
        for step, edit in enumerate(edits):
            _apply(src, edit, step)
            digester = FileDigester(str(root), cache={}, trees=trees, clock=clock)
            assert digester.tree("src") == _fresh(root)
            trees = digester.trees
            time.sleep(pause)
    finally:
        shutil.rmtree(root)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_EDITS)
def test_the_cached_listing_always_equals_a_fresh_scan(edits):
    """Real clock: whatever was just touched is too new to trust, as in a real
    run; what settled earlier is listed from the cache."""
    _check_history(edits)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_EDITS)
def test_a_trusted_cache_always_equals_a_fresh_scan(edits):
    """Every record trusted (the clock says the files settled long ago). The
    one thing kept from the real world: an edit never lands in the same
    timestamp tick as the scan before it (the case the racy rule exists for),
    hence the short pause."""
    _check_history(edits, clock=_later, pause=0.01)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_EDITS)
def test_an_up_to_date_record_never_survives_a_change_to_its_trees(edits):
    """The up-to-date record (run/uptodate.py) checks the same signatures in
    one flat pass: whenever the listing changed, the check must find a
    changed path, and pin it on the component whose tree it is."""
    from atmosbuild.graph.dag import build_dag
    from atmosbuild.run.uptodate import (Record, RecordedGraph, RecordedNode, changed_paths,
                                         dirty_nodes)

    root = Path(tempfile.mkdtemp())
    try:
        src = root / "src"
        src.mkdir()
        (src / "a").write_bytes(b"first")
        graph = RecordedGraph((), {}, {"command/x": RecordedNode("d", "dev", "command/x", "apply", "src")},
                              build_dag({"command/x": []}))
        for step, edit in enumerate(edits):
            digester = FileDigester(str(root), clock=_later)
            before = digester.tree("src")
            _, paths, sigs, _, _ = digester.trees["src"]
            record = Record(graph, paths[:1], sigs[:1], paths[1:], sigs[1:], (), frozenset(), {}, ())
            assert changed_paths(record) == []
            time.sleep(0.01)
            _apply(src, edit, step)
            if _fresh(root) != before:
                changed = changed_paths(record)
                assert changed
                assert dirty_nodes(record, str(root), changed) == {"command/x"}
    finally:
        shutil.rmtree(root)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), workers=st.integers(2, 4),
       changes=st.lists(st.tuples(st.integers(0, 59), st.sampled_from(["edit", "remove", "touch"])),
                        max_size=8))
def test_the_record_check_finds_the_same_changes_in_helper_processes(n, workers, changes):
    """changed_in shares big checks with forked helpers: whatever
    moved, and however the paths are shared out, the answer is the one a
    single pass gives, in the same order."""
    from atmosbuild.state import files as files_mod

    root = Path(tempfile.mkdtemp())
    try:
        paths = []
        for i in range(n):
            path = root / f"f{i}"
            path.write_bytes(b"x" * i)
            paths.append(str(path))
        sigs = tuple(signature(os.lstat(p)) for p in paths)
        expected = set()
        for index, kind in changes:
            if index >= n or not os.path.exists(paths[index]):
                continue
            if kind == "remove":
                os.unlink(paths[index])
            elif kind == "edit":
                with open(paths[index], "ab") as fh:
                    fh.write(b"more")
            else:
                os.utime(paths[index], ns=(1, 1))
            expected.add(paths[index])
        serial = files_mod.changed_in([(paths, sigs, False)], workers=1)
        forked = files_mod._changed_forked([(paths, sigs, False)], workers)
        # Two groups, as the up-to-date record checks them (the second by stat).
        half = n // 2
        groups = [(paths[half:], sigs[half:], False), (paths[:half], sigs[:half], True)]
        twice = files_mod._changed_forked(groups, workers)
        assert serial == forked == [p for p in paths if p in expected]
        assert twice == [p for p in paths[half:] + paths[:half] if p in expected]
        assert files_mod.changed_in(groups, workers=1) == twice
    finally:
        shutil.rmtree(root)
