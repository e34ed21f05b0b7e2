"""The identity of a terraform binary: what `terraform version -json`
says (version and platform), read once per binary (by real path, size,
mtime, ctime) per process and cached on disk by commands that write caches.
It enters every terraform key, so a new or upgraded Terraform re-runs."""

from __future__ import annotations

import json
import os
import threading

from ..fileops import JsonCache

_identities: dict[tuple, dict] = {}
_identity_lock = threading.Lock()


def resolve_binary(binary: str, root: str) -> str | None:
    import shutil

    if os.sep in binary:
        path = binary if os.path.isabs(binary) else os.path.join(root, binary)
        return path if os.path.isfile(path) else None
    return shutil.which(binary)


class ToolchainCache(JsonCache):
    """`terraform version -json` answers on disk, by (real path, size,
    mtime, ctime) of the binary; written only by commands that write caches."""

    def __init__(self, state_dir: str) -> None:
        super().__init__(os.path.join(state_dir, "cache", "terraform-toolchain.json") if state_dir else "")

    def get(self, name: str):
        hit = self._load().get(name)
        return hit if isinstance(hit, dict) else None

    def put(self, name: str, real: str, value: dict) -> None:
        data = self._load()
        for old in [k for k in data if k.split("\0", 1)[0] == real]:
            del data[old]
        data[name] = value
        self.dirty = True


def toolchain_identity(binary: str, root: str, cache: ToolchainCache | None = None) -> dict:
    """`terraform version -json`'s version and platform, read once per
    binary (by real path, size, mtime, ctime) in this process and cached on
    disk; a binary that cannot be found or run says so (the run fails then)."""
    path = resolve_binary(binary, root)
    if path is None:
        return {"binary": binary, "missing": True}
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return {"binary": binary, "missing": True}
    sig = (real, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _identity_lock:
        hit = _identities.get(sig)
        if hit is not None:
            return hit
        name = "\0".join(map(str, sig))
        hit = cache.get(name) if cache is not None else None
        if hit is None:
            hit = _read_version(path)
            if "version" in hit and cache is not None:
                cache.put(name, real, hit)
        _identities[sig] = hit
        return hit


def _read_version(path: str) -> dict:
    import subprocess

    env = dict(os.environ, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
    try:
        proc = subprocess.run([path, "version", "-json"], capture_output=True, timeout=120,
                              env=env, stdin=subprocess.DEVNULL)
        data = json.loads(proc.stdout.decode("utf-8", "replace"))
        return {"version": str(data["terraform_version"]), "platform": str(data.get("platform", ""))}
    except (OSError, ValueError, KeyError, TypeError, subprocess.TimeoutExpired):
        return {"binary": os.path.basename(path), "error": "`version -json` gave no version"}


def describe_toolchain(value) -> str:
    if not isinstance(value, dict):
        return str(value)
    if "version" in value:
        return value["version"]
    return f"{value.get('binary')} ({'missing' if value.get('missing') else value.get('error')})"
