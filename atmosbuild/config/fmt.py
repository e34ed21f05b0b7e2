"""Canonical text of a deployment document: the DSL and YAML writers.

`format_dsl` is what `atmosbuild fmt` prints and `convert --to dsl` writes;
`format_yaml` is `convert --to yaml`. Both are deterministic and lossless for
every valid document: parse_dsl(format_dsl(d)).data == d and
yaml.safe_load(format_yaml(d)) == d, with exact types (1 vs 1.0 vs True).

Both write schema keys in one canonical order (DEPLOYMENT_KEYS, TARGET_KEYS,
COMPONENT_KEYS) and everything else -- targets, component types, components,
user maps such as `vars` -- in document order, so YAML -> DSL -> YAML gives
back the same text.

DSL layout (that of the SPEC's example): 2-space indent; attributes, then
target blocks, then component blocks, a blank line between those three
groups; a map at statement level is a block (`vars {` ... `}`), anywhere else
inline (`{ k = v, ... }`); lists always inline; keys bare when they are
identifiers, quoted otherwise. Anything the block forms cannot express
(an empty `components`, a target that is not a map, ...) is written as a
plain attribute or map block, so nothing is ever dropped.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Iterable, Optional

from ..errors import ConfigError
from .document import COMPONENT_KEYS, DEPLOYMENT_KEYS, METADATA_KEYS, TARGET_KEYS

__all__ = ["format_dsl", "format_yaml", "layout", "Statement"]

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_INDENT = "  "


# ---------------------------------------------------------------------------
# scalars


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
# Quotes, backslashes, and everything invisible or line-breaking.
_NEEDS_ESCAPE_RE = re.compile('["\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]')


def _escape_char(m: re.Match) -> str:
    ch = m.group()
    return _ESCAPES.get(ch) or "\\u%04x" % ord(ch)


def quote(text: str) -> str:
    """`text` as a DSL string literal (`${` and `$${` are left as they are)."""
    if not _NEEDS_ESCAPE_RE.search(text):
        return f'"{text}"'
    return '"' + _NEEDS_ESCAPE_RE.sub(_escape_char, text) + '"'


def _key(key) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"cannot write key {key!r}: keys must be strings")
    if _IDENT_RE.match(key):
        return key
    return quote(key)


def inline(value) -> str:
    """`value` on one line: maps as `{ k = v, ... }`, lists as `[a, b]`."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write the number {value} in the DSL")
        return repr(float(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {inline(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write a {type(value).__name__} value ({value!r}) in the DSL")


# ---------------------------------------------------------------------------
# layout: the statements the DSL text is made of


@dataclass
class Statement:
    """One statement of the canonical DSL: a one-line attribute (`block` is
    None) or a block with `children`. `path` is where it sits in the data;
    comments are attached to paths (see dsl._attach_comments)."""

    path: tuple
    head: str  # `source = "x"`, or `terraform "ecr/api"` / `vars` before " {"
    block: Optional[dict] = None
    children: list = field(default_factory=list)
    spaced: bool = False  # a blank line before it, unless it opens its block
    value: object = None  # an attribute's value


def _ordered(d: dict, keys: tuple) -> list:
    return [k for k in keys if k in d] + [k for k in d if k not in keys]


def _generic(key, value, path: tuple, quoted: bool = False) -> Statement:
    head = quote(key) if quoted else _key(key)
    if isinstance(value, dict):
        p = path + (key,)
        return Statement(p, head, value, [_generic(k, v, p) for k, v in value.items()])
    return Statement(path + (key,), f"{head} = {inline(value)}", value=value)


def _is_map_of_maps(value, depth: int) -> bool:
    """What `target`/`TYPE "NAME"` blocks can express: a non-empty map of
    maps, `depth` levels deep, every level but the innermost non-empty."""
    if not isinstance(value, dict) or not value:
        return False
    if depth == 1:
        return all(isinstance(v, dict) for v in value.values())
    return all(_is_map_of_maps(v, depth - 1) for v in value.values())


def _component_blocks(components: dict, path: tuple, spaced: bool) -> list:
    """`TYPE "NAME" { ... }` blocks; a type named target is quoted so it does
    not read as a target block. `spaced`: a blank line before the first."""
    out = []
    for type_, of_type in components.items():
        head = quote(type_) if type_ == "target" else _key(type_)
        for name, body in of_type.items():
            p = path + (type_, name)
            out.append(Statement(p, f"{head} {quote(_str_key(name))}", body,
                                 _component_body(body, p), spaced and not out))
    return out


def _str_key(key) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"cannot write key {key!r}: keys must be strings")
    return key


def _component_body(component: dict, path: tuple) -> list:
    out = []
    for k in _ordered(component, COMPONENT_KEYS):
        v = component[k]
        if k == "metadata" and isinstance(v, dict) and list(v) == ["depends_on"]:
            deps = v["depends_on"]
            out.append(Statement(path + ("metadata", "depends_on"), f"depends_on = {inline(deps)}",
                                 value=deps))
        else:  # a literal "depends_on" key is quoted so it does not become metadata
            out.append(_generic(k, v, path, quoted=(k == "depends_on")))
    return out


def _target_body(target: dict, path: tuple) -> list:
    out = []
    for k in _ordered(target, TARGET_KEYS):
        v = target[k]
        if k == "components" and _is_map_of_maps(v, 2):
            out += _component_blocks(v, path + (k,), spaced=False)
        else:
            out.append(_generic(k, v, path))
    return out


def layout(data: dict) -> Statement:
    """The `deployment` statement format_dsl writes for `data`."""
    if not isinstance(data, dict) or set(data) != {"deployment"} or not isinstance(data["deployment"], dict):
        raise ConfigError("cannot write the DSL: a document is {\"deployment\": {...}}")
    dep = data["deployment"]
    path = ("deployment",)
    name = dep.get("name")
    head = f"deployment {quote(name)}" if isinstance(name, str) else "deployment"
    children = []
    for k in _ordered(dep, DEPLOYMENT_KEYS):
        v = dep[k]
        if k == "name" and isinstance(v, str):
            continue
        if k == "targets" and _is_map_of_maps(v, 1):
            for i, (tname, target) in enumerate(v.items()):
                p = path + (k, tname)
                children.append(Statement(p, f"target {quote(_str_key(tname))}", target,
                                          _target_body(target, p), spaced=(i == 0)))
        elif k == "components" and _is_map_of_maps(v, 2):
            children += _component_blocks(v, path + (k,), spaced=True)
        else:
            children.append(_generic(k, v, path))
    return Statement(path, head, dep, children)


# ---------------------------------------------------------------------------
# DSL text


def format_dsl(data: dict, comments: Optional[Iterable[tuple]] = None) -> str:
    """The canonical DSL text of a document.

    `comments` is Document.comments of a parsed DSL file: ((path, where,
    text), ...) with where one of "before" (lines above the statement),
    "after" (end of its first line), "end" (lines before the `}` of the
    block; path () is the end of the file) and "close" (after its `}`).
    Several trailing comments for one line are joined on that line. A
    comment whose statement is gone is kept at the end of the file.
    """
    notes: dict[tuple, list] = {}
    for path, where, text in comments or ():
        notes.setdefault((tuple(path), where), []).append(text)
    order = list(notes)
    out: list[str] = []
    _render(layout(data), "", notes, out, first=True)
    out += notes.pop(((), "end"), [])
    for left in order:  # orphans, in source order
        out += notes.pop(left, [])
    return "\n".join(out) + "\n"


def _trailing(texts: list) -> str:
    return "  " + " ".join(texts) if texts else ""


def _render(st: Statement, indent: str, notes: dict, out: list, first: bool) -> None:
    if st.spaced and not first:
        out.append("")
    out += [indent + c for c in notes.pop((st.path, "before"), ())]
    after = notes.pop((st.path, "after"), [])
    if st.block is None:
        out.append(indent + st.head + _trailing(after))
        return
    end = notes.pop((st.path, "end"), [])
    close = notes.pop((st.path, "close"), [])
    if not st.children and not end and not (after and close):
        out.append(indent + st.head + " {}" + _trailing(after or close))
        return
    out.append(indent + st.head + " {" + _trailing(after))
    inner = indent + _INDENT
    for i, child in enumerate(st.children):
        _render(child, inner, notes, out, first=(i == 0))
    out += [inner + c for c in end]
    out.append(indent + "}" + _trailing(close))


# ---------------------------------------------------------------------------
# YAML text


def canonical_order(data: dict) -> dict:
    """`data` with schema keys in canonical order (user maps untouched)."""
    dep = data.get("deployment") if isinstance(data, dict) else None
    if not isinstance(dep, dict):
        return data
    out = {}
    for k in _ordered(dep, DEPLOYMENT_KEYS):
        v = dep[k]
        if k == "targets" and isinstance(v, dict):
            v = {t: _ordered_target(b) for t, b in v.items()}
        elif k == "components":
            v = _ordered_components(v)
        out[k] = v
    return {**data, "deployment": out}


def _ordered_target(target):
    if not isinstance(target, dict):
        return target
    return {k: (_ordered_components(target[k]) if k == "components" else target[k])
            for k in _ordered(target, TARGET_KEYS)}


def _ordered_components(components):
    if not isinstance(components, dict):
        return components
    return {t: ({n: _ordered_component(c) for n, c in of_type.items()}
                if isinstance(of_type, dict) else of_type)
            for t, of_type in components.items()}


def _ordered_component(component):
    if not isinstance(component, dict):
        return component
    out = {}
    for k in _ordered(component, COMPONENT_KEYS):
        v = component[k]
        if k == "metadata" and isinstance(v, dict):
            v = {m: v[m] for m in _ordered(v, METADATA_KEYS)}
        out[k] = v
    return out


_dumper = None
_dumper_lock = threading.Lock()
# Line breaks (to YAML) other than \n; written as escapes in double quotes.
_YAML_LINE_BREAKS_RE = re.compile("[\r\x85\u2028\u2029\ufeff]")


def _yaml_dumper():
    """A SafeDumper that never writes anchors and writes multi-line strings
    as literal blocks (`|`) when YAML allows it (else double-quoted)."""
    global _dumper
    if _dumper is not None:
        return _dumper
    with _dumper_lock:
        if _dumper is None:
            _dumper = _make_dumper()
    return _dumper


def _make_dumper():
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    def represent_str(dumper, text: str):
        if _YAML_LINE_BREAKS_RE.search(text):
            style = '"'  # PyYAML folds these wrongly in other styles
        elif "\n" in text:
            style = "|"
        else:
            style = None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, represent_str)
    return Dumper


def format_yaml(data: dict) -> str:
    """The canonical YAML text of a document: block style, schema keys in
    canonical order, strings quoted wherever a plain scalar would read back
    as something else ("yes", "1", "null", ...)."""
    import yaml

    return yaml.dump(
        canonical_order(data), Dumper=_yaml_dumper(), sort_keys=False,
        allow_unicode=True, default_flow_style=False, width=1 << 30,
    )
