"""Compile labels into one action graph: a node per enabled component per
label, with its local key ingredients, and the dependency DAG between them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

from ..components import TYPES, ComponentType
from ..config.labels import Label
from ..config.model import DeploymentSpec
from ..config.resolve import ResolvedComponent, resolve_target
from ..config.workspace import Settings, outside_root
from ..errors import CycleError, UsageError, did_you_mean
from ..sources import is_remote
from .dag import Dag, build_dag
from .keys import (Digester, InputOutsideRoot, canonical, config_ingredients, file_ingredients,
                   local_canonical)

if TYPE_CHECKING:
    from .cache import StructureCache


@dataclass(frozen=True)
class ActionNode:
    id: str  # node id: the component id, prefixed with the label when several labels run
    cid: str  # component id TYPE/NAME
    label: Label
    deployment: str
    target: str
    component: ResolvedComponent
    ctype: ComponentType = field(repr=False)
    local: Mapping = field(repr=False)  # local key ingredients
    local_canonical: str = field(repr=False)
    deps: tuple[str, ...] = ()  # node ids
    # What the type's `compile` kept for the run (terraform: declared vars,
    # modules to mirror, init inputs); not part of the key.
    extra: Mapping = field(default_factory=dict, repr=False, compare=False)

    @property
    def mode(self) -> str:
        return self.ctype.mode


@dataclass(frozen=True)
class ActionGraph:
    labels: tuple[Label, ...]
    specs: Mapping[Label, DeploymentSpec]
    nodes: Mapping[str, ActionNode]
    dag: Dag


def node_id(label: Label, cid: str, multi: bool) -> str:
    return f"{label} {cid}" if multi else cid


@dataclass(frozen=True)
class Structure:
    """The resolved components of some labels and the DAG between them:
    everything but file digests (what `validate` checks)."""

    specs: Mapping[Label, DeploymentSpec]
    resolved: Mapping[Label, Mapping[str, ResolvedComponent]]
    where: Mapping[str, tuple[Label, str]]  # node id -> (label, component id)
    dag: Dag


def build_structure(specs: Mapping[Label, DeploymentSpec], labels: list[Label],
                    only: list[str] | None = None) -> Structure:
    multi = len(labels) > 1
    resolved: dict[Label, dict[str, ResolvedComponent]] = {
        label: resolve_target(specs[label], label.target) for label in labels}

    deps: dict[str, list[str]] = {}
    where: dict[str, tuple[Label, str]] = {}
    for label in labels:
        for cid, comp in resolved[label].items():
            nid = node_id(label, cid, multi)
            deps[nid] = [node_id(label, d, multi) for d in comp.depends_on]
            where[nid] = (label, cid)
    try:
        dag = build_dag(deps)
    except CycleError as exc:
        raise _located_cycle(exc, specs, where) from None

    if only:
        wanted = set()
        for item in only:
            hits = [nid for nid, (_, cid) in where.items() if cid == item or nid == item]
            if not hits:
                raise UsageError(f"--only {item}: no such component"
                                 + did_you_mean(item, {cid for _, cid in where.values()}))
            wanted.update(hits)
        dag = dag.subgraph(dag.closure(wanted))
    return Structure(specs, resolved, where, dag)


def compile_graph(root: str, labels: list[Label], digester: Digester, *,
                  specs: Callable[[], Mapping[Label, DeploymentSpec]],
                  settings: Callable[[], Settings],
                  only: list[str] | None = None,
                  cache: "StructureCache | None" = None, write_cache: bool = False,
                  remote=None) -> ActionGraph:
    """Graph loads nothing itself: `specs` loads the labels' deployment specs
    (config.workspace.load_specs), called only when `cache` has no structure
    for them; `settings` reads atmos.yaml (config.workspace.load_settings),
    called only when a type's `compile` first needs it. `remote`: the git
    vendor cache (sources.git.GitVendor), needed when a component has a git
    source."""
    key = cache.key(root, labels, only) if cache is not None else None
    cached = cache.load(key) if key else None
    if cached is not None:
        st, configs = cached
    else:
        st = build_structure(dict(specs()), labels, only)
        configs = {}
        for nid in st.dag.order:
            label, cid = st.where[nid]
            comp = st.resolved[label][cid]
            ctype = TYPES[comp.type]
            config = config_ingredients(comp, ctype.version, ctype.key_vars)
            configs[nid] = (config, canonical(config))
    def lookup(nid: str) -> tuple:
        label, cid = st.where[nid]
        return label, cid, st.resolved[label][cid], configs[nid]

    compiler = NodeCompiler(root, st.specs, lookup, st.dag, digester, settings, remote=remote)
    nodes = {nid: compiler.node(nid) for nid in st.dag.order}
    if write_cache:
        compiler.save_caches()
    # Only once everything checked out, and never with a secret value or a
    # URL's credentials in it: caches are written in the clear (SPEC 14).
    if write_cache and key and not _has_credentials(nodes) and not any(
            holds_secrets(c) for r in st.resolved.values() for c in r.values()):
        if cached is None:
            cache.save(key, _picklable(st, configs))
        if not cache.has_nodes(key):
            cache.save_nodes(key, st, configs)
    return ActionGraph(tuple(labels), st.specs, nodes, st.dag)


def holds_secrets(comp: ResolvedComponent) -> bool:
    """Whether a resolved component holds a secret value in clear."""
    return any(name in comp.vars or name in comp.env for name in comp.sensitive)


def _has_credentials(nodes: Mapping[str, "ActionNode"]) -> bool:
    remote = [n.component.source for n in nodes.values() if is_remote(n.component.source)]
    if not remote:
        return False
    from ..sources.git import mask_url

    return any(mask_url(source) != source for source in remote)


class NodeCompiler:
    """Compiles the action nodes of a structure one at a time: compile_graph
    compiles every node, a partial rollout (run/uptodate.py) only those it
    must decide again. `specs` may be None (a node pack has no documents to
    point into): then a source or `inputs` problem raises NeedsFullCompile,
    and the caller compiles everything to report it where it is written."""

    def __init__(self, root: str, specs: Mapping[Label, DeploymentSpec] | None,
                 lookup: Callable[[str], tuple], dag: Dag, digester: Digester,
                 settings: Callable[[], Settings],
                 names: Mapping[Label, str] | None = None, remote=None) -> None:
        """`lookup(nid)` -> (label, component id, resolved component,
        (config ingredients, their canonical text)); `settings()`: atmos.yaml,
        asked for when a type's `compile` first
        needs it; `names`: label -> deployment name, when there are no specs;
        `remote`: the git vendor cache (sources.git.GitVendor) that git
        sources are fetched through."""
        self.root, self.specs, self.lookup, self.dag, self.digester = root, specs, lookup, dag, digester
        self._load_settings = settings
        self.names = names if names is not None else {label: spec.name for label, spec in specs.items()}
        self.sources = SourceChecker(root)
        self.remote = remote
        self._settings = None  # atmos.yaml, read when a type's `compile` first needs it
        self._caches: dict = {}  # shared by the types' `compile` across nodes

    def save_caches(self) -> None:
        for cache in self._caches.values():
            save = getattr(cache, "save", None)
            if save is not None:
                save()

    def _compile_env(self, label: Label, comp: ResolvedComponent, spec):
        from ..components.base import CompileEnv

        if self._settings is None:
            self._settings = self._load_settings()
        settings = self._settings

        def fail(path: tuple, message: str):
            if spec is None:
                return NeedsFullCompile()
            return spec.fail(_field_path(spec, label, comp, path[0]) + tuple(path[1:])
                             if path[0] not in ("vars", "env") else _var_path(spec, label, comp, path),
                             message)

        return CompileEnv(
            root=self.root, state_dir=os.path.join(self.root, settings.state_dir),
            deployment=self.names[label], target=label.target, digester=self.digester,
            toolchain=dict(settings.toolchain), settings=dict(getattr(settings, comp.type, None) or {}),
            fail=fail, set_vars=frozenset(comp.own_vars), caches=self._caches)

    def node(self, nid: str) -> ActionNode:
        label, cid, comp, (config, config_text) = self.lookup(nid)
        spec = self.specs[label] if self.specs is not None else None
        if is_remote(comp.source):
            return self._remote_node(nid, label, cid, comp, config, spec)
        try:
            self.sources.check(spec, comp, label, require_dir=False)
            files = file_ingredients(comp, self.digester)
        except InputOutsideRoot as exc:
            if spec is None:
                raise NeedsFullCompile() from None
            raise spec.fail(_field_path(spec, label, comp, "inputs") + (exc.index,), str(exc)) from None
        except (FileNotFoundError, NotADirectoryError):
            if comp.source is not None and not os.path.isdir(f"{self.root}/{comp.source}"):
                if spec is None:
                    raise NeedsFullCompile() from None
                raise SourceChecker.not_a_directory(spec, comp, label) from None
            raise
        return self._refined(nid, label, cid, comp, comp, config, config_text, files, spec)

    def _refined(self, nid, label, cid, comp, local_comp, config, config_text, files, spec) -> ActionNode:
        """The node, after its type's `compile` refined the ingredients;
        `local_comp` is the component with a root-relative source (a git
        source's tree in the vendor cache, so local modules resolve inside
        the commit)."""
        ctype = TYPES[comp.type]
        extra: Mapping = {}
        if type(ctype).compile is not ComponentType.compile:
            refined = ctype.compile(local_comp, config, files, self._compile_env(label, comp, spec))
            if refined is not None:
                config, files, extra = dict(refined.config), dict(refined.files), refined.extra
                config_text = canonical(config)
        return ActionNode(nid, cid, label, self.names[label], label.target, comp, ctype,
                          {**config, "files": files}, local_canonical(config_text, files),
                          self.dag.deps[nid], extra)

    def _remote_node(self, nid, label, cid, comp, config, spec) -> ActionNode:
        """A node on a git source: its subtree at the resolved commit (fetched
        into the vendor cache when missing); the commit enters the key."""
        from dataclasses import replace

        from ..sources.git import SourceError, parse_git_source

        if spec is None or self.remote is None:
            raise NeedsFullCompile()
        try:
            tree = self.remote.tree(parse_git_source(comp.source))
        except SourceError as exc:
            raise source_error(spec, label, comp, exc) from None
        try:
            files = file_ingredients(comp, self.digester, tree=tree.entries)
        except InputOutsideRoot as exc:
            raise spec.fail(_field_path(spec, label, comp, "inputs") + (exc.index,), str(exc)) from None
        config = {**config, "commit": tree.commit}
        local_comp = replace(comp, source=local_source(self.root, tree.path))
        return self._refined(nid, label, cid, comp, local_comp, config, canonical(config), files, spec)


def local_source(root: str, path: str) -> str:
    """A directory under the root (a vendor tree: the state directory is
    inside the root) as a root-relative posix path."""
    return os.path.relpath(path, root).replace(os.sep, "/")


def source_error(spec: DeploymentSpec, label: Label, comp: ResolvedComponent, exc: Exception):
    """A git source's problem as a config error at its `source`; the quoted
    line of the file masks the URL's credentials too (SPEC 14)."""
    from ..sources.git import mask_url

    err = spec.fail(_field_path(spec, label, comp, "source"), f"source of {comp.id}: {exc}")
    err.context = tuple(mask_url(line) for line in err.context)
    return err


