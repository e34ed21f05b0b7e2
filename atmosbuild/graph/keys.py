"""Action keys: xxh3-128 over a canonical encoding of everything an action
depends on (SPEC 5).

A key has two parts. The *local ingredients* (type and version, resolved
vars/env/run, source tree and `inputs` files, timeout) are known at plan
time. The *upstream result digests* are only known once each dependency is
done in this rollout (or cached), which is what gives early cutoff: an
upstream that re-runs to the same outputs leaves its dependents' keys alone.

The ingredients are kept (and stored) in a form that explains a change:
values of sensitive vars/env, and every argv item or string-run value built
from one, are replaced by their digest, so nothing secret is ever stored,
while any change to them still changes the key.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterable, Mapping, Protocol

import xxhash

from ..config.resolve import ResolvedComponent
from ..config.workspace import outside_root
from ..sources import is_remote, shown_source

FileEntry = tuple  # (relpath, kind, digest, executable) with kind "f" (file) or "l" (symlink)


class Digester(Protocol):
    """Where the digests of files come from: state/files.FileDigester (behind
    the stat caches, which live with the store), or a test's own. Graph
    computes keys over the digests it is handed and reads no file's bytes."""

    root: str

    def tree(self, rel_dir: str) -> list[FileEntry]:
        """Every file under `rel_dir` (root-relative), sorted by path, paths
        relative to `rel_dir`; symlinks recorded, not followed."""

    def files(self, rels: Iterable[str]) -> list[FileEntry]:
        """The given root-relative regular files, sorted by path."""


def canonical(value: Any) -> str:
    """One text per value: sorted keys, no whitespace, tuples as lists."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_default)


def _default(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def digest(value: Any) -> str:
    return xxhash.xxh3_128_hexdigest(canonical(value).encode())


def secret_digest(value: Any) -> dict:
    return {"sha": digest(["secret", value])}


def config_ingredients(comp: ResolvedComponent, type_version: str, key_vars=None) -> dict:
    """The configuration half of the local ingredients (no files).

    `key_vars`: the only vars that can change what the type does (None: all).
    A build-mode type that reads none of the deployment's vars must not get
    a new key because `replicas` differs between dev and prod.
    """
    hidden = set(comp.sensitive)
    secret_run = set(comp.secret_run)
    vars_ = comp.vars if key_vars is None else {k: v for k, v in comp.vars.items() if k in key_vars}
    run = comp.run
    if isinstance(run, tuple):
        run = [secret_digest(a) if i in secret_run else a for i, a in enumerate(run)]
    out = {
        "type": f"{comp.type}/{type_version}",
        "vars": {k: secret_digest(v) if k in hidden else v for k, v in vars_.items()},
        "env": {k: secret_digest(v) if k in hidden else v for k, v in comp.env.items()},
        "run": run,
        "source": shown_source(comp.source) if is_remote(comp.source) else comp.source,
        "timeout": comp.timeout,
    }
    if comp.run_env:  # the values a string-form run expands (the template holds none)
        out["run_values"] = {k: secret_digest(v) if k in secret_run else v
                             for k, v in comp.run_env.items()}
    return out


def file_ingredients(comp: ResolvedComponent, digester: Digester, tree=None) -> dict:
    """The files half: source tree and `inputs`, path -> [kind, digest, exec].
    `tree`: the source's entries when they do not come from the root (a git
    source's subtree in the vendor cache)."""
    files: dict[str, list] = {}
    if tree is None and comp.source is not None:
        tree = digester.tree(comp.source)
    if tree is not None:
        for rel, kind, dig, exe in tree:
            files[f"source:{rel}"] = [kind, dig, exe]
    for rel, kind, dig, exe in digester.files(expand_inputs(digester.root, comp.inputs)):
        files[f"inputs:{rel}"] = [kind, dig, exe]
    return files


def local_ingredients(comp: ResolvedComponent, type_version: str,
                      digester: Digester, key_vars=None) -> dict:
    """Everything but the upstream results, as canonical-encodable data."""
    return {**config_ingredients(comp, type_version, key_vars),
            "files": file_ingredients(comp, digester)}


def local_canonical(config_canonical: str, files: Mapping) -> str:
    """The canonical text of the local ingredients, from the (cacheable)
    canonical text of the configuration half and the files half."""
    # One record per file, sorted by name: name, kind, digest, exec bit. Names
    # hold no control characters and digests are hex; a symlink's target can
    # hold anything, so it is JSON-quoted.
    parts = [config_canonical, "\x1dfiles"]
    for name in sorted(files):
        kind, dig, exe = files[name]
        parts.append(f"{name}\x1f{kind}\x1f{dig if kind == 'f' else canonical(dig)}\x1f{exe:d}")
    return "\x1e".join(parts)


class InputOutsideRoot(ValueError):
    """An `inputs` glob matched a file that is outside the root once
    symlinks are followed (`**` descends into symlinked directories)."""

    def __init__(self, index: int, pattern: str, rel: str) -> None:
        super().__init__(f"inputs '{pattern}' matches '{rel}', which resolves outside "
                         "the workspace root")
        self.index, self.pattern, self.rel = index, pattern, rel


def expand_inputs(root: str, patterns) -> list[str]:
    """Root-relative regular files matched by `inputs` globs (`**` recurses).

    The globs run relative to `root` (`root_dir`), so glob characters in the
    root's own path are not taken for patterns. Raises InputOutsideRoot for a
    match that a symlinked directory leads outside the root.
    """
    if not patterns:
        return []
    real_root = os.path.realpath(root)
    real_dirs: dict[str, str] = {}
    out = set()
    for index, pattern in enumerate(patterns):
        for rel in glob.iglob(pattern, root_dir=root, recursive=True):
            path = os.path.join(root, rel)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            parent = os.path.dirname(path)
            real_parent = real_dirs.get(parent)
            if real_parent is None:
                real_parent = real_dirs[parent] = os.path.realpath(parent)
            if outside_root(os.path.relpath(real_parent, real_root)):
                raise InputOutsideRoot(index, pattern, rel.replace(os.sep, "/"))
            out.add(os.path.normpath(rel).replace(os.sep, "/"))
    return sorted(out)


def action_key(local_canonical: str, upstream: Mapping[str, str]) -> str:
    """The key: local ingredients (already canonical text) + upstream results."""
    h = xxhash.xxh3_128(local_canonical.encode())
    h.update(b"\0upstream\0")
    # Sorted id/digest pairs; ids hold no control characters, digests are hex,
    # so \x1f and \x1e separate unambiguously (cheaper than JSON per node).
    h.update("\x1e".join(f"{dep}\x1f{upstream[dep]}" for dep in sorted(upstream)).encode())
    return h.hexdigest()


def result_digest(key: str, outputs: Mapping | None) -> str:
    """What dependents key on: the outputs' digest when there are outputs,
    else the key itself (SPEC 5)."""
    if outputs:
        return digest(["outputs", outputs])
    return key
