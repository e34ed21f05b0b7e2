"""The workspace: root discovery, `atmos.yaml` settings, package discovery,
and loading one package's deployment from whichever front end it uses."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError, UsageError, did_you_mean
from .backend import backend_problem
from .document import Document
from .labels import Label, Pattern

if TYPE_CHECKING:
    from .model import ComponentKeys, DeploymentSpec

DSL_FILE = "BUILD.atmos"
YAML_FILE = "deployment.yaml"
SETTINGS_FILE = "atmos.yaml"
# Directories package discovery never enters: VCS data, our own state,
# dependency trees and tool caches that can hold thousands of files.
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", ".atmos", ".terraform", "node_modules", "__pycache__",
    ".venv", "venv", ".tox", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".direnv",
})
SETTINGS_KEYS = ("parallelism", "schedule", "keep_going", "toolchain", "state_dir", "terraform",
                 "executor", "state")
TERRAFORM_KEYS = ("backend",)
TOOLCHAIN_KEYS = ("terraform", "nixpacks")


@dataclass(frozen=True)
class Settings:
    parallelism: int | None = None
    schedule: str | None = None
    keep_going: bool | None = None
    toolchain: Mapping[str, str] = field(default_factory=dict)
    state_dir: str = ".atmos"
    terraform: Mapping[str, Any] = field(default_factory=dict)  # {backend: {type, config}}
    executor: str = "local"
    state: str | None = None  # the state store: "sqlite" or a postgresql:// URL (SPEC 11)


# `executor:` (or $ATMOS_EXECUTOR): `local`, or a Dask scheduler as
# dask://HOST:PORT (HOST a name, an IPv4 address or a [bracketed] IPv6 one).
_EXECUTOR = re.compile(r"dask://(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}\Z")
EXECUTOR_ENV = "ATMOS_EXECUTOR"


def executor_problem(value) -> str | None:
    """Why `value` is not an executor, or None if it is one."""
    if value == "local" or (isinstance(value, str) and _EXECUTOR.match(value)
                            and 0 < int(value.rsplit(":", 1)[1]) < 65536):
        return None
    return f"executor must be 'local' or 'dask://HOST:PORT' (a Dask scheduler), got {value!r}"


def executor_setting(settings: Settings, environ: Mapping[str, str]) -> str:
    """$ATMOS_EXECUTOR if set, else the settings' `executor`."""
    value = environ.get(EXECUTOR_ENV)
    if not value:
        return settings.executor
    problem = executor_problem(value)
    if problem:
        raise UsageError(f"${EXECUTOR_ENV}: {problem}")
    return value


def find_root(explicit: str | None, cwd: str | None = None) -> str:
    """-C/--root, else the nearest ancestor holding atmos.yaml, else cwd."""
    if explicit is not None:
        root = os.path.abspath(explicit)
        if not os.path.isdir(root):
            raise UsageError(f"-C/--root: '{explicit}' is not a directory")
        return root
    here = os.path.abspath(cwd or os.getcwd())
    probe = here
    while True:
        if os.path.isfile(os.path.join(probe, SETTINGS_FILE)):
            return probe
        parent = os.path.dirname(probe)
        if parent == probe:
            return here
        probe = parent


# A postgresql:// URL (the state store's, a pg backend's conn_str) may hold a
# password, and no cache may hold a secret (SPEC 14): the parse cache gets
# atmos.yaml with each URL replaced by a run of private-use characters of
# the same length (positions stay), and the parsed values get the URLs back.
# Where a URL's text is cut short of its end (a quote, space, backslash or
# flow-collection character inside it) and what is left could hold a secret
# ('@' of the user info, a `password=` parameter), the file is parsed as it
# is, uncached.
_URL = re.compile(r"postgres(?:ql)?://[^\s'\"\\,\[\]{}]+")
_MASK_BASE = 0xE000  # U+E000..: the i-th URL is masked by chr(_MASK_BASE + i)
_MASKS = re.compile("[\ue000-\ue0ff]+")


def _load_masking_urls(text: str, file: str):
    from . import doccache
    from .yaml import parse_yaml

    urls = _URL.findall(text)
    masked = _URL.sub(lambda m: chr(_MASK_BASE + urls.index(m.group())) * len(m.group()), text)
    if (not urls or len(set(urls)) > 0x100 or _MASKS.search(text) or "@" in masked
            or "password" in masked.lower()):
        return parse_yaml(text, file)
    doc = doccache.load(masked, file, "yaml", parse_yaml)
    runs = {chr(_MASK_BASE + i) * len(url): url for i, url in enumerate(urls)}
    left = []

    def unmask(value):
        if isinstance(value, str):
            if _MASKS.search(value) is None:
                return value
            value = _MASKS.sub(lambda m: runs.get(m.group(), m.group()), value)
            if _MASKS.search(value):
                left.append(value)
            return value
        if isinstance(value, dict):
            return {unmask(k): unmask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unmask(v) for v in value]
        return value

    data = unmask(doc.data)
    if left:  # a mask not found whole (never expected): the file as it is
        return parse_yaml(text, file)
    return Document(data=data, file=file, text=masked, locate=doc.locate, kind="yaml")


