"""Rollout workspaces and the vendor cache (SPEC 6, seed design).

    STATE/vendor-cache/deployments/DEPLOYMENT/TARGET/TYPE/NAME/   snapshot of the source
    STATE/workspaces/deployment-UUID/TYPE/NAME/                   where the action runs

The vendor cache is synced from the user's source only where a file's digest
moved, and each synced file is checked against the digest the action key was
computed from: an edit that lands mid-rollout fails the action instead of
running content the key does not describe. The cache is protected by the
deployment+target lock.

Workspace files are *copies* (a reflink where the filesystem offers one,
else a byte copy), never hard links: an action that rewrites a file in place,
even as root, changes only its own workspace, never the cache or the source.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid

import xxhash

from ..state.files import file_digest

FICLONE = 0x40049409  # linux/fs.h: share extents copy-on-write (btrfs, xfs, ...)
MANIFEST = ".atmos-vendor.json"


class SourceChanged(Exception):
    pass


def new_workspace(state_dir: str) -> str:
    path = os.path.join(state_dir, "workspaces", f"deployment-{uuid.uuid4()}")
    os.makedirs(path)
    return path


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def vendor_dir(state_dir: str, deployment: str, target: str, cid: str) -> str:
    return os.path.join(state_dir, "vendor-cache", "deployments", *deployment.split("/"), target,
                        *cid.split("/"))


_reflink = True  # cleared the first time the filesystem says it cannot
SMALL = 1 << 20  # files up to this size are copied through memory, once read


def clone_file(src: str, dst: str, mode: int = 0o644) -> None:
    """Copy src to dst as an independent file: reflink if possible, else bytes."""
    global _reflink
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            if _reflink:
                try:
                    fcntl.ioctl(fd, FICLONE, fin.fileno())
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                                         errno.ENOSYS, errno.EBADF, errno.EPERM):
                        raise
                    _reflink = False  # not on this filesystem: stop asking
            size = os.fstat(fin.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fd, fin.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        finally:
            os.close(fd)


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _read_verified(src: str, digest: str, shown: str) -> bytes | None:
    """The bytes of a small source file whose digest is the planned one, or
    None for a big one (copied and verified on disk instead)."""
    with open(src, "rb") as fh:
        data = fh.read(SMALL + 1)
    if len(data) > SMALL:
        return None
    if xxhash.xxh3_128_hexdigest(data) != digest:
        raise SourceChanged(f"{shown} changed during the rollout; re-run to pick it up")
    return data


def sync_vendor(root: str, source: str, vendor: str, files: dict) -> dict[str, bytes]:
    """Make `vendor` an exact copy of the planned source tree.

    `files` maps "source:REL" -> [kind, digest, executable] (the key's view).
    Only files whose digest moved are copied; each copy is verified against
    the planned digest. Returns the bytes of the small files it just copied,
    so `materialize` need not read them back.
    """
    manifest_path = os.path.join(vendor, MANIFEST)
    try:
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        manifest = {}
    fresh_dir = not os.path.isdir(vendor)
    os.makedirs(vendor, exist_ok=True)
    wanted = {name[len("source:"):]: entry for name, entry in files.items() if name.startswith("source:")}
    for rel in set(manifest) - set(wanted):
        try:
            os.unlink(os.path.join(vendor, rel))
        except FileNotFoundError:
            pass
    changed = False
    copied: dict[str, bytes] = {}
    made = {vendor}
    for rel, (kind, digest, exe) in wanted.items():
        if manifest.get(rel) == [kind, digest, exe]:
            continue
        changed = True
        dst = os.path.join(vendor, rel)
        if fresh_dir:
            parent = os.path.dirname(dst)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
        else:
            _make_room(vendor, rel)
        src = os.path.join(root, source, rel)
        shown = f"{source}/{rel}"
        if kind == "l":
            target = os.readlink(src)
            if target != digest:
                raise SourceChanged(f"{shown} changed during the rollout; re-run to pick it up")
            os.symlink(target, dst)
        else:
            mode = 0o755 if exe else 0o644
            data = _read_verified(src, digest, shown)
            if data is not None:
                _write_new(dst, data, mode)
                copied[rel] = data
            else:
                clone_file(src, dst, mode)
                if file_digest(dst) != digest:
                    os.unlink(dst)
                    raise SourceChanged(f"{shown} changed during the rollout; re-run to pick it up")
            os.chmod(dst, mode)  # an existing file keeps its mode through O_CREAT
        manifest[rel] = [kind, digest, exe]
    for rel in set(manifest) - set(wanted):
        del manifest[rel]
        changed = True
    if changed or not os.path.exists(manifest_path):
        tmp = manifest_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh)
        os.replace(tmp, manifest_path)
    return copied


def _make_room(vendor: str, rel: str) -> None:
    """Clear the way for VENDOR/REL: a directory where the file goes, or a
    file where one of its parent directories goes, is what the source held
    before (`x/y` became `x`, or the other way round)."""
    path = vendor
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
            os.unlink(path)
    os.makedirs(os.path.dirname(os.path.join(vendor, rel)), exist_ok=True)
    dst = os.path.join(vendor, rel)
    if os.path.isdir(dst) and not os.path.islink(dst):
        shutil.rmtree(dst)
    elif os.path.lexists(dst):
        os.unlink(dst)


def materialize(vendor: str | None, workdir: str, files: dict,
                copied: dict[str, bytes] | None = None) -> None:
    """Populate an action's workdir from the vendor cache with private
    copies (`copied`: bytes sync_vendor just wrote, to save reading them)."""
    os.makedirs(workdir, exist_ok=True)
    if vendor is None:
        return
    copied = copied or {}
    made = {workdir}
    for name, (kind, digest, exe) in files.items():
        if not name.startswith("source:"):
            continue
        rel = name[len("source:"):]
        dst = os.path.join(workdir, rel)
        parent = os.path.dirname(dst)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if kind == "l":
            os.symlink(digest, dst)
            continue
        mode = 0o755 if exe else 0o644
        data = copied.get(rel)
        if data is not None:
            _write_new(dst, data, mode)
        else:
            clone_file(os.path.join(vendor, rel), dst, mode)
        os.chmod(dst, mode)  # O_CREAT's mode is filtered by the umask
