"""Validate a Document and compile it into the immutable deployment model.

Both front ends (YAML, DSL) produce the same document shape, so everything a
user can get wrong in a deployment file is checked here once, with the
position of the offending key and a did-you-mean where one helps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from ..errors import ConfigError, caret_context, did_you_mean
from .backend import backend_problem
from .document import (COMPONENT_KEYS, DEPLOYMENT_KEYS, METADATA_KEYS, TARGET_KEYS,
                       Document)

_TARGET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_SEGMENT = re.compile(r"[^\s/\x00-\x1f\x7f]+\Z")
_RESOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


class ComponentKeys(Protocol):
    """What config reads of a component type (components/base.py
    `ComponentType`; the registry `components.TYPES` is passed in, since
    config imports nothing of the types): which of the component keys a
    component of the type must have, and which it may not have."""

    required: Sequence[str]
    forbidden: Sequence[str]


@dataclass(frozen=True)
class TargetSpec:
    name: str
    vars: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # id -> fields


@dataclass(frozen=True)
class ComponentSpec:
    id: str
    type: str
    name: str
    fields: Mapping[str, Any]  # validated component keys, as written
    # The keys its type requires: checked at each target, once the target's
    # override is merged (resolve).
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeploymentSpec:
    """One package's deployment, validated but not yet resolved for a target."""

    name: str
    package: str  # "" for the root package
    description: str
    labels: Mapping[str, str]
    vars: Mapping[str, Any]
    env: Mapping[str, Any]
    targets: Mapping[str, TargetSpec]
    components: Mapping[str, ComponentSpec]  # id -> spec, in document order
    document: Document = field(compare=False, repr=False)

    def fail(self, path: tuple, message: str) -> ConfigError:
        return config_error(self.document, path, message)


def config_error(doc: Document, path: tuple, message: str) -> ConfigError:
    """A ConfigError positioned at the deepest locatable prefix of `path`."""
    pos = None
    for depth in range(len(path), 0, -1):
        pos = doc.locate(tuple(path[:depth]))
        if pos:
            break
    if not pos:
        return ConfigError(message, file=doc.file)
    line, col = pos
    return ConfigError(message, file=doc.file, line=line, col=col,
                       context=caret_context(doc.text, line, col) if doc.text else ())


def valid_component_name(name: str) -> bool:
    """SPEC 1: may contain '/', but no empty, '.' or '..' segment, no
    leading '/', no whitespace or control characters."""
    if not isinstance(name, str) or not name:
        return False
    return all(seg not in ("", ".", "..") and _SEGMENT.match(seg) for seg in name.split("/"))


def valid_deployment_name(name: str) -> bool:
    return valid_component_name(name)


def valid_target_name(name: str) -> bool:
    return isinstance(name, str) and bool(_TARGET_NAME.match(name))


def split_component_id(cid: str) -> tuple[str, str] | None:
    if not isinstance(cid, str) or "/" not in cid:
        return None
    ctype, name = cid.split("/", 1)
    return (ctype, name) if ctype and valid_component_name(name) else None


class _Validator:
    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def fail(self, path: tuple, message: str) -> ConfigError:
        return config_error(self.doc, path, message)

    def mapping(self, value, path, what) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"{what} must be a map, got {_kind(value)}")
        for k in value:
            if not isinstance(k, str):
                hint = ""
                if isinstance(k, bool) or k is None:
                    hint = ("; YAML reads unquoted yes/no/on/off/true/false/null as booleans"
                            " or null, so quote the name")
                raise self.fail(path, f"{what}: keys must be strings, got {_kind(k)} {k!r}{hint}")
        return value

    def known_keys(self, value: dict, allowed, path, what) -> None:
        for k in value:
            if k not in allowed:
                raise self.fail(path + (k,), f"unknown key '{k}' in {what}"
                                + did_you_mean(k, allowed)
                                + f"; allowed: {', '.join(allowed)}")

    def string(self, value, path, what) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"{what} must be a string, got {_kind(value)}")
        return value

    def env_map(self, value, path, what) -> dict:
        env = self.mapping(value, path, what)
        for k, v in env.items():
            if isinstance(v, (dict, list)):
                raise self.fail(path + (k,), f"{what}: '{k}' must be a string, number or boolean")
        return env


