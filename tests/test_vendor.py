"""Workspace copies (run/workspace.py): one `materialize` leaves the
action's workdir holding exactly the planned tree, copied once from the
source, and refuses a source that no longer matches the plan; the copy works
without Linux's in-kernel helpers."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atmosbuild.run.workspace import SMALL, SourceChanged, clone_file, materialize
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


def _run(root: Path, workdir: str = "ws1") -> Path:
    work = root / workdir
    materialize(str(root / "src"), str(work), _plan(root), "src")
    return work


@pytest.fixture
def root(tmp_path):
    (tmp_path / "src" / "lib").mkdir(parents=True)
    (tmp_path / "src" / "main.tf").write_text("resource {}\n")
    (tmp_path / "src" / "lib" / "run.sh").write_text("echo run\n")
    (tmp_path / "src" / "lib" / "run.sh").chmod(0o755)
    (tmp_path / "src" / "link").symlink_to("main.tf")
    return tmp_path


def test_the_workdir_holds_exactly_the_source_as_private_copies(root):
    work = _run(root)
    assert _contents(work) == _contents(root / "src")
    assert not (work / "lib" / "run.sh").samefile(root / "src" / "lib" / "run.sh")


def test_a_local_source_is_copied_once_with_no_vendor_copy(root):
    """SPEC 12: the vendor cache is for remote sources; a local source goes
    straight from the root into the workspace."""
    _run(root)
    assert sorted(p.name for p in root.iterdir()) == ["src", "ws1"]


def test_a_source_edited_after_planning_fails_and_a_big_file_is_verified_too(root):
    plan = _plan(root)
    (root / "src" / "main.tf").write_text("edited after the plan\n")
    with pytest.raises(SourceChanged, match="src/main.tf changed during the rollout"):
        materialize(str(root / "src"), str(root / "ws1"), plan, "src")
    big = root / "src" / "big.bin"
    big.write_bytes(b"x" * (SMALL + 10))
    work = _run(root, "ws2")
    assert (work / "big.bin").read_bytes() == big.read_bytes()
    plan = _plan(root)
    big.write_bytes(b"y" * (SMALL + 10))
    with pytest.raises(SourceChanged, match="big.bin"):
        materialize(str(root / "src"), str(root / "ws3"), plan, "src")
    plan = _plan(root)
    (root / "src" / "main.tf").unlink()
    (root / "src" / "main.tf").mkdir()  # a directory where a planned file was
    with pytest.raises(SourceChanged, match="main.tf"):
        materialize(str(root / "src"), str(root / "ws4"), plan, "src")


_COPY_WITHOUT_KERNEL_HELPERS = """
import os, sys
for name in ("sendfile", "copy_file_range"):
    if hasattr(os, name):
        delattr(os, name)
import fcntl
fcntl.ioctl = None  # no reflinks either: the plain user-space loop must do it
from atmosbuild.run import workspace
workspace._reflink = False
src, dst = sys.argv[1], sys.argv[2]
workspace.clone_file(src, dst, 0o755)
assert not hasattr(os, "sendfile")
"""


def test_copying_works_where_the_os_has_no_sendfile_or_copy_file_range(tmp_path):
    """os.sendfile copies file to file on Linux only: elsewhere (macOS wants
    a socket, Windows has none) the copy falls back to a read/write loop."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * (1 << 20) + 17))
    dst = tmp_path / "copy.bin"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", _COPY_WITHOUT_KERNEL_HELPERS, str(src), str(dst)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mode & 0o777 == 0o755


def test_copying_into_an_existing_longer_file_leaves_no_tail(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"short")
    dst.write_bytes(b"a much longer old content")
    clone_file(str(src), str(dst))
    assert dst.read_bytes() == b"short"


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
def test_after_any_history_the_workdir_equals_the_planned_tree(trees):
    root = Path(tempfile.mkdtemp())
    try:
        for i, tree in enumerate(trees):
            _write_tree(root / "src", tree)
            work = _run(root, f"ws{i}")
            assert _contents(work) == _contents(root / "src")
    finally:
        shutil.rmtree(root)
