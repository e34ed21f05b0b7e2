"""Git sources (SPEC 12): `git::URL//SUBDIR?ref=REF`, fetched with the real
`git` into a content-addressed vendor cache.

    STATE/vendor-cache/git/COMMIT/              the commit's whole tree, written once, never changed
    STATE/vendor-cache/git/COMMIT.json          its manifest: [rel, kind, digest, exec] per file
    STATE/vendor-cache/git/mirrors/HASH.git     a bare mirror per repository
    STATE/vendor-cache/git/mirrors/HASH.lock    flock: one fetch or checkout per mirror at a time
    STATE/vendor-cache/git/refs/HASH.json       pinned refs (tags, abbreviated commits) -> commit

HASH is the xxh3 of the URL without credentials, so a rotated token keeps
its mirror. Everything here is data (JSON, git objects): nothing read from
the cache is executed.

Resolution. A full commit id needs no resolving. A tag (or an abbreviated
commit) is resolved once — `git ls-remote`, or the mirror for an
abbreviation — and pinned in the refs index; a branch (or no ref: the
remote's HEAD) is resolved once per process, i.e. once per rollout. A
commit whose manifest exists is never fetched again: a rollout whose
sources are all pinned and cached runs no git command at all.

Trees. A missing commit is fetched into the mirror (all branches and tags;
the commit itself when no ref reaches it), then checked out whole into a
temporary directory with a private index (`read-tree` + `checkout-index`:
the blobs as committed, unlike `git archive`, which applies export-ignore
and export-subst), digested, and renamed into place; then its manifest is
written. A reader trusts a tree only once its manifest exists, and the
mirror's lock keeps two rollouts from fetching or checking out the same
repository at once, so a concurrent or killed rollout never leaves a half
tree where a whole one is expected.

Every git command runs with a timeout (its process group killed past it),
no terminal prompts (GIT_TERMINAL_PROMPT=0, ssh in batch mode) and its
output scrubbed of the URL's credentials before any message shows it.
"""

from __future__ import annotations

import bisect
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from urllib.parse import unquote

import xxhash

from ..fileops import write_atomic
from ..state.files import FileDigester
from . import GIT_PREFIX

LS_REMOTE_TIMEOUT = float(os.environ.get("ATMOS_GIT_TIMEOUT", "120"))
FETCH_TIMEOUT = float(os.environ.get("ATMOS_GIT_FETCH_TIMEOUT", "1800"))
LOCAL_TIMEOUT = 600.0  # commands on the mirror alone
LOCK_TIMEOUT = 1800.0

_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP = re.compile(r"^[A-Za-z0-9._~-]+@[A-Za-z0-9.-]+:(?!//)")  # git@github.com:org/repo.git
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/@\s]+)@")
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_ABBREV = re.compile(r"^[0-9a-f]{7,63}$")
_BLANK_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


class SourceError(Exception):
    """A git source that cannot be had: bad syntax, URL, ref or subdirectory
    (the message is safe to show: credentials masked)."""


@dataclass(frozen=True)
class GitSource:
    url: str  # as written, credentials and all (never shown: see `shown`)
    subdir: str  # "" for the repository's root
    ref: str | None  # None: the remote's default branch

    @property
    def shown_url(self) -> str:
        return mask_url(self.url)

    @property
    def shown(self) -> str:
        text = GIT_PREFIX + self.shown_url + (f"//{self.subdir}" if self.subdir else "")
        return text + (f"?ref={self.ref}" if self.ref is not None else "")

    @property
    def repo_hash(self) -> str:
        return xxhash.xxh3_128_hexdigest(_without_credentials(self.url).encode())


def mask_url(text: str) -> str:
    """`https://user:token@host` -> `https://user:***@host`; `https://token@host`
    -> `https://***@host` (an http user alone is usually a token); `ssh://git@`
    is left alone. Applies to every URL inside `text`."""
    def one(m: re.Match) -> str:
        scheme, info = m.group(1), m.group(2)
        if ":" in info:
            return f"{scheme}{info.split(':', 1)[0]}:***@"
        if scheme.lower().startswith("http"):
            return f"{scheme}***@"
        return m.group(0)
    return _USERINFO.sub(one, text)


def _without_credentials(url: str) -> str:
    """The URL as the repository's identity: no password, and no http user
    (a token) either."""
    def one(m: re.Match) -> str:
        if m.group(1).lower().startswith("http"):
            return m.group(1)
        return f"{m.group(1)}{m.group(2).split(':', 1)[0]}@"
    return _USERINFO.sub(one, url)