class NeedsFullCompile(Exception):
    """A node compiled without its documents has an error to report."""


def _picklable(st: Structure, configs):
    from dataclasses import replace

    from .cache import picklable_document

    specs = {label: replace(spec, document=picklable_document(spec.document))
             for label, spec in st.specs.items()}
    return replace(st, specs=specs), configs


def _field_path(spec: DeploymentSpec, label: Label, comp: ResolvedComponent, field: str) -> tuple:
    """Where `field` of `comp` is written: its per-target override, else the component."""
    override = spec.targets[label.target].overrides.get(comp.id, {})
    if field in override:
        return ("deployment", "targets", label.target, "components", comp.type, comp.name, field)
    return ("deployment", "components", comp.type, comp.name, field)


def _var_path(spec: DeploymentSpec, label: Label, comp: ResolvedComponent, path: tuple) -> tuple:
    """Where var (or env) `path[1]` of `comp` is written on the component or
    its per-target override (the override wins)."""
    section, name = path[0], path[1]
    override = spec.targets[label.target].overrides.get(comp.id, {})
    if name in (override.get(section) or {}):
        return ("deployment", "targets", label.target, "components", comp.type, comp.name, section,
                name) + tuple(path[2:])
    return ("deployment", "components", comp.type, comp.name, section, name) + tuple(path[2:])