def load_settings(root: str) -> Settings:
    path = os.path.join(root, SETTINGS_FILE)
    if not os.path.isfile(path):
        problem = state_dir_problem(root, Settings.state_dir)
        if problem:
            raise ConfigError(problem)
        return Settings()
    from . import doccache
    from .yaml import parse_yaml

    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if "postgres" in text:  # a state URL may hold a password: the cache sees it masked
        doc = _load_masking_urls(text, shown_path(path))
    else:
        doc = doccache.load(text, shown_path(path), "yaml", parse_yaml)
    data = doc.data or {}
    if not isinstance(data, dict):
        raise ConfigError("atmos.yaml must hold a map of settings", file=shown_path(path))

    def fail(key, message):
        from .model import config_error  # only on bad input: a good run never imports model

        return config_error(doc, key if isinstance(key, tuple) else (key,), message)

    for key in data:
        if key not in SETTINGS_KEYS:
            raise fail(key, f"unknown setting '{key}'" + did_you_mean(str(key), SETTINGS_KEYS)
                       + f"; known: {', '.join(SETTINGS_KEYS)}")
    par = data.get("parallelism")
    if par is not None and (isinstance(par, bool) or not isinstance(par, int) or par < 1):
        raise fail("parallelism", "parallelism must be a whole number >= 1")
    sched = data.get("schedule")
    if sched is not None and sched not in ("waves", "eager"):
        raise fail("schedule", "schedule must be 'waves' or 'eager'")
    kg = data.get("keep_going")
    if kg is not None and not isinstance(kg, bool):
        raise fail("keep_going", "keep_going must be true or false")
    tc = data.get("toolchain") or {}
    if not isinstance(tc, dict):
        raise fail("toolchain", "toolchain must map 'terraform'/'nixpacks' to a binary name")
    for key, binary in tc.items():
        if key not in TOOLCHAIN_KEYS:
            raise fail(("toolchain", key), f"unknown toolchain '{key}'"
                       + did_you_mean(str(key), TOOLCHAIN_KEYS) + f"; known: {', '.join(TOOLCHAIN_KEYS)}")
        if not isinstance(binary, str) or not binary:
            raise fail(("toolchain", key), f"toolchain.{key} must be a binary name")
    state_dir = data.get("state_dir", Settings.state_dir)
    if not isinstance(state_dir, str) or not state_dir:
        raise fail("state_dir", "state_dir must be a directory path")
    problem = state_dir_problem(root, state_dir)
    if problem:
        raise fail("state_dir" if "state_dir" in data else (), problem)
    tf = data.get("terraform") or {}
    if not isinstance(tf, dict):
        raise fail("terraform", "terraform must be a map (terraform: {backend: {type: ..., config: {...}}})")
    for key in tf:
        if key not in TERRAFORM_KEYS:
            raise fail(("terraform", key), f"unknown terraform setting '{key}'"
                       + did_you_mean(str(key), TERRAFORM_KEYS) + f"; known: {', '.join(TERRAFORM_KEYS)}")
    if "backend" in tf:
        problem = backend_problem(tf["backend"])
        if problem:
            raise fail(("terraform", "backend", *problem[0]), problem[1])
    executor = data.get("executor", "local")
    problem = executor_problem(executor)
    if problem:
        raise fail("executor", problem)
    state = data.get("state")
    if state is not None and not (state == "sqlite" or isinstance(state, str) and state.startswith(
            ("postgresql://", "postgres://"))):
        err = fail("state", "state must be 'sqlite' or postgresql://USER@HOST:PORT/DB")
        err.context = ()  # (the line may hold a password: not shown)
        raise err
    return Settings(par, sched, kg, tc, state_dir, tf, executor, state)


def outside_root(rel: str) -> bool:
    """The one "inside the root" check, on a normalized path relative to the
    root: it leaves the root when it is absolute, `..` or below `..`. A path
    on disk is checked as it is once symlinks are followed:
    `outside_root(os.path.relpath(os.path.realpath(path), real_root))`."""
    return rel.startswith("/") or rel == ".." or rel.startswith("../")


def state_dir_problem(root: str, state_dir: str) -> str | None:
    """Why `state_dir` cannot be the state directory of `root`, or None.

    It must be a directory strictly inside the root, symlinks followed:
    atmosbuild creates, locks and (`clean`) removes entries there, so the
    root itself, anything above or beside it, and a link that leads out are
    refused before any command does anything."""
    real = os.path.realpath(os.path.join(root, state_dir))
    rel = os.path.relpath(real, os.path.realpath(root))
    if rel == ".":
        return (f"state_dir '{state_dir}' is the workspace root itself; it must be a directory "
                "inside the root, such as .atmos")
    if outside_root(rel):
        shown = "" if os.path.normpath(os.path.join(root, state_dir)) == real else f" (to {real})"
        return (f"state_dir '{state_dir}' resolves outside the workspace root{shown}; it must be "
                "a directory inside the root, such as .atmos")
    return None