def _kind(value) -> str:
    return {dict: "a map", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def compile_document(doc: Document, package: str, default_name: str,
                     types: Mapping[str, ComponentKeys]) -> DeploymentSpec:
    """`types`: the component types by name (components.TYPES)."""
    v = _Validator(doc)
    top = v.mapping(doc.data, (), "the file")
    if "deployment" not in top:
        if top:
            k = next(iter(top))
            raise v.fail((k,), f"unknown key '{k}' at top level" + did_you_mean(k, ["deployment"])
                         + "; a deployment file holds one `deployment:` map")
        raise ConfigError("no deployment defined (expected a top-level `deployment`)", file=doc.file)
    v.known_keys(top, ("deployment",), (), "the file")
    root = ("deployment",)
    dep = v.mapping(top["deployment"], root, "deployment")
    v.known_keys(dep, DEPLOYMENT_KEYS, root, "deployment")

    name = dep.get("name", default_name)
    if "name" in dep:
        v.string(name, root + ("name",), "deployment name")
        if not valid_deployment_name(name):
            raise v.fail(root + ("name",), f"bad deployment name '{name}': use letters, digits,"
                         " '-', '_', '.', and '/' between non-empty segments")
    description = v.string(dep.get("description", ""), root + ("description",), "description")
    labels = v.mapping(dep.get("labels"), root + ("labels",), "labels")
    for k, val in labels.items():
        v.string(val, root + ("labels", k), f"label '{k}'")
    dvars = v.mapping(dep.get("vars"), root + ("vars",), "vars")
    denv = v.env_map(dep.get("env"), root + ("env",), "env")

    components: dict[str, ComponentSpec] = {}
    by_type = v.mapping(dep.get("components"), root + ("components",), "components")
    for ctype, entries in by_type.items():
        tpath = root + ("components", ctype)
        kind = _check_type(v, ctype, tpath, types)
        for cname, fields in v.mapping(entries, tpath, f"{ctype} components").items():
            cpath = tpath + (cname,)
            if not valid_component_name(cname):
                raise v.fail(cpath, f"bad component name '{cname}': no empty, '.' or '..' "
                             "segments, no leading '/', no whitespace")
            fields = _component_fields(v, fields, cpath, f"component {ctype}/{cname}", ctype, kind)
            components[f"{ctype}/{cname}"] = ComponentSpec(f"{ctype}/{cname}", ctype, cname, fields,
                                                           tuple(kind.required))

    targets: dict[str, TargetSpec] = {}
    for tname, tbody in v.mapping(dep.get("targets"), root + ("targets",), "targets").items():
        tpath = root + ("targets", tname)
        if not valid_target_name(tname):
            raise v.fail(tpath, f"bad target name '{tname}': use letters, digits, '-', '_', '.'")
        tbody = v.mapping(tbody, tpath, f"target '{tname}'")
        v.known_keys(tbody, TARGET_KEYS, tpath, f"target '{tname}'")
        overrides: dict[str, dict] = {}
        ov_types = v.mapping(tbody.get("components"), tpath + ("components",), "components")
        for ctype, entries in ov_types.items():
            otpath = tpath + ("components", ctype)
            kind = _check_type(v, ctype, otpath, types)
            for cname, fields in v.mapping(entries, otpath, f"{ctype} components").items():
                cid = f"{ctype}/{cname}"
                if cid not in components:
                    raise v.fail(otpath + (cname,), f"target '{tname}' overrides unknown component "
                                 f"'{cid}'" + did_you_mean(cid, components))
                overrides[cid] = _component_fields(v, fields, otpath + (cname,),
                                                   f"override of {cid} at target '{tname}'", ctype, kind)
        targets[tname] = TargetSpec(
            tname,
            v.mapping(tbody.get("vars"), tpath + ("vars",), "vars"),
            v.env_map(tbody.get("env"), tpath + ("env",), "env"),
            overrides,
        )

    # depends_on must name components of this deployment.
    for cid, comp in components.items():
        _check_depends_on(v, comp.fields, components, root + ("components", comp.type, comp.name))
    for tname, t in targets.items():
        for cid, fields in t.overrides.items():
            ctype, cname = cid.split("/", 1)
            _check_depends_on(v, fields, components,
                              root + ("targets", tname, "components", ctype, cname))

    return DeploymentSpec(name, package, description, labels, dvars, denv, targets,
                          components, doc)


def _check_type(v: _Validator, ctype, path, types: Mapping[str, ComponentKeys]) -> ComponentKeys:
    if ctype not in types:
        raise v.fail(path, f"unknown component type '{ctype}'" + did_you_mean(ctype, types)
                     + f"; known types: {', '.join(sorted(types))}")
    return types[ctype]


def _component_fields(v: _Validator, fields, path, what, ctype, kind: ComponentKeys) -> dict:
    fields = v.mapping(fields, path, what)
    v.known_keys(fields, COMPONENT_KEYS, path, what)
    for key in kind.forbidden:
        if key in fields:
            raise v.fail(path + (key,), f"'{key}' is not allowed in {ctype} components")
    if "source" in fields:
        v.string(fields["source"], path + ("source",), "source")
    if "vars" in fields:
        v.mapping(fields["vars"], path + ("vars",), "vars")
    if "env" in fields:
        v.env_map(fields["env"], path + ("env",), "env")
    for key in ("run", "preview", "destroy"):  # (preview/destroy: command's lifecycle argv, SPEC 10)
        if key not in fields:
            continue
        run = fields[key]
        if isinstance(run, list):
            if not run:
                raise v.fail(path + (key,), f"{key} must not be empty")
            for i, arg in enumerate(run):
                if isinstance(arg, (dict, list)) or arg is None:
                    raise v.fail(path + (key, i), f"{key}: each argument must be a string or number")
        elif not isinstance(run, str) or not run.strip():
            raise v.fail(path + (key,), f"{key} must be a list of arguments or a non-empty string")
    for key in ("inputs", "sensitive"):
        if key in fields:
            items = fields[key]
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise v.fail(path + (key,), f"{key} must be a list of strings")
    for key in ("cache", "enabled"):
        if key in fields and not isinstance(fields[key], bool):
            raise v.fail(path + (key,), f"{key} must be true or false")
    if "timeout" in fields:
        t = fields["timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise v.fail(path + ("timeout",), "timeout must be a positive number of seconds")
    if "retries" in fields:
        r = fields["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise v.fail(path + ("retries",), "retries must be a whole number >= 0")
    if "backend" in fields:
        problem = backend_problem(fields["backend"])
        if problem:
            raise v.fail(path + ("backend", *problem[0]), problem[1])
    if "resources" in fields:
        res = v.mapping(fields["resources"], path + ("resources",), "resources")
        for name, amount in res.items():
            if not _RESOURCE_NAME.match(name):
                raise v.fail(path + ("resources", name), f"bad resource name '{name}': use letters, "
                             "digits, '_', '.', '-' (as in `dask worker --resources NAME=N`)")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
                raise v.fail(path + ("resources", name), f"resources: '{name}' must be a positive number")
    if "metadata" in fields:
        meta = v.mapping(fields["metadata"], path + ("metadata",), "metadata")
        v.known_keys(meta, METADATA_KEYS, path + ("metadata",), "metadata")
        deps = meta.get("depends_on", [])
        if deps is None:
            deps = []
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise v.fail(path + ("metadata", "depends_on"),
                         "depends_on must be a list of component ids (TYPE/NAME)")
    return fields


def _check_depends_on(v: _Validator, fields, components, path) -> None:
    deps = (fields.get("metadata") or {}).get("depends_on") or []
    for i, dep in enumerate(deps):
        if dep not in components:
            hint = did_you_mean(dep, components)
            if not hint and split_component_id(dep) is None:
                hint = " (component ids are TYPE/NAME, e.g. terraform/ecr/api)"
            raise v.fail(path + ("metadata", "depends_on", i),
                         f"depends on unknown component '{dep}'" + hint)
