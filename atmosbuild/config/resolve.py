"""Resolve a deployment at one target: merge by precedence, interpolate.

Precedence, lowest first (SPEC 2): deployment.vars < targets.T.vars <
component vars < targets.T.components.TYPE.NAME.vars. Maps merge deeply;
lists and scalars replace. The same for env.

Interpolation happens here for `${target}`, `${deployment}` and `${var.PATH}`.
`${outputs.ID.KEY}` is an upstream's output, only known at run time: it is
kept verbatim (and becomes a dependency edge), and `render()` substitutes it
just before the action runs. `$${` stays escaped until `render()` too, so the
text an action key hashes is exactly the template the user wrote.

A string-form `run` (it runs under `sh -c`) never gets values pasted in: each
reference becomes a quoted expansion of an environment variable
(`"${ATMOS_V_1}"`, config/shell.py decides the quoting from where the
reference stands) and the value goes to `run_env`, so no value is ever
parsed by the shell (SPEC 2).

Taint (SPEC 14): a var or env entry is sensitive when `sensitive:` lists it,
its name matches `_SENSITIVE_NAME`, or its value is built from a sensitive
var; `sensitive` holds all their names, `secret_run` the argv positions and
`run_env` names built from one. Outputs only known at run time taint at run
time (run/rollout.py).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import ConfigError, caret_context
from .model import DeploymentSpec
from .shell import Ref, ShellContextError, classify, expansion
from .values import as_text
from .workspace import outside_root

# The one scanner of `${...}` (SPEC 2): `_REF.split(text)` is [text, expr,
# text, expr, ..., text], expr None for the escape `$${`; `substitute` and
# `references` are the two ways it is read.
_REF = re.compile(r"\$\$\{|\$\{([^{}]*)\}")
_SENSITIVE_NAME = re.compile(r"secret|token|password|passwd|key", re.IGNORECASE)
RUN_VAR_PREFIX = "ATMOS_V_"  # the environment variables that carry values into `sh -c`


def substitute(text: str, expand: Callable[[str], Any], escape: str):
    """`text` with each reference replaced by `expand(expression)` pasted as
    text (`as_text`) and each `$${` by `escape`; a text that is exactly one
    reference is `expand(expression)` itself, so it keeps the value's type.
    Expressions are expanded in the order they are written."""
    if "${" not in text:
        return text
    parts = _REF.split(text)
    if len(parts) == 3 and parts[1] is not None and not parts[0] and not parts[2]:
        return expand(parts[1].strip())
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        expr = parts[i]
        out.append(escape if expr is None else as_text(expand(expr.strip())))
        out.append(parts[i + 1])
    return "".join(out)


def references(text: str) -> list[str]:
    """The expressions of the references in `text`, stripped, in order (no escapes)."""
    if "${" not in text:
        return []
    return [expr.strip() for expr in _REF.split(text)[1::2] if expr is not None]


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
    sensitive: tuple[str, ...]  # var/env names whose values are secret (listed, by name, derived)
    depends_on: tuple[str, ...]  # sorted: explicit ∪ implied by ${outputs...}
    output_refs: tuple[tuple[str, str], ...]  # (upstream id, key path)
    backend: Any = None  # terraform: the component's `backend:` (an override's replaces it)
    own_vars: tuple[str, ...] = ()  # var names set on the component itself or its per-target override
    preview: Any = None  # command: argv (tuple) or shell string for `preview` (SPEC 10); not in the key
    destroy: Any = None  # command: argv or shell string for `destroy`; not in the key
    # Where it may run (Dask worker resources), not what it does: not in the key.
    resources: Mapping[str, float] = field(default_factory=dict)
    # string-form run: ATMOS_V_n -> the value (a template: may hold ${outputs...})
    run_env: Mapping[str, str] = field(default_factory=dict)
    # argv positions (int) and run_env names (str) whose values are built from a secret
    secret_run: tuple = ()
    declared_sensitive: tuple[str, ...] = ()  # `sensitive:` as written (also names outputs)
    # string-form preview/destroy: verb -> its ATMOS_V_n -> value (as run_env)
    verb_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


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
        try:
            resolved[cid] = _resolve_component(spec, target, comp, override, fields, enabled)
        except ConfigError as err:
            raise _without_secrets(err, spec, tspec, comp, override, fields) from None
    return resolved


def _without_secrets(err: ConfigError, spec, tspec, comp, override, fields) -> ConfigError:
    """`err` with the values of the component's sensitive vars and env masked
    in its message and in the lines of the file it quotes (SPEC 14: an error
    is printed too)."""
    declared = set(fields.get("sensitive") or [])
    secrets: list[str] = []
    for layer in (spec.vars, tspec.vars, comp.fields.get("vars"), override.get("vars"),
                  spec.env, tspec.env, comp.fields.get("env"), override.get("env")):
        for name, value in (layer or {}).items():
            if name in declared or is_sensitive_name(name):
                _leaves(value, secrets)
    if not secrets:
        return err
    secrets.sort(key=len, reverse=True)

    def mask(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    err.message = mask(err.message)
    err.context = tuple(mask(line) for line in err.context)
    err.args = (err.message,)
    return err


def _leaves(value, out: list[str]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _leaves(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaves(v, out)
    elif value is not None and as_text(value):
        out.append(as_text(value))


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
    declared = tuple(fields.get("sensitive") or [])
    secret_names = set(declared) | {k for k in list(raw_vars) + list(raw_env) if is_sensitive_name(k)}
    interp = _Interpolator(spec, target, comp.id, raw_vars, enabled, where, secret_names)
    vars_ = interp.all_vars()
    env = {}
    for k, v in raw_env.items():
        if k.startswith(RUN_VAR_PREFIX):
            raise spec.fail(where("env", k), f"env names starting with {RUN_VAR_PREFIX} are "
                            "atmosbuild's own (they carry values into a string-form run)")
        env[k], tainted = interp.tracked(v, ("env", k))
        env[k] = as_text(env[k])
        if tainted:
            secret_names.add(k)

    run = fields.get("run")
    run_env: dict[str, str] = {}
    secret_run: list = []
    if isinstance(run, list):
        items = []
        for i, a in enumerate(run):
            value, tainted = interp.tracked(a, ("run", i))
            items.append(as_text(value))
            if tainted:
                secret_run.append(i)
        run = tuple(items)
    elif isinstance(run, str):
        run, run_env, secret_run = interp.shell_run(run, ("run",))
    lifecycle = {}
    verb_env: dict[str, dict] = {}
    for key in ("preview", "destroy"):  # command's optional argv for those verbs (SPEC 10)
        argv = fields.get(key)
        if isinstance(argv, list):
            argv = tuple(as_text(interp.value(a, (key, i))) for i, a in enumerate(argv))
        elif isinstance(argv, str):
            argv, values, _ = interp.shell_run(argv, (key,))
            if values:
                verb_env[key] = values
        lifecycle[key] = argv
    for key in comp.required:  # (declared by the type: command's `run`)
        if fields.get(key) is None:
            raise spec.fail(cpath, f"component {comp.id} has no `{key}`: {comp.type} components need one")

    source = fields.get("source")
    if source is not None:
        source = interp.value(source, ("source",))
        if not (isinstance(source, str) and source.startswith("git::")):  # git: sources/git.py
            source = _root_relative(spec, source, where("source"), "source")
        if interp.refs_in(source):
            raise spec.fail(where("source"), "source cannot use ${outputs...}: it must be known before running")
        if interp.tracked(fields.get("source"), ("source",))[1]:
            raise spec.fail(where("source"), "source cannot use a sensitive value: paths are "
                            "printed and stored")
    inputs = tuple(_root_relative(spec, p, where("inputs", i), "inputs")
                   for i, p in enumerate(fields.get("inputs") or []))

    explicit = [d for d in ((fields.get("metadata") or {}).get("depends_on") or []) if d in enabled]
    refs = interp.refs_in(vars_) | interp.refs_in(env) | interp.refs_in(run) | interp.refs_in(run_env) \
        | interp.refs_in(lifecycle["preview"]) | interp.refs_in(lifecycle["destroy"]) \
        | interp.refs_in(verb_env)
    depends = sorted(set(explicit) | {ref[0] for ref in refs})

    sensitive = secret_names | interp.secret_vars
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
        run_env=run_env, secret_run=tuple(secret_run), declared_sensitive=declared, verb_env=verb_env,
    )


def _at_reference(err: ConfigError, source: str | None, text: str, index: int) -> ConfigError:
    """`err` (positioned at the `run` value) moved to the reference itself
    when the source line shows it as written: the `index`-th reference of
    `text`, found after the value's column on its line exactly as often as
    the references before it."""
    if not source or err.line is None or err.col is None:
        return err
    refs = [m for m in _REF.finditer(text) if m.group(1) is not None]
    ref = refs[index].group(0)
    before = sum(1 for m in refs[:index] if m.group(0) == ref)
    lines = source.splitlines()
    if not 1 <= err.line <= len(lines):
        return err
    line = lines[err.line - 1]
    pos = err.col - 2
    for _ in range(before + 1):
        pos = line.find(ref, pos + 1)
        if pos < 0:
            return err
    err.col = pos + 1
    err.context = tuple(caret_context(source, err.line, err.col))
    return err


def _root_relative(spec, path: str, where: tuple, what: str) -> str:
    if not isinstance(path, str) or not path:
        raise spec.fail(where, f"{what} must be a non-empty path relative to the workspace root")
    norm = posixpath.normpath(path.replace("\\", "/"))
    if outside_root(norm):
        raise spec.fail(where, f"{what} '{path}' resolves outside the workspace root")
    return norm


class _Interpolator:
    """Interpolates one component's strings; vars may refer to other vars."""

    def __init__(self, spec, target, cid, raw_vars, enabled, where, secret_names=frozenset()) -> None:
        self.spec, self.target, self.cid = spec, target, cid
        self.raw_vars, self.enabled, self.where = raw_vars, enabled, where
        self.secret_names = secret_names
        self.done: dict[str, Any] = {}
        self.active: list[str] = []
        # The vars looked up while interpolating the value being computed (a
        # stack: a var's own value is computed inside another's); the vars
        # found to be secret, directly or because they are built from one.
        self.touched: list[set[str]] = [set()]
        self.secret_vars: set[str] = set()

    def tracked(self, value, path: tuple):
        """(interpolated value, whether it is built from a secret var)."""
        self.touched.append(set())
        try:
            out = self.value(value, path)
        finally:
            used = self.touched.pop()
        return out, bool(used & self.secret_vars)

    def all_vars(self) -> dict:
        return {k: self._var(k) for k in self.raw_vars}

    def _var(self, key: str):
        if key in self.done:
            return self.done[key]
        if key in self.active:
            chain = " -> ".join(self.active[self.active.index(key):] + [key])
            raise self.spec.fail(self.where("vars", key), f"vars refer to each other in a cycle: {chain}")
        self.active.append(key)
        self.touched.append(set())
        value = self.value(self.raw_vars[key], ("vars", key))
        used = self.touched.pop()
        self.active.pop()
        if key in self.secret_names or used & self.secret_vars:
            self.secret_vars.add(key)
        self.done[key] = value
        return value

    def shell_run(self, text: str, path: tuple) -> tuple[str, dict, list]:
        """A string-form run: (template with each reference replaced by a
        quoted expansion of ATMOS_V_n, ATMOS_V_n -> value, secret names)."""
        if "${" not in text:
            return text, {}, []
        items: list = []
        refs: list[str] = []
        for i, piece in enumerate(_REF.split(text)):
            if i % 2 == 0:
                items.extend(piece)
            elif piece is None:
                items.extend("${")  # what the shell will see
            else:
                refs.append(piece.strip())
                items.append(Ref(len(refs) - 1))
        if not refs:
            return text, {}, []
        try:
            contexts = classify(items)
        except ShellContextError as exc:
            err = self.spec.fail(self.where(*path), f"`${{{refs[exc.ref]}}}` in the {path[0]} of {self.cid} "
                                 "cannot be passed safely where it stands: "
                                 + exc.message.replace("${x}", "${" + refs[exc.ref] + "}"))
            raise _at_reference(err, self.spec.document.text, text, exc.ref) from None
        names: dict[str, str] = {}
        run_env: dict[str, str] = {}
        secret: list[str] = []
        for expr in refs:
            if expr in names:
                continue
            name = names[expr] = f"{RUN_VAR_PREFIX}{len(names) + 1}"
            value, tainted = self.tracked("${" + expr + "}", path)
            run_env[name] = as_text(value)
            if tainted:
                secret.append(name)
        pending = iter(zip(refs, contexts))

        def quoted(_expr: str) -> str:
            expr, context = next(pending)
            return expansion(names[expr], context)

        return substitute(text, quoted, "$${"), run_env, secret

    def value(self, value, path: tuple):
        if isinstance(value, str):
            return self._string(value, path)
        if isinstance(value, dict):
            return {k: self.value(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, path + (i,)) for i, v in enumerate(value)]
        return value

    def _string(self, text: str, path: tuple):
        return substitute(text, lambda expr: self._expand(expr, path), "$${")

    def _expand(self, expr: str, path: tuple):
        if expr.startswith("outputs."):
            self._outputs_ref(expr, path)
            return "${" + expr + "}"
        if expr == "target":
            return self.target
        if expr == "deployment":
            return self.spec.name
        if expr.startswith("var."):
            return self._lookup_var(expr, path)
        raise self.spec.fail(self.where(*path), f"unknown reference '${{{expr}}}' in "
                             f"{self.cid}; use ${{target}}, ${{deployment}}, ${{var.NAME}} "
                             "or ${outputs.TYPE/NAME.KEY} (write $${ for a literal ${)")

    def _lookup_var(self, expr: str, path: tuple):
        parts = expr[len("var."):].split(".")
        if not parts[0] or parts[0] not in self.raw_vars:
            raise self.spec.fail(self.where(*path), f"unknown var '{expr[4:]}' in ${{{expr}}} of {self.cid}")
        value = self._var(parts[0])
        self.touched[-1].add(parts[0])
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
            for expr in references(value):
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


def render(value, outputs: Mapping[str, Mapping[str, Any]], component_ids):
    """Substitute upstream outputs and unescape `$${` just before running.
    Values are pasted as text: never into shell code (a string-form run holds
    only expansions of its `run_env`, see `_Interpolator.shell_run`)."""
    if isinstance(value, str):
        return substitute(value, lambda expr: _output_value(expr, outputs, component_ids), "${")
    if isinstance(value, dict):
        return {k: render(v, outputs, component_ids) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(render(v, outputs, component_ids) for v in value)
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