def _located_cycle(exc: CycleError, specs, where) -> CycleError:
    """The cycle error, positioned at the first edge of the cycle: the
    `depends_on` entry when the edge is written there, else the component."""
    label, cid = where[exc.cycle[0]]
    _, dep = where[exc.cycle[1]]
    spec = specs[label]
    comp = spec.components[cid]
    override = spec.targets[label.target].overrides.get(cid, {})
    path: tuple = ("deployment", "components", comp.type, comp.name)
    for base, fields in ((("deployment", "targets", label.target, "components", comp.type, comp.name),
                          override), (path, comp.fields)):
        if "metadata" in fields:  # an override's metadata replaces the component's
            deps = (fields["metadata"] or {}).get("depends_on") or []
            if dep in deps:
                path = base + ("metadata", "depends_on", deps.index(dep))
            break
    located = spec.fail(path, exc.message)
    return CycleError(exc.cycle, file=located.file, line=located.line, col=located.col,
                      context=located.context)


class SourceChecker:
    """Checks that sources are directories inside the root, following
    symlinks, with one lstat per source (parents' real paths are memoized)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self._real: dict[str, str] = {root: self.real_root}

    def _realpath(self, path: str) -> str:
        hit = self._real.get(path)
        if hit is None:
            parent, _, name = path.rpartition("/")
            if not parent or os.path.islink(path):
                hit = os.path.realpath(path)
            else:
                hit = f"{self._realpath(parent)}/{name}"
            self._real[path] = hit
        return hit

    def check(self, spec: DeploymentSpec, comp: ResolvedComponent, label: Label, *,
              require_dir: bool = True) -> None:
        """`require_dir=False` when the caller walks the tree anyway and
        reports a missing directory itself (`not_a_directory`)."""
        if comp.source is None:
            return
        if is_remote(comp.source):  # its syntax here; the rest when it is fetched
            from ..sources.git import SourceError, parse_git_source

            try:
                parse_git_source(comp.source)
            except SourceError as exc:
                if spec is None:
                    raise NeedsFullCompile() from None
                raise source_error(spec, label, comp, exc) from None
            return
        path = f"{self.root}/{comp.source}" if comp.source != "." else self.root
        real = self._realpath(path)
        if outside_root(os.path.relpath(real, self.real_root)):
            if spec is None:
                raise NeedsFullCompile()
            raise spec.fail(_field_path(spec, label, comp, "source"),
                            f"source '{comp.source}' of {comp.id} resolves outside the workspace root")
        if require_dir and not os.path.isdir(path):
            raise self.not_a_directory(spec, comp, label)

    @staticmethod
    def not_a_directory(spec: DeploymentSpec, comp: ResolvedComponent, label: Label):
        return spec.fail(_field_path(spec, label, comp, "source"),
                         f"source '{comp.source}' of {comp.id} is not a directory "
                         f"(at target '{label.target}')")
