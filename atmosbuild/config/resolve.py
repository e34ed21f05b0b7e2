"""Resolve a deployment at one target: merge by precedence, interpolate.

Precedence, lowest first (SPEC 2): deployment.vars < targets.T.vars <
component vars < targets.T.components.TYPE.NAME.vars. Maps merge deeply;
lists and scalars replace. The same for env.

Interpolation happens here for `${target}`, `${deployment}` and `${var.PATH}`.
`${outputs.ID.KEY}` is an upstream's output, only known at run time: it is
kept verbatim (and becomes a dependency edge), and `render()` substitutes it
just before the action runs. `$${` stays escaped until `render()` too, so the
text an action key hashes is exactly the template the user wrote.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from .model import DeploymentSpec
from .values import as_text

_REF = re.compile(r"\$\$\{|\$\{([^{}]*)\}")
_SENSITIVE_NAME = re.compile(r"secret|token|password|passwd|key", re.IGNORECASE)


@dataclass(frozen=True)
class ResolvedComponent:
    """One component at one target, fully resolved except for upstream outputs."""

    id: str
    type: str
    name: str
    source: str | None  # root-relative posix path, or `git::URL//SUBDIR?ref=REF` (sources/git.py)
    vars: Mapping[str, Any]
    env: Mapping[str, str]
    run: Any  # tuple of str, str (shell), or None
    inputs: tuple[str, ...]
    cache: bool
    timeout: float | None
    retries: int
    sensitive: tuple[str, ...]  # var/env names whose values are masked
    depends_on: tuple[str, ...]  # sorted: explicit ∪ implied by ${outputs...}
    output_refs: tuple[tuple[str, str], ...]  # (upstream id, key path)
    backend: Any = None  # terraform: the component's `backend:` (an override's replaces it)
    own_vars: tuple[str, ...] = ()  # var names set on the component itself or its per-target override
    preview: Any = None  # command: argv (tuple) or shell string for `preview` (SPEC 10); not in the key
    destroy: Any = None  # command: argv or shell string for `destroy`; not in the key
    # Where it may run (Dask worker resources), not what it does: not in the key.
    resources: Mapping[str, float] = field(default_factory=dict)


class RenderError(Exception):
    """A `${outputs...}` reference cannot be satisfied at run time."""


def deep_merge(*layers: Mapping) -> dict:
    """Merge maps left to right: nested maps merge, anything else replaces."""
    out: dict = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = deep_merge(out[k], v)
            else:
                out[k] = v
    return out


def is_sensitive_name(name: str) -> bool:
    return bool(_SENSITIVE_NAME.search(name))


def resolve_target(spec: DeploymentSpec, target: str) -> dict[str, ResolvedComponent]:
    """Every enabled component of `spec` at `target`, by id, in document order."""
    tspec = spec.targets[target]
    resolved: dict[str, ResolvedComponent] = {}
    enabled = {}
    for cid, comp in spec.components.items():
        override = tspec.overrides.get(cid, {})
        fields = {**comp.fields, **{k: v for k, v in override.items() if k not in ("vars", "env")}}
        if fields.get("enabled", True):
            enabled[cid] = (comp, override, fields)
    for cid, (comp, override, fields) in enabled.items():
        resolved[cid] = _resolve_component(spec, target, comp, override, fields, enabled)
    return resolved


def _resolve_component(spec, target, comp, override, fields, enabled) -> ResolvedComponent:
    tspec = spec.targets[target]
    cpath = ("deployment", "components", comp.type, comp.name)
    opath = ("deployment", "targets", target, "components", comp.type, comp.name)

    def where(field: str, *rest) -> tuple:
        """The path of `field` (a var or env entry: the layer that wins for
        its name) in the document, for an error's position."""
        if field in ("vars", "env") and rest:
            layers = ((opath, override), (cpath, comp.fields),
                      (("deployment", "targets", target), {"vars": tspec.vars, "env": tspec.env}),
                      (("deployment",), {"vars": spec.vars, "env": spec.env}))
            for base, fields in layers:
                if rest[0] in (fields.get(field) or {}):
                    return base + (field, *rest)
        if field in override:
            return opath + (field, *rest)
        if field in comp.fields:
            return cpath + (field, *rest)
        return cpath

    raw_vars = deep_merge(spec.vars, tspec.vars, comp.fields.get("vars"), override.get("vars"))
    raw_env = deep_merge(spec.env, tspec.env, comp.fields.get("env"), override.get("env"))
    interp = _Interpolator(spec, target, comp.id, raw_vars, enabled, where)
    vars_ = interp.all_vars()
    env = {k: as_text(interp.value(v, ("env", k))) for k, v in raw_env.items()}

    run = fields.get("run")
    if isinstance(run, list):
        run = tuple(as_text(interp.value(a, ("run", i))) for i, a in enumerate(run))
    elif isinstance(run, str):
        run = interp.value(run, ("run",), quote=True)
    lifecycle = {}
    for key in ("preview", "destroy"):  # command's optional argv for those verbs (SPEC 10)
        argv = fields.get(key)
        if isinstance(argv, list):
            argv = tuple(as_text(interp.value(a, (key, i))) for i, a in enumerate(argv))
        elif isinstance(argv, str):
            argv = interp.value(argv, (key,), quote=True)
        lifecycle[key] = argv
    if run is None and comp.type == "command":
        raise spec.fail(cpath, f"component {comp.id} has no `run`: command components need one")

    source = fields.get("source")
    if source is not None:
        source = interp.value(source, ("source",))
        if not (isinstance(source, str) and source.startswith("git::")):  # git: sources/git.py
            source = _root_relative(spec, source, where("source"), "source")
        if interp.refs_in(source):
            raise spec.fail(where("source"), "source cannot use ${outputs...}: it must be known before running")
    inputs = tuple(_root_relative(spec, p, where("inputs", i), "inputs")
                   for i, p in enumerate(fields.get("inputs") or []))

    explicit = [d for d in ((fields.get("metadata") or {}).get("depends_on") or []) if d in enabled]
    refs = interp.refs_in(vars_) | interp.refs_in(env) | interp.refs_in(run) \
        | interp.refs_in(lifecycle["preview"]) | interp.refs_in(lifecycle["destroy"])
    depends = sorted(set(explicit) | {ref[0] for ref in refs})

    sensitive = set(fields.get("sensitive") or [])
    sensitive |= {k for k in list(vars_) + list(env) if is_sensitive_name(k)}
    timeout = fields.get("timeout")
    return ResolvedComponent(
        id=comp.id, type=comp.type, name=comp.name, source=source, vars=vars_, env=env, run=run,
        inputs=inputs, cache=fields.get("cache", True),
        timeout=float(timeout) if timeout is not None else None,
        retries=fields.get("retries", 0), sensitive=tuple(sorted(sensitive)),
        depends_on=tuple(depends), output_refs=tuple(sorted(refs)),
        backend=fields.get("backend"), preview=lifecycle["preview"], destroy=lifecycle["destroy"],
        own_vars=tuple(sorted(set(comp.fields.get("vars") or {}) | set(override.get("vars") or {}))),
        resources=dict(fields.get("resources") or {}),
    )