def parse_git_source(text: str) -> GitSource:
    """`git::URL[//SUBDIR][?ref=REF]` -> GitSource, or SourceError."""
    if not text.startswith(GIT_PREFIX):
        raise SourceError("a git source starts with git::")
    body = text[len(GIT_PREFIX):]
    url, sep, query = body.partition("?")
    ref = None
    if sep:
        for part in query.split("&"):
            name, eq, value = part.partition("=")
            if name != "ref" or not eq or not value:
                raise SourceError(f"unknown query '{part}' in git source (only ?ref=REF)")
            ref = unquote(value)
    start = url.find("://")
    start = start + 3 if start >= 0 else 0
    if url.startswith("file://"):
        start = len("file://") + 1  # file:///abs/path: the path's own leading /
    cut = url.find("//", start)
    subdir = ""
    if cut >= 0:
        url, subdir = url[:cut], url[cut + 2:]
        norm = posixpath.normpath(subdir) if subdir else "."
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise SourceError(f"subdirectory '{subdir}' leaves the repository")
        subdir = "" if norm == "." else norm
    _check_url(url)
    if ref is not None and (ref.startswith("-") or _BLANK_OR_CONTROL.search(ref)
                            or ".." in ref or ref.endswith("/") or ref.startswith("/")):
        raise SourceError(f"'{ref}' is not a valid git ref")
    return GitSource(url, subdir, ref)


def _check_url(url: str) -> None:
    shown = mask_url(url)
    if not url or url.startswith("-") or _BLANK_OR_CONTROL.search(url):
        raise SourceError(f"'{shown}' is not a git URL")
    scheme, sep, rest = url.partition("://")
    if sep:
        if scheme.lower() not in _SCHEMES:
            raise SourceError(f"'{shown}': unsupported scheme {scheme}:// "
                              f"(one of {', '.join(s + '://' for s in _SCHEMES)})")
        if scheme.lower() == "file" and not rest.startswith("/"):
            raise SourceError(f"'{shown}': a file:// URL needs an absolute path (file:///path/to/repo)")
        if scheme.lower() != "file" and not rest.split("/", 1)[0]:
            raise SourceError(f"'{shown}' names no host")
    elif not _SCP.match(url):
        raise SourceError(f"'{shown}' is not a git URL (https://, ssh://, file:// or user@host:path)")


def tree_dir(state_dir: str, commit: str, subdir: str = "") -> str:
    base = os.path.join(state_dir, "vendor-cache", "git", commit)
    return f"{base}/{subdir}" if subdir else base


# -- running git ------------------------------------------------------------------

def _git_env() -> dict:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.setdefault("GIT_ASKPASS", "")  # never a GUI prompt either
    env["GCM_INTERACTIVE"] = "never"
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    env["LC_ALL"] = "C"
    return env


