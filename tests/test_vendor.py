"""The vendor cache and workspace copies (run/workspace.py): whatever the
vendor cache held before — nothing, an older tree, a hand-edited file — one
`materialize` leaves it and the action's workdir holding exactly the planned
tree, and refuses a source that no longer matches the plan."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atmosbuild.run.workspace import SMALL, SourceChanged, materialize
from atmosbuild.state.files import FileDigester


def _plan(root: Path) -> dict:
    """The key's view of root/src, as the rollout passes it."""
    return {f"source:{rel}": [kind, digest, exe]
            for rel, kind, digest, exe in FileDigester(str(root)).tree("src")}


def _contents(base: Path) -> dict:
    """Every file and link under base: content (or link target) and exec bit."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(base))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            else:
                out[rel] = (path.read_bytes(), bool(path.stat().st_mode & stat.S_IXUSR))
    return out


def _run(root: Path, workdir: str = "ws1") -> tuple[Path, Path]:
    vendor, work = root / "vendor", root / workdir
    materialize(str(root), "src", str(vendor), str(work), _plan(root))
    return vendor, work


@pytest.fixture
def root(tmp_path):
    (tmp_path / "src" / "lib").mkdir(parents=True)
    (tmp_path / "src" / "main.tf").write_text("resource {}\n")
    (tmp_path / "src" / "lib" / "run.sh").write_text("echo run\n")
    (tmp_path / "src" / "lib" / "run.sh").chmod(0o755)
    (tmp_path / "src" / "link").symlink_to("main.tf")
    return tmp_path


def test_a_fresh_vendor_cache_and_workdir_hold_exactly_the_source(root):
    vendor, work = _run(root)
    assert _contents(vendor) == _contents(root / "src") == _contents(work)
    assert not (work / "lib" / "run.sh").samefile(vendor / "lib" / "run.sh")  # private copies


def test_a_hand_edited_vendor_file_is_copied_again(root):
    vendor, _ = _run(root)
    (vendor / "main.tf").write_text("tampered\n")
    (vendor / "lib" / "run.sh").chmod(0o644)
    (vendor / "stray.txt").write_text("not in the source\n")
    vendor, work = _run(root, "ws2")
    assert _contents(vendor) == _contents(root / "src") == _contents(work)


def test_kind_swaps_and_removals_in_the_source_reach_the_vendor_cache(root):
    _run(root)
    shutil.rmtree(root / "src" / "lib")
    (root / "src" / "lib").write_text("lib is a file now\n")
    (root / "src" / "main.tf").unlink()
    (root / "src" / "main.tf").mkdir()
    (root / "src" / "main.tf" / "inner.tf").write_text("inner\n")
    vendor, work = _run(root, "ws2")
    assert _contents(vendor) == _contents(root / "src") == _contents(work)


def test_a_source_edited_after_planning_fails_and_a_big_file_is_verified_too(root):
    plan = _plan(root)
    (root / "src" / "main.tf").write_text("edited after the plan\n")
    with pytest.raises(SourceChanged, match="src/main.tf changed during the rollout"):
        materialize(str(root), "src", str(root / "vendor"), str(root / "ws1"), plan)
    big = root / "src" / "big.bin"
    big.write_bytes(b"x" * (SMALL + 10))
    vendor, work = _run(root, "ws2")
    assert (work / "big.bin").read_bytes() == big.read_bytes() == (vendor / "big.bin").read_bytes()
    plan = _plan(root)
    big.write_bytes(b"y" * (SMALL + 10))
    with pytest.raises(SourceChanged, match="big.bin"):
        materialize(str(root), "src", str(root / "vendor2"), str(root / "ws3"), plan)


_RELS = st.sampled_from(["a", "b.sh", "d/c", "d/e/f", "g", "g/h"])
_ENTRY = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=6), st.booleans()),
    st.tuples(st.just("link"), st.sampled_from(["a", "../x", "d"]), st.just(False)),
)
_TREES = st.lists(st.dictionaries(_RELS, _ENTRY, max_size=5), min_size=1, max_size=5)


def _write_tree(src: Path, tree: dict) -> None:
    if src.exists():
        shutil.rmtree(src)
    src.mkdir()
    for rel, (kind, value, exe) in sorted(tree.items()):
        path = src / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "file":
                path.write_bytes(value)
                path.chmod(0o755 if exe else 0o644)
            else:
                path.symlink_to(value)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass  # "g" and "g/h" both planned: the first one written wins


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees=_TREES)
def test_after_any_history_vendor_and_workdir_equal_the_planned_tree(trees):
    root = Path(tempfile.mkdtemp())
    try:
        for i, tree in enumerate(trees):
            _write_tree(root / "src", tree)
            vendor, work = _run(root, f"ws{i}")
            expected = _contents(root / "src")
            assert _contents(vendor) == expected
            assert _contents(work) == expected
    finally:
        shutil.rmtree(root)