def _root_relative(spec, path: str, where: tuple, what: str) -> str:
    if not isinstance(path, str) or not path:
        raise spec.fail(where, f"{what} must be a non-empty path relative to the workspace root")
    norm = posixpath.normpath(path.replace("\\", "/"))
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise spec.fail(where, f"{what} '{path}' resolves outside the workspace root")
    return norm


class _Interpolator:
    """Interpolates one component's strings; vars may refer to other vars."""

    def __init__(self, spec, target, cid, raw_vars, enabled, where) -> None:
        self.spec, self.target, self.cid = spec, target, cid
        self.raw_vars, self.enabled, self.where = raw_vars, enabled, where
        self.done: dict[str, Any] = {}
        self.active: list[str] = []

    def all_vars(self) -> dict:
        return {k: self._var(k) for k in self.raw_vars}

    def _var(self, key: str):
        if key in self.done:
            return self.done[key]
        if key in self.active:
            chain = " -> ".join(self.active[self.active.index(key):] + [key])
            raise self.spec.fail(self.where("vars", key), f"vars refer to each other in a cycle: {chain}")
        self.active.append(key)
        value = self.value(self.raw_vars[key], ("vars", key))
        self.active.pop()
        self.done[key] = value
        return value

    def value(self, value, path: tuple, quote: bool = False):
        if isinstance(value, str):
            return self._string(value, path, quote)
        if isinstance(value, dict):
            return {k: self.value(v, path + (k,), quote) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, path + (i,), quote) for i, v in enumerate(value)]
        return value

    def _string(self, text: str, path: tuple, quote: bool):
        if "${" not in text:
            return text
        matches = list(_REF.finditer(text))
        # A string that is exactly one ${var...} keeps the value's own type.
        if (not quote and len(matches) == 1 and matches[0].group(1) is not None
                and matches[0].span() == (0, len(text))):
            expr = matches[0].group(1).strip()
            if expr.startswith("var."):
                return self._lookup_var(expr, path)
        out, pos = [], 0
        for m in matches:
            out.append(text[pos:m.start()])
            pos = m.end()
            if m.group(1) is None:
                out.append("$${")
                continue
            expr = m.group(1).strip()
            if expr.startswith("outputs."):
                self._outputs_ref(expr, path)
                out.append("${" + expr + "}")
                continue
            if expr == "target":
                piece = self.target
            elif expr == "deployment":
                piece = self.spec.name
            elif expr.startswith("var."):
                piece = as_text(self._lookup_var(expr, path))
            else:
                raise self.spec.fail(self.where(*path), f"unknown reference '${{{expr}}}' in "
                                     f"{self.cid}; use ${{target}}, ${{deployment}}, ${{var.NAME}} "
                                     "or ${outputs.TYPE/NAME.KEY} (write $${ for a literal ${)")
            out.append(_shell_quote(piece) if quote else piece)
        out.append(text[pos:])
        return "".join(out)

    def _lookup_var(self, expr: str, path: tuple):
        parts = expr[len("var."):].split(".")
        if not parts[0] or parts[0] not in self.raw_vars:
            raise self.spec.fail(self.where(*path), f"unknown var '{expr[4:]}' in ${{{expr}}} of {self.cid}")
        value = self._var(parts[0])
        for i, part in enumerate(parts[1:], 1):
            if isinstance(value, dict) and part in value:
                value = value[part]
            else:
                raise self.spec.fail(self.where(*path), f"unknown var '{'.'.join(parts[:i + 1])}' in "
                                     f"${{{expr}}} of {self.cid}")
        return value

    def _outputs_ref(self, expr: str, path: tuple) -> tuple[str, str]:
        ref = parse_outputs_ref(expr, self.spec.components)
        if ref is None:
            raise self.spec.fail(self.where(*path), f"'${{{expr}}}' does not name a component of "
                                 "this deployment; use ${outputs.TYPE/NAME.KEY}")
        if ref[0] == self.cid:
            raise self.spec.fail(self.where(*path), f"{self.cid} refers to its own outputs")
        if ref[0] not in self.enabled:
            raise self.spec.fail(self.where(*path), f"'${{{expr}}}' refers to {ref[0]}, which is "
                                 f"disabled at target '{self.target}'")
        return ref

    def refs_in(self, value) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        _walk_refs(value, self.spec.components, found)
        return found


