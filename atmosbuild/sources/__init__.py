"""Where a component's source comes from (SPEC 12): a directory under the
root (local), or `git::URL//SUBDIR?ref=REF` (git.py, through the vendor
cache). This module is the small common face: is it remote, how it is
shown, where its files are once compiled. It imports nothing heavy."""

from __future__ import annotations

from typing import Mapping

GIT_PREFIX = "git::"


def is_remote(source: str | None) -> bool:
    return source is not None and source.startswith(GIT_PREFIX)


def shown_source(source: str | None) -> str:
    """The source as messages may show it: credentials in a URL masked."""
    if not is_remote(source):
        return source or ""
    from .git import mask_url

    return mask_url(source)


def source_dir(root: str, state_dir: str, source: str | None, local: Mapping) -> str | None:
    """The directory a compiled node's source files are copied from: under
    the root, or its commit's tree in the vendor cache (`local` is the
    node's local ingredients, which name the commit)."""
    if source is None:
        return None
    if is_remote(source):
        from .git import parse_git_source, tree_dir

        return tree_dir(state_dir, local["commit"], parse_git_source(source).subdir)
    return f"{root}/{source}" if source != "." else root
