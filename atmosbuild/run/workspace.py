"""Rollout workspaces and the vendor cache (SPEC 6, seed design).

    STATE/vendor-cache/deployments/DEPLOYMENT/TARGET/TYPE/NAME/   snapshot of the source
    STATE/workspaces/deployment-UUID/TYPE/NAME/                   where the action runs
    STATE/workspaces/deployment-UUID/.atmos/TYPE%2FNAME.*.json    its vars, outputs, tfvars

The vendor cache is synced from the user's source only where its copy does
not hold the planned bytes, and everything copied is checked against the
digests the action key was computed from (see `materialize`). The cache is
protected by the deployment+target lock.

Workspace files are *copies* (a reflink where the filesystem offers one,
else a byte copy), never hard links: an action that rewrites a file in place,
even as root, changes only its own workspace, never the cache or the source.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil

import xxhash

from ..state.files import file_digest

FICLONE = 0x40049409  # linux/fs.h: share extents copy-on-write (btrfs, xfs, ...)


META_DIR = ".atmos"  # WORKSPACE/.atmos/: our files for each action (vars, outputs)


def meta_stem(cid: str) -> str:
    """A component id as one file name: `terraform/ecr/api` -> `terraform%2Fecr%2Fapi`."""
    return cid.replace("%", "%25").replace("/", "%2F")


class SourceChanged(Exception):
    pass


def uuid4() -> str:
    """A random (version 4) UUID as text; the uuid module costs more to
    import (platform, ...) than a whole no-op run spends on it."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_workspace(state_dir: str) -> str:
    path = os.path.join(state_dir, "workspaces", f"deployment-{uuid4()}")
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import (before any worker thread exists: umask is process-wide).
_UMASK = _umask()


def _write_file(path: str, data: bytes, mode: int, *, new: bool) -> None:
    """Write `data` to `path` with exactly `mode`. `new`: the path cannot exist
    yet (a fresh directory), so no truncation and, under the usual umask, no
    chmod either: one create, one write, one close."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if new else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if not new or mode & _UMASK:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; an old file keeps its own
    finally:
        os.close(fd)


def _read_small(path: str) -> bytes | None:
    """The bytes of a file up to SMALL, or None when it is bigger."""
    with open(path, "rb") as fh:
        data = fh.read(SMALL + 1)
    return None if len(data) > SMALL else data


def _changed(shown: str) -> SourceChanged:
    return SourceChanged(f"{shown} changed during the rollout; re-run to pick it up")


def _source_bytes(src: str, digest: str, shown: str) -> bytes | None:
    """The bytes of a small source file whose digest is the planned one, or
    None for a big one (copied and verified on disk instead)."""
    data = _read_small(src)
    if data is not None and xxhash.xxh3_128_hexdigest(data) != digest:
        raise _changed(shown)
    return data


def _vendor_bytes(path: str, digest: str) -> bytes | None:
    """The vendor copy's bytes if it holds exactly the planned content."""
    try:
        data = _read_small(path)
    except OSError:  # missing, or a directory where the file goes
        return None
    if data is None or xxhash.xxh3_128_hexdigest(data) != digest:
        return None
    return data


def _holds(path: str, digest: str) -> bool:
    try:
        return file_digest(path) == digest
    except OSError:
        return False


def _prune(vendor: str, wanted: dict) -> None:
    """Remove from the vendor copy what the planned tree does not hold:
    files and links not planned (or planned as the other kind), and
    directories no planned path goes through (`x/y` became `x`, ...)."""
    dirs = {rel.rsplit("/", 1)[0] for rel in wanted if "/" in rel}
    dirs |= {d.rsplit("/", i)[0] for d in list(dirs) for i in range(1, d.count("/") + 1)}
    stack = [("", vendor)]
    while stack:
        prefix, path = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                rel = prefix + entry.name
                if entry.is_symlink() or not entry.is_dir():
                    kind = "l" if entry.is_symlink() else "f"
                    if wanted.get(rel, (None,))[0] != kind:
                        os.unlink(entry.path)
                elif rel in dirs:
                    stack.append((rel + "/", entry.path))
                else:
                    shutil.rmtree(entry.path)


def materialize(root: str, source: str | None, vendor: str | None, workdir: str,
                files: dict) -> None:
    """Bring the vendor copy of the planned source tree up to date and give
    the action its private copy at `workdir`, in one pass.

    `files` maps "source:REL" -> [kind, digest, executable] (the key's view).
    The vendor cache keeps no manifest that a crash could leave stale: each
    vendor file is checked against the planned digest as it is copied out
    (read once, hashed, written to the workspace from memory). A vendor file
    that does not match — missing, stale, or edited by hand — is copied again
    from the source, which must itself hold the planned bytes: an edit that
    lands mid-rollout fails the action instead of running content the key
    does not describe.
    """
    os.makedirs(workdir, exist_ok=True)
    if source is None or vendor is None:
        return
    wanted = {name[7:]: entry for name, entry in files.items() if name.startswith("source:")}
    fresh = not os.path.isdir(vendor)
    if fresh:
        os.makedirs(vendor, exist_ok=True)
    else:
        _prune(vendor, wanted)
    made = {vendor, workdir}
    src_dir = f"{root}/{source}" if source != "." else root
    for rel, (kind, digest, exe) in wanted.items():
        # Plain concatenation: rel is a clean relative path, and os.path.join
        # was a visible share of a cold run's time.
        vpath, wpath, src, shown = f"{vendor}/{rel}", f"{workdir}/{rel}", f"{src_dir}/{rel}", f"{source}/{rel}"
        if "/" in rel:
            for parent in (os.path.dirname(vpath), os.path.dirname(wpath)):
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
        if kind == "l":
            if fresh or not os.path.islink(vpath) or os.readlink(vpath) != digest:
                if os.readlink(src) != digest:
                    raise _changed(shown)
                if os.path.lexists(vpath):
                    os.unlink(vpath)
                os.symlink(digest, vpath)
            os.symlink(digest, wpath)
            continue
        mode = 0o755 if exe else 0o644
        data = None if fresh else _vendor_bytes(vpath, digest)
        if data is not None:
            if os.stat(vpath).st_mode & 0o7777 != mode:
                os.chmod(vpath, mode)
        else:
            data = _source_bytes(src, digest, shown)
            if data is not None:
                _write_file(vpath, data, mode, new=fresh)
        if data is not None:
            _write_file(wpath, data, mode, new=True)
            continue
        # A big file: copied on disk (a reflink where possible), verified there.
        if fresh or not _holds(vpath, digest):
            clone_file(src, vpath, mode)
            if file_digest(vpath) != digest:
                os.unlink(vpath)
                raise _changed(shown)
        os.chmod(vpath, mode)
        clone_file(vpath, wpath, mode)
        os.chmod(wpath, mode)