def package_dir(root: str, package: str) -> str:
    return os.path.join(root, *package.split("/")) if package else root


def package_file(root: str, package: str) -> str | None:
    """The deployment file of `package`, or None if it is not a package."""
    base = package_dir(root, package)
    dsl = os.path.join(base, DSL_FILE)
    yml = os.path.join(base, YAML_FILE)
    has_dsl, has_yml = os.path.isfile(dsl), os.path.isfile(yml)
    if has_dsl and has_yml:
        raise ConfigError(f"package //{package} has both {DSL_FILE} and {YAML_FILE}; "
                          "keep exactly one", file=shown_path(dsl))
    return dsl if has_dsl else yml if has_yml else None


def discover_packages(root: str, prefix: str = "") -> list[str]:
    """Every package at or under `prefix`, sorted.

    A directory below the root holding its own atmos.yaml is another
    workspace (as a nested WORKSPACE is another repository to Bazel): its
    packages are not this workspace's, so discovery does not descend there.
    """
    found = []
    start = package_dir(root, prefix)
    stack = [(start, prefix)]
    while stack:
        path, pkg = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        names = {e.name for e in entries}
        if path != root and SETTINGS_FILE in names:
            continue
        if DSL_FILE in names or YAML_FILE in names:
            found.append(pkg)
        for e in entries:
            if e.name in SKIP_DIRS or e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append((e.path, f"{pkg}/{e.name}" if pkg else e.name))
    return sorted(found)


def load_document(root: str, package: str) -> Document:
    path = package_file(root, package)
    if path is None:
        raise unknown_package(root, package)
    shown = shown_path(path)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    from . import doccache

    if path.endswith(DSL_FILE):
        return doccache.load(text, shown, "dsl", _parse_dsl)
    from .yaml import parse_yaml

    return doccache.load(text, shown, "yaml", parse_yaml)


def _parse_dsl(text: str, file: str) -> Document:
    from .dsl import parse_dsl  # lark is imported only when a DSL file must be parsed

    return parse_dsl(text, file)


def load_package(root: str, package: str, types: Mapping[str, ComponentKeys]) -> DeploymentSpec:
    """`types`: the component types by name (components.TYPES)."""
    from .model import compile_document

    doc = load_document(root, package)
    default = package or os.path.basename(os.path.abspath(root))
    return compile_document(doc, package, default, types)


def load_specs(root: str, labels: list[Label], types: Mapping[str, ComponentKeys],
               loaded: Mapping[str, DeploymentSpec] | None = None) -> dict[Label, DeploymentSpec]:
    """The deployment spec of each label's package (`loaded`: packages
    already loaded), checking that the label's target is there."""
    specs: dict[Label, DeploymentSpec] = {}
    by_package: dict[str, DeploymentSpec] = dict(loaded or {})
    for label in labels:
        spec = by_package.get(label.package) or load_package(root, label.package, types)
        by_package[label.package] = spec
        if label.target not in spec.targets:
            known = ", ".join(spec.targets) or "none"
            raise UsageError(f"unknown target '{label.target}' in //{label.package} ({spec.document.file})"
                             + did_you_mean(label.target, spec.targets) + f"; targets: {known}")
        specs[label] = spec
    return specs


def unknown_package(root: str, package: str) -> UsageError:
    known = discover_packages(root)
    hint = did_you_mean(package, known)
    listing = ", ".join(f"//{p}" for p in known[:10]) or "none"
    return UsageError(f"unknown package //{package}: no {DSL_FILE} or {YAML_FILE} in "
                      f"'{package or '.'}'{hint}; packages here: {listing}")


def expand(root: str, patterns: list[Label | Pattern], types: Mapping[str, ComponentKeys]) -> list[Label]:
    """Labels for patterns, deduplicated, in the order given (`types`: the
    component types, to load the packages a pattern matches)."""
    out: list[Label] = []
    for item in patterns:
        if isinstance(item, Label):
            labels = [item]
        else:
            labels = []
            for pkg in discover_packages(root, item.prefix):
                spec = load_package(root, pkg, types)
                if item.target in spec.targets:
                    labels.append(Label(pkg, item.target))
            if not labels:
                raise UsageError(f"pattern {item} matches no package with a '{item.target}' target")
        for label in labels:
            if label not in out:
                out.append(label)
    return out


def shown_path(path: str) -> str:
    """A file as messages name it: relative to where the user stands when
    it is below there, else absolute, so `file:line:col` can be opened."""
    cwd = os.getcwd()
    return os.path.relpath(path, cwd) if _under(path, cwd) else os.path.abspath(path)


def _under(path: str, base: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), base]) == base
    except ValueError:
        return False
