"""Rollout workspaces (SPEC 6).

    STATE/workspaces/deployment-UUID/TYPE/NAME/                   where the action runs
    STATE/workspaces/deployment-UUID/.atmos/TYPE%2FNAME.*.json    its vars, outputs, tfvars
    STATE/trash/UUID/                                            a finished workspace, being removed

Each action's source is copied *once*, straight from where it lives into
its directory: a local source from the root, a git source from its commit's
tree in the vendor cache (sources/git.py). Every file is verified against the
digest the action key was computed from as it is copied (small files are read
once, hashed and written from memory; big ones copied on disk and the copy
hashed), so an edit that lands mid-rollout fails the action instead of
running content the key does not describe. (The seed kept a second copy of
every local source in the vendor cache first: twice the inodes of a cold run
for nothing a user could see.)

Workspace files are *copies* (a reflink where the filesystem offers one,
else a byte copy), never hard links: an action that rewrites a file in place,
even as root, changes only its own workspace, never the source or the cache.

Removing a finished workspace (tens of thousands of inodes for a large
rollout) would keep the process alive after its summary: it is renamed into
STATE/trash/ (one rename) and removed there by a detached helper process;
whatever the helper leaves (it was killed, the machine went down) the next
removal or `clean --workspaces` sweeps.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import xxhash

from ..state.files import file_digest

try:  # Linux (and a few others): share extents copy-on-write (btrfs, xfs, ...)
    import fcntl
    FICLONE = 0x40049409  # linux/fs.h
except ImportError:  # pragma: no cover - Windows
    fcntl = None


META_DIR = ".atmos"  # WORKSPACE/.atmos/: our files for each action (vars, outputs)
TRASH_DIR = "trash"  # STATE/trash/: workspaces on their way out


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
    parent = os.path.join(state_dir, "workspaces")
    path = os.path.join(parent, f"deployment-{uuid4()}")
    os.makedirs(parent, exist_ok=True)
    spread_out(parent)  # before the workspace's own directory is made in it
    os.mkdir(path)
    return path


# ext4 places a new directory's inodes near its parent's (the Orlov
# allocator), except below a directory flagged "top of a hierarchy"
# (FS_TOPDIR_FL, `chattr +T`), whose subdirectories are spread over block
# groups with free inodes. On ext4 without a journal, allocating an inode
# skips, one buffer lookup each, every inode of its group freed in the last
# minute or so (`recently_deleted`), so a cold rollout right after another
# one (or after `rm -rf .atmos`) paid for every file the last one removed:
# 40,000 creates took 58 s after 40,000 deletes in the same groups, 4-7 s in
# a spread-out directory (measured on this VM's disk). Elsewhere the flag is
# ignored or refused, and nothing else changes.
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000
_spread: set[str] = set()


def spread_out(directory: str) -> None:
    """Flag `directory` FS_TOPDIR_FL (see above), best effort, once per process."""
    if directory in _spread or fcntl is None or not sys.platform.startswith("linux"):
        return
    _spread.add(directory)
    import struct

    if struct.calcsize("l") != 8:  # (the ioctl numbers above are the 64-bit ones)
        return
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags | _FS_TOPDIR_FL))
    except OSError:
        pass  # not ext2/3/4, or not ours to flag
    finally:
        os.close(fd)


# -- removal ---------------------------------------------------------------------

# A workspace with fewer entries than this is removed in place: starting the
# helper costs more than unlinking a few hundred files.
DETACH_MIN = 512


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_workspace(state_dir: str, path: str, entries: int | None = None) -> None:
    """Make `path` disappear now and its inodes soon: renamed into the trash
    and removed by a detached process (see the module doc). `entries`: about
    how many files it holds (None: many)."""
    if entries is not None and entries < DETACH_MIN:
        remove_tree(path)
        return
    trash = os.path.join(state_dir, TRASH_DIR)
    aside = os.path.join(trash, uuid4())
    try:
        os.makedirs(trash, exist_ok=True)
        os.rename(path, aside)
    except OSError:
        remove_tree(path)
        return
    if not empty_trash(state_dir):
        remove_tree(aside)


_EMPTY = ("import os, shutil, sys\n"
          "for name in os.listdir(sys.argv[1]):\n"
          "    shutil.rmtree(os.path.join(sys.argv[1], name), ignore_errors=True)\n")


def empty_trash(state_dir: str) -> bool:
    """Start removing everything in STATE/trash/ in a detached process (its
    own session, no terminal, nothing inherited); False when it could not be
    started."""
    trash = os.path.join(state_dir, TRASH_DIR)
    try:
        subprocess.Popen([sys.executable, "-S", "-E", "-c", _EMPTY, trash],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
                         cwd=state_dir)
    except OSError:
        return False
    return True


# -- copying ---------------------------------------------------------------------

_reflink = fcntl is not None  # cleared the first time the filesystem says it cannot
SMALL = 1 << 20  # files up to this size are copied through memory, once read
_NOT_HERE = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
             errno.EBADF, errno.EPERM)


def clone_file(src: str, dst: str, mode: int = 0o644) -> None:
    """Copy src to dst as an independent file: a reflink where the
    filesystem shares extents, else the kernel's in-kernel copy
    (copy_file_range, then sendfile, where the platform has them), else a
    plain read/write loop — so it works on any OS Python runs on."""
    global _reflink
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), mode)
        try:
            if _reflink:
                try:
                    fcntl.ioctl(fd, FICLONE, fin.fileno())
                    return
                except OSError as exc:
                    if exc.errno not in _NOT_HERE:
                        raise
                    _reflink = False  # not on this filesystem: stop asking
            size = os.fstat(fin.fileno()).st_size
            if _kernel_copy(fin.fileno(), fd, size):
                return
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            fin.seek(0)
            with open(fd, "wb", closefd=False) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        finally:
            os.close(fd)


def _kernel_copy(fin: int, fout: int, size: int) -> bool:
    """Copy `size` bytes inside the kernel; False when the platform or the
    filesystem offers no way (the caller copies through user space)."""
    for name in ("copy_file_range", "sendfile"):
        call = getattr(os, name, None)
        if call is None:
            continue
        offset = 0
        try:
            while offset < size:
                if name == "sendfile":
                    sent = call(fout, fin, offset, size - offset)
                else:
                    sent = call(fin, fout, size - offset, offset, offset)
                if sent == 0:
                    break
                offset += sent
        except OSError as exc:
            if exc.errno not in _NOT_HERE and exc.errno != errno.ENOTSOCK:
                raise
            continue  # not for files here (sendfile on macOS wants a socket)
        if offset == size:
            return True
    return False


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
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if new else os.O_TRUNC) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if not new or mode & _UMASK:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            else:  # pragma: no cover - Windows
                os.chmod(path, mode)
    finally:
        os.close(fd)


def _read_small(path: str) -> bytes | None:
    """The bytes of a file up to SMALL, or None when it is bigger."""
    with open(path, "rb") as fh:
        data = fh.read(SMALL + 1)
    return None if len(data) > SMALL else data


def _changed(shown: str) -> SourceChanged:
    return SourceChanged(f"{shown} changed during the rollout; re-run to pick it up")


def materialize(src_dir: str | None, workdir: str, files: dict, shown: str = "") -> int:
    """Give the action its private copy of the planned source tree at
    `workdir`, straight from `src_dir`; the number of entries written.

    `files` maps "source:REL" -> [kind, digest, executable] (the key's view);
    `shown` names the source in messages. Whatever `src_dir` holds beyond the
    plan is not copied; anything planned that it no longer holds as planned
    raises SourceChanged.
    """
    os.makedirs(workdir, exist_ok=True)
    if src_dir is None:
        return 0
    made = {workdir}
    count = 0
    prefix = f"{shown}/" if shown and shown != "." else ""
    for name, (kind, digest, exe) in files.items():
        if not name.startswith("source:"):
            continue
        rel = name[7:]
        # Plain concatenation: rel is a clean relative path, and os.path.join
        # was a visible share of a cold run's time.
        wpath, src = f"{workdir}/{rel}", f"{src_dir}/{rel}"
        count += 1
        if "/" in rel:
            parent = wpath.rpartition("/")[0]
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
        try:
            if kind == "l":
                if os.readlink(src) != digest:
                    raise _changed(prefix + rel)
                os.symlink(digest, wpath)
                continue
            mode = 0o755 if exe else 0o644
            data = _read_small(src)
        except OSError:  # gone, or not what it was (a directory, a dangling path)
            raise _changed(prefix + rel) from None
        if data is not None:
            if xxhash.xxh3_128_hexdigest(data) != digest:
                raise _changed(prefix + rel)
            _write_file(wpath, data, mode, new=True)
            continue
        # A big file: copied on disk (a reflink where possible), verified there.
        clone_file(src, wpath, mode)
        os.chmod(wpath, mode)
        if file_digest(wpath) != digest:
            raise _changed(prefix + rel)
    return count