def run_git(args: list[str], *, timeout: float, secret_url: str = "", env: dict | None = None,
            what: str = "") -> str:
    """Run `git ARGS`; its stdout, or SourceError with the last lines of its
    stderr (credentials of `secret_url` masked). Past `timeout` the whole
    process group (git and its transport helpers) is killed."""
    try:
        proc = subprocess.Popen(["git", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env or _git_env(),
                                start_new_session=True)
    except FileNotFoundError:
        raise SourceError("git is not installed (git:: sources need it on PATH)") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise SourceError(f"{what or 'git ' + args[0]} timed out after {timeout:g} s") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()
        if secret_url:
            text = text.replace(secret_url, mask_url(secret_url))
        text = mask_url(text)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = "; ".join(lines[-2:]) or f"exit status {proc.returncode}"
        raise SourceError(f"{what or 'git ' + args[0]} failed: {detail}")
    return out.decode(errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, AttributeError):
        proc.kill()
    proc.wait()


class _MirrorLock:
    """flock on HASH.lock: one fetch or checkout per repository at a time,
    across processes; released by the kernel if the holder dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self):
        import fcntl
        import time

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise SourceError(f"timed out waiting for {self.path}") from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing the descriptor releases the flock


# -- the vendor cache ---------------------------------------------------------------

@dataclass(frozen=True)
class RemoteTree:
    commit: str
    path: str  # absolute directory of the subtree
    entries: list  # (rel, kind, digest, exec) under it, sorted, as FileDigester.tree gives


class GitVendor:
    """Resolves and fetches git sources for one state directory. Branches
    are resolved once per instance (one instance per rollout)."""

    def __init__(self, state_dir: str) -> None:
        self.base = os.path.join(state_dir, "vendor-cache", "git")
        self.state_dir = state_dir
        self._resolved: dict[tuple[str, str | None], str] = {}
        self._manifests: dict[str, tuple[list, list]] = {}
        self.fetched: list[str] = []  # commits fetched by this instance (for `vendor pull`)

    # -- paths
    def _mirror(self, src: GitSource) -> str:
        return os.path.join(self.base, "mirrors", src.repo_hash + ".git")

    def _lock(self, src: GitSource) -> _MirrorLock:
        return _MirrorLock(os.path.join(self.base, "mirrors", src.repo_hash + ".lock"))

    def _pins_path(self, src: GitSource) -> str:
        return os.path.join(self.base, "refs", src.repo_hash + ".json")

    # -- resolving
    def resolve(self, src: GitSource) -> str:
        """The commit `src.ref` names (see the module doc for when the
        network is asked)."""
        memo = (_without_credentials(src.url), src.ref)
        hit = self._resolved.get(memo)
        if hit is not None:
            return hit
        ref = src.ref
        if ref is not None and _FULL_SHA.match(ref.lower()):
            commit = ref.lower()
        else:
            commit = self._pins(src).get(ref) if ref is not None else None
            if commit is None:
                commit, pin = self._ls_remote(src)
                if pin:
                    self._pin(src, ref, commit)
        self._resolved[memo] = commit
        return commit

    def _pins(self, src: GitSource) -> dict:
        try:
            with open(self._pins_path(src), encoding="utf-8") as fh:
                data = json.load(fh)
            refs = data.get("refs") if isinstance(data, dict) else None
        except (OSError, ValueError):
            return {}
        if not isinstance(refs, dict):
            return {}
        return {k: v for k, v in refs.items()
                if isinstance(k, str) and isinstance(v, str) and _FULL_SHA.match(v)}

    def _pin(self, src: GitSource, ref: str, commit: str) -> None:
        with self._lock(src):
            pins = self._pins(src)
            pins[ref] = commit
            try:
                write_atomic(self._pins_path(src), json.dumps(
                    {"url": src.shown_url, "refs": pins}, indent=1, sort_keys=True).encode())
            except OSError:
                pass  # an unwritable index only costs a lookup next time

    def _ls_remote(self, src: GitSource) -> tuple[str, bool]:
        """(commit, pin it?) for a tag, branch or HEAD, asking the remote."""
        ref = src.ref
        patterns = ["HEAD"] if ref is None else (
            [ref] if ref.startswith("refs/") else
            [f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}", f"refs/heads/{ref}"])
        out = run_git(["ls-remote", src.url, *patterns], timeout=LS_REMOTE_TIMEOUT,
                      secret_url=src.url, what=f"git ls-remote {src.shown_url}")
        refs = {}
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            refs[name.strip()] = sha.strip().lower()
        if ref is None:
            if "HEAD" in refs:
                return refs["HEAD"], False
            raise SourceError(f"{src.shown_url} has no default branch (HEAD); give ?ref=")
        for name, pin in ((f"refs/tags/{ref}^{{}}", True), (f"refs/tags/{ref}", True),
                          (f"refs/heads/{ref}", False), (ref, ref.startswith("refs/tags/"))):
            if name in refs:
                return refs[name], pin
        if ref.startswith("refs/") and f"{ref}^{{}}" in refs:
            return refs[f"{ref}^{{}}"], True
        if _ABBREV.match(ref.lower()):  # an abbreviated commit: only the objects know it
            return self._expand_abbreviation(src, ref.lower()), True
        raise SourceError(f"no branch or tag '{ref}' in {src.shown_url}")

    def _expand_abbreviation(self, src: GitSource, ref: str) -> str:
        with self._lock(src):
            mirror = self._ensure_mirror(src)
            self._fetch(src, mirror)
            try:
                out = run_git(["--git-dir", mirror, "rev-parse", "--verify", "--quiet",
                               f"{ref}^{{commit}}"], timeout=LOCAL_TIMEOUT)
            except SourceError:
                raise SourceError(f"no branch, tag or commit '{ref}' in {src.shown_url}") from None
        return out.strip()

    # -- trees
    def tree(self, src: GitSource) -> RemoteTree:
        """The source's subtree at its resolved commit, fetched if needed."""
        commit = self.resolve(src)
        rels, entries = self._manifest(src, commit)
        if src.subdir:
            prefix = src.subdir + "/"
            lo = bisect.bisect_left(rels, prefix)
            hi = bisect.bisect_left(rels, prefix[:-1] + "0")  # "0" is the character after "/"
            sub = [(rel[len(prefix):], kind, dig, exe) for rel, kind, dig, exe in entries[lo:hi]]
            if not sub:
                raise SourceError(f"no directory '{src.subdir}' in {src.shown_url} at "
                                  f"{src.ref or 'HEAD'} (commit {commit[:12]})")
        else:
            sub = entries
        return RemoteTree(commit, tree_dir(self.state_dir, commit, src.subdir), sub)

    def _manifest(self, src: GitSource, commit: str) -> tuple[list, list]:
        hit = self._manifests.get(commit)
        if hit is None:
            data = self._read_manifest(commit)
            if data is None:
                with self._lock(src):
                    data = self._read_manifest(commit) or self._checkout(src, commit)
            entries = [tuple(e) for e in data]
            hit = self._manifests[commit] = ([e[0] for e in entries], entries)
        return hit

    def _manifest_path(self, commit: str) -> str:
        return os.path.join(self.base, commit + ".json")

    def _read_manifest(self, commit: str) -> list | None:
        if not os.path.isdir(os.path.join(self.base, commit)):
            return None
        try:
            with open(self._manifest_path(commit), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        if not (isinstance(data, dict) and data.get("commit") == commit
                and isinstance(data.get("files"), list)):
            return None
        files = data["files"]
        if not all(isinstance(e, list) and len(e) == 4 for e in files):
            return None
        return files

    def _ensure_mirror(self, src: GitSource) -> str:
        mirror = self._mirror(src)
        if not os.path.isfile(os.path.join(mirror, "HEAD")):
            shutil.rmtree(mirror, ignore_errors=True)
            run_git(["init", "--bare", "--quiet", mirror], timeout=LOCAL_TIMEOUT)
        return mirror

    def _has_commit(self, mirror: str, commit: str) -> bool:
        try:
            run_git(["--git-dir", mirror, "cat-file", "-e", f"{commit}^{{commit}}"],
                    timeout=LOCAL_TIMEOUT)
            return True
        except SourceError:
            return False

    def _fetch(self, src: GitSource, mirror: str, commit: str | None = None) -> None:
        args = ["--git-dir", mirror, "fetch", "--quiet", "--force", "--no-write-fetch-head",
                src.url]
        what = f"git fetch {src.shown_url}"
        if commit is None:
            run_git(args + ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                    timeout=FETCH_TIMEOUT, secret_url=src.url, what=what)
        else:
            run_git(args + [commit], timeout=FETCH_TIMEOUT, secret_url=src.url, what=what)

    def _checkout(self, src: GitSource, commit: str) -> list:
        """Fetch (if needed) and check out `commit` whole; its manifest.
        Call under the mirror's lock."""
        final = os.path.join(self.base, commit)
        if not os.path.isdir(final):
            mirror = self._ensure_mirror(src)
            if not self._has_commit(mirror, commit):
                self._fetch(src, mirror)
                if not self._has_commit(mirror, commit):
                    try:  # a commit no branch or tag reaches (servers may refuse)
                        self._fetch(src, mirror, commit)
                    except SourceError:
                        pass
                    if not self._has_commit(mirror, commit):
                        raise SourceError(f"no commit {src.ref or commit} in {src.shown_url}")
            tmp = os.path.join(self.base, f".tmp-{commit}-{os.getpid()}-{os.urandom(4).hex()}")
            os.makedirs(tmp)
            from ..run.workspace import spread_out

            spread_out(self.base)  # each commit's tree in block groups of its own
            try:
                env = _git_env()
                env["GIT_INDEX_FILE"] = tmp + ".index"
                run_git(["--git-dir", mirror, "read-tree", commit], timeout=LOCAL_TIMEOUT, env=env)
                run_git(["--git-dir", mirror, "--work-tree", tmp, "-c", "core.autocrlf=false",
                         "checkout-index", "--all", "--force", "--quiet"], timeout=LOCAL_TIMEOUT,
                        env=env)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            finally:
                try:
                    os.unlink(tmp + ".index")
                except OSError:
                    pass
            self.fetched.append(commit)
        files = [list(e) for e in FileDigester(final, cache={}).tree(".")]
        write_atomic(self._manifest_path(commit), json.dumps(
            {"commit": commit, "url": src.shown_url, "files": files},
            separators=(",", ":")).encode())
        return files