def _shell_quote(piece: str) -> str:
    """shlex.quote for a value going into a string-form `run`. A value can
    still hold `${outputs...}` references (a var set from an upstream output):
    those stay bare, because render() shell-quotes what they become, and
    quoting them twice would leave the output unquoted in the shell."""
    if "${outputs." not in piece:
        return shlex.quote(piece)
    out, pos = [], 0
    for m in _REF.finditer(piece):
        if m.group(1) is None or not m.group(1).strip().startswith("outputs."):
            continue  # `$${` and anything else stay inside the quoted text
        if m.start() > pos:
            out.append(shlex.quote(piece[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    if pos < len(piece):
        out.append(shlex.quote(piece[pos:]))
    return "".join(out)


def parse_outputs_ref(expr: str, component_ids) -> tuple[str, str] | None:
    """'outputs.terraform/ecr/api.url' -> ('terraform/ecr/api', 'url'); the
    longest known component id wins, since names may contain dots."""
    body = expr[len("outputs."):]
    best = None
    for i, ch in enumerate(body):
        if ch == "." and body[:i] in component_ids and i + 1 < len(body):
            best = (body[:i], body[i + 1:])
    return best


def _walk_refs(value, component_ids, found) -> None:
    if isinstance(value, str):
        if "${outputs." in value:
            for m in _REF.finditer(value):
                expr = (m.group(1) or "").strip()
                if expr.startswith("outputs."):
                    ref = parse_outputs_ref(expr, component_ids)
                    if ref:
                        found.add(ref)
    elif isinstance(value, dict):
        for v in value.values():
            _walk_refs(v, component_ids, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk_refs(v, component_ids, found)


def render(value, outputs: Mapping[str, Mapping[str, Any]], component_ids, quote: bool = False):
    """Substitute upstream outputs and unescape `$${` just before running."""
    if isinstance(value, str):
        if "${" not in value:
            return value
        matches = list(_REF.finditer(value))
        if (len(matches) == 1 and matches[0].group(1) is not None
                and matches[0].span() == (0, len(value)) and not quote):
            expr = matches[0].group(1).strip()
            if expr.startswith("outputs."):
                return _output_value(expr, outputs, component_ids)
        out, pos = [], 0
        for m in matches:
            out.append(value[pos:m.start()])
            pos = m.end()
            if m.group(1) is None:
                out.append("${")
                continue
            piece = as_text(_output_value(m.group(1).strip(), outputs, component_ids))
            out.append(shlex.quote(piece) if quote else piece)
        out.append(value[pos:])
        return "".join(out)
    if isinstance(value, dict):
        return {k: render(v, outputs, component_ids, quote) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(render(v, outputs, component_ids, quote) for v in value)
    return value


def _output_value(expr: str, outputs, component_ids):
    ref = parse_outputs_ref(expr, component_ids)
    if ref is None:
        raise RenderError(f"bad reference ${{{expr}}}")
    upstream, key = ref
    value = outputs.get(upstream, {})
    for i, part in enumerate(key.split(".")):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            have = ", ".join(sorted(value)) if isinstance(value, dict) and value else "no outputs"
            raise RenderError(f"{upstream} has no output '{key}' (it output: {have})")
    return value
