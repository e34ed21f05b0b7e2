"""The DSL front end: BUILD.atmos text -> Document(kind="dsl").

One pass, no parse tree: lark's LALR parser calls `_Builder`'s methods as it
reduces, and they build the document directly in the YAML shape of
document.py (`depends_on = [...]` becomes `metadata.depends_on`, `target` and
`TYPE "NAME"` blocks land under `targets` and `components`). Duplicates are
caught as each block closes, positioned at the second occurrence.

Positions cost one dict entry per key: every dict the parser builds gets a
side table `{key: Token}` (filed under `id(dict)`), and `locate` walks a path
through data and tables together. Comments arrive through a lark lexer
callback and, only when a file has some, are attached to the statements the
formatter writes (see `_attach_comments` and fmt.format_dsl).

Speed, measured on 5,000 components (source, 3-key vars, depends_on; 45,000
lines): 0.9 s for import + grammar + parse, 0.7-0.8 s of it the parse, more
than half of that inside lark's lexer. What got it there: the grammar shape
(see atmos.lark), callbacks instead of a tree, the garbage collector paused
during the parse (-13%: millions of acyclic allocations), and lark's
compiled grammar cached per user ($XDG_CACHE_HOME/atmosbuild, 12 ms to load
instead of 90 ms to build). lark is imported here and nowhere else.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import os
import re
import sys
import threading
from pathlib import Path
from typing import Optional

import lark
from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ..errors import ConfigError, caret_context
from .document import Document, Position

__all__ = ["parse_dsl"]

_LARK_OPTIONS = {
    "parser": "lalr",
    "lexer": "contextual",
    "maybe_placeholders": False,
    "propagate_positions": False,
}


def _grammar_path() -> Path:
    """grammar/atmos.lark: inside the installed package, else at the source root."""
    here = Path(__file__).resolve()
    shipped = here.parents[1] / "grammar" / "atmos.lark"
    return shipped if shipped.exists() else here.parents[2] / "grammar" / "atmos.lark"


def _cache_file(grammar: str) -> Optional[str]:
    """A per-user file for lark's compiled-grammar cache, or None if unusable."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "atmosbuild"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (OSError, RuntimeError):
        return None
    key = "\0".join([grammar, lark.__version__, sys.version, repr(sorted(_LARK_OPTIONS.items()))])
    return str(base / f"grammar-{hashlib.sha256(key.encode()).hexdigest()[:20]}.lark-cache")


# ---------------------------------------------------------------------------
# strings


_ESCAPE_RE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|(.))")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _unescape_match(m: re.Match) -> str:
    code = m.group(1)
    return chr(int(code, 16)) if code else _SIMPLE_ESCAPES[m.group(2)]


# ---------------------------------------------------------------------------
# the builder: lark callbacks that produce the document


class _Labeled:
    """A `WORD "NAME" { ... }` block: a target or a component, as its parent
    decides. `items` are the statements of its body, uninterpreted."""

    __slots__ = ("word", "name", "items", "rbrace")

    def __init__(self, word: Token, name: Token, items: list, rbrace: Token) -> None:
        self.word = word  # TYPE or `target`: where the block is located
        self.name = name
        self.items = items
        self.rbrace = rbrace

    @property
    def is_target(self) -> bool:
        return self.word.type == "IDENT" and self.word.value == "target"


_MISSING = object()


class _Builder(Transformer):
    """Callbacks named after grammar rules (and value terminals, which lark
    converts as it shifts them). One instance serves every parse, so
    `parse_dsl` resets it under a lock."""

    def __init__(self) -> None:
        super().__init__(visit_tokens=True)
        self.reset("", "")

    def reset(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        # id(dict) -> (dict, {key: Token of the key}, Token of its closing brace or None)
        self.tables: dict[int, tuple] = {}
        # id(list) -> (list, Token of its `]`)
        self.list_ends: dict[int, tuple] = {}
        self.comments: list[Token] = []

    # -- errors

    def error(self, message: str, tok: Token) -> ConfigError:
        return ConfigError(
            message, file=self.file, line=tok.line, col=tok.column,
            context=caret_context(self.text, tok.line, tok.column),
        )

    # -- terminals

    def comment(self, tok: Token) -> Token:  # lexer callback
        self.comments.append(tok)
        return tok

    def INT(self, tok: Token) -> int:
        try:
            return int(tok)
        except ValueError:  # past sys.get_int_max_str_digits()
            raise self.error("number has too many digits", tok) from None

    def FLOAT(self, tok: Token) -> float:
        value = float(tok)
        if value in (float("inf"), float("-inf")):
            raise self.error(f"number {tok} is out of range", tok)
        return value

    def TRUE(self, tok: Token) -> bool:
        return True

    def FALSE(self, tok: Token) -> bool:
        return False

    def NULL(self, tok: Token) -> None:
        return None

    def string(self, tok: Token) -> str:
        """The text of a STRING token: quotes dropped, escapes decoded,
        `${...}` and `$${` left alone (interpolation happens later)."""
        raw = tok.value
        if "\\" not in raw:
            return raw[1:-1]
        text = _ESCAPE_RE.sub(_unescape_match, raw[1:-1])
        if _SURROGATE_RE.search(text):
            try:  # \ud83d\ude00 is one character, as in JSON
                text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError:
                raise self.error("invalid \\u escape: unpaired surrogate", tok) from None
        return text

    def key(self, tok: Token) -> str:
        kind = tok.type
        if kind == "IDENT":
            return tok.value
        if kind == "KEY_EQ":  # `name =`
            return tok.value[:-1].rstrip()
        return self.string(tok)

    # -- values

    def attr(self, c: list) -> tuple:
        k, v = c
        if v.__class__ is Token:  # STRING; every other terminal arrives converted
            v = self.string(v)
        if k.type == "KEY_EQ":
            return (k.value[:-1].rstrip(), v, k)
        return (k.value if k.type == "IDENT" else self.string(k), v, k)

    def items(self, c: list) -> list:
        if len(c) == 1:
            v = c[0]
            return [self.string(v) if v.__class__ is Token else v]
        values, v = c
        values.append(self.string(v) if v.__class__ is Token else v)
        return values

    def list(self, c: list) -> list:
        values = c[0] if len(c) == 2 else []
        self.list_ends[id(values)] = (values, c[-1])
        return values

    def body(self, c: list) -> tuple:
        """Entries of a map or map block: (dict, {key: Token})."""
        if len(c) == 1:
            k, v, tok = c[0]
            return ({k: v}, {k: tok})
        frame, (k, v, tok) = c
        d, pos = frame
        if k in d:
            raise self.duplicate(f"duplicate attribute '{k}'", tok, pos[k])
        d[k] = v
        pos[k] = tok
        return frame

    def map(self, c: list) -> dict:
        d, pos = c[0] if len(c) == 2 else ({}, {})
        self.tables[id(d)] = (d, pos, c[-1])
        return d

    def block(self, c: list) -> tuple:
        k = c[0]
        d, pos = c[1] if len(c) == 3 else ({}, {})
        self.tables[id(d)] = (d, pos, c[-1])
        return (self.key(k), d, k)

    def duplicate(self, message: str, tok: Token, first: Token) -> ConfigError:
        return self.error(f"{message} (first at line {first.line})", tok)

    # -- blocks with labels

    def section(self, c: list) -> list:
        if len(c) == 1:
            return [c[0]]
        c[0].append(c[1])
        return c[0]

    def labeled(self, c: list) -> _Labeled:
        return _Labeled(c[0], c[1], c[2] if len(c) == 4 else [], c[-1])

    def deployment(self, c: list) -> tuple[dict, Token]:
        kw, inner = c[0], c[1:-1]
        items = inner[-1] if inner and inner[-1].__class__ is list else []
        if inner and inner[0].__class__ is Token:  # deployment "NAME" {
            label = inner[0]
            items = [("name", self.string(label), label), *items]
        d, pos = self._section(items, "deployment")
        self.tables[id(d)] = (d, pos, c[-1])
        return (d, kw)

    def _section(self, items: list, where: str) -> tuple[dict, dict]:
        """The body of a deployment or a target: attributes, plus target and
        component blocks filed under `targets` and `components`."""
        d: dict = {}
        pos: dict = {}
        made: set[int] = set()  # ids of the dicts created here for blocks
        for item in items:
            if item.__class__ is tuple:
                k, v, tok = item
                if k in d:
                    raise self.duplicate(f"duplicate attribute '{k}'", tok, pos[k])
                d[k] = v
                pos[k] = tok
            elif item.is_target:
                if where != "deployment":
                    raise self.error("a target block cannot be inside a target", item.word)
                name = self.string(item.name)
                targets, tpos = self._block_map(d, pos, made, "targets", item.word)
                if name in targets:
                    raise self.duplicate(f"duplicate target '{name}'", item.word, tpos[name])
                body, body_pos = self._section(item.items, "target")
                self.tables[id(body)] = (body, body_pos, item.rbrace)
                targets[name] = body
                tpos[name] = item.word
            else:
                type_, name = self.key(item.word), self.string(item.name)
                comps, cpos = self._block_map(d, pos, made, "components", item.word)
                of_type, npos = self._block_map(comps, cpos, made, type_, item.word)
                if name in of_type:
                    raise self.duplicate(f"duplicate component '{type_}/{name}'", item.word, npos[name])
                of_type[name] = self._component(item, type_, name)
                npos[name] = item.word
        return d, pos

    def _component(self, block: _Labeled, type_: str, name: str) -> dict:
        d: dict = {}
        pos: dict = {}
        depends_on = None
        for item in block.items:
            if item.__class__ is not tuple:
                what = "target" if item.is_target else f"{self.key(item.word)} {item.name.value}"
                raise self.error(
                    f"a {what} block cannot be inside component '{type_}/{name}'", item.word)
            k, v, tok = item
            if k == "depends_on" and tok.type != "STRING":  # a quoted "depends_on" is a plain key
                if depends_on is not None:
                    raise self.duplicate("duplicate attribute 'depends_on'", tok, depends_on[2])
                depends_on = item
                continue
            if k in d:
                raise self.duplicate(f"duplicate attribute '{k}'", tok, pos[k])
            d[k] = v
            pos[k] = tok
        if depends_on is not None:
            self._add_depends_on(d, pos, depends_on[1], depends_on[2])
        self.tables[id(d)] = (d, pos, block.rbrace)
        return d

    def _add_depends_on(self, d: dict, pos: dict, value, tok: Token) -> None:
        """`depends_on = [...]` is metadata.depends_on."""
        meta = d.get("metadata", _MISSING)
        if meta is _MISSING:
            meta = {"depends_on": value}
            d["metadata"] = meta
            pos["metadata"] = tok
            self.tables[id(meta)] = (meta, {"depends_on": tok}, None)
            return
        if meta.__class__ is not dict:
            first, second = sorted((tok, pos["metadata"]), key=_where)
            raise self.duplicate("'depends_on' conflicts with 'metadata'", second, first)
        meta_pos = self.tables[id(meta)][1]
        if "depends_on" in meta:
            first, second = sorted((tok, meta_pos["depends_on"]), key=_where)
            raise self.duplicate("duplicate attribute 'depends_on'", second, first)
        meta["depends_on"] = value
        meta_pos["depends_on"] = tok

    def _block_map(self, d: dict, pos: dict, made: set, key: str, tok: Token) -> tuple[dict, dict]:
        inner = d.get(key, _MISSING)
        if inner is _MISSING:
            inner, inner_pos = {}, {}
            self.tables[id(inner)] = (inner, inner_pos, None)
            made.add(id(inner))
            d[key] = inner
            pos[key] = tok
            return inner, inner_pos
        if id(inner) not in made:
            raise self.error(
                f"this block conflicts with the '{key}' attribute at line {pos[key].line}", tok)
        return inner, self.tables[id(inner)][1]

    def start(self, c: list) -> dict:
        if not c:
            raise ConfigError(
                "no deployment block: a BUILD.atmos file holds one `deployment { ... }`",
                file=self.file, line=1, col=1, context=caret_context(self.text, 1, 1))
        if len(c) > 1:
            raise self.duplicate("second deployment block: a file holds exactly one", c[1][1], c[0][1])
        d, kw = c[0]
        root = {"deployment": d}
        self.tables[id(root)] = (root, {"deployment": kw}, None)
        return root


def _where(tok: Token) -> tuple[int, int]:
    return (tok.line, tok.column)


# ---------------------------------------------------------------------------
# positions


class _Locator:
    """Document.locate for a DSL file: the position of the attribute name or
    block keyword at `path`, or of the deepest enclosing one that exists
    (list items and missing keys resolve to their attribute)."""

    def __init__(self, data: dict, tables: dict, list_ends: dict) -> None:
        self._data = data
        self._tables = tables
        self._list_ends = list_ends

    def token(self, path) -> Optional[Token]:
        node, found = self._data, None
        for key in path:
            entry = self._tables.get(id(node)) if node.__class__ is dict else None
            if entry is None or entry[0] is not node:
                break
            tok = entry[1].get(key)
            if tok is None:
                break
            found, node = tok, node[key]
        return found

    def closing(self, block: dict) -> Optional[Token]:
        entry = self._tables.get(id(block))
        return entry[2] if entry is not None and entry[0] is block else None

    def list_end(self, value) -> Optional[Token]:
        entry = self._list_ends.get(id(value))
        return entry[1] if entry is not None and entry[0] is value else None

    def __call__(self, path) -> Optional[Position]:
        tok = self.token(path)
        return (tok.line, tok.column) if tok is not None else None


# ---------------------------------------------------------------------------
# comments


def _attach_comments(data: dict, locator: _Locator, comments: list, text: str) -> tuple:
    """Each comment as (path, where, text), keyed to the statements format_dsl
    writes, so that fmt keeps every comment and their order.

    A comment after code goes "after" the last statement that started before
    it (several are joined on one line), or "close" when the last thing before
    it was a block's `}`. A comment alone on its line goes "before" the next
    statement, or at the "end" of the block whose `}` comes next (path () is
    the end of the file) -- unless it sits inside a multi-line list, which
    fmt writes on one line: then it goes before that statement (or after it,
    if a comment already trails it, to keep the order)."""
    from .fmt import layout  # only files with comments pay for it

    events: list[tuple] = []  # (line, col, kind, path, end of the value or None)

    def walk(statements) -> None:
        for st in statements:
            tok = locator.token(st.path)
            if tok is not None:
                end = locator.list_end(st.value) if st.block is None else None
                events.append((tok.line, tok.column, "start", st.path,
                               (end.line, end.column) if end is not None else None))
            if st.block is not None:
                walk(st.children)
                close = locator.closing(st.block)
                if close is not None:
                    events.append((close.line, close.column, "close", st.path, None))

    walk([layout(data)])
    events.sort(key=lambda e: (e[0], e[1]))
    keys = [(e[0], e[1]) for e in events]
    notes = []
    trailed = set()  # paths that already have an "after" comment
    for tok in comments:
        where = (tok.line, tok.column)
        body = tok.value.rstrip()
        line_start = text.rfind("\n", 0, tok.start_pos) + 1
        i = bisect.bisect_left(keys, where)
        prev = events[i - 1] if i > 0 else None
        if text[line_start:tok.start_pos].strip():  # code before it on its line
            if prev is None:
                notes.append(((), "end", body))
            elif prev[2] == "start":
                notes.append((prev[3], "after", body))
                trailed.add(prev[3])
            else:
                notes.append((prev[3], "close", body))
        elif prev is not None and prev[4] is not None and prev[4] > where:  # inside a list
            notes.append((prev[3], "after" if prev[3] in trailed else "before", body))
        elif i == len(events):
            notes.append(((), "end", body))
        else:
            e = events[i]
            notes.append((e[3], "before" if e[2] == "start" else "end", body))
    return tuple(notes)


# ---------------------------------------------------------------------------
# syntax errors in human words

_VALUE_START = frozenset({"STRING", "INT", "FLOAT", "TRUE", "FALSE", "NULL", "LSQB", "LBRACE"})
_WORDS = (  # how an expected terminal reads, in the order they are listed
    ("DEPLOYMENT", "a 'deployment' block"),
    ("EQUAL", "'='"),
    ("LBRACE", "'{'"),
    ("STRING", "a quoted string"),
    ("INT", "a number"),
    ("FLOAT", "a number"),
    ("TRUE", "true"),
    ("FALSE", "false"),
    ("NULL", "null"),
    ("LSQB", "'['"),
    ("COMMA", "','"),
    ("RSQB", "']'"),
    ("RBRACE", "'}'"),
    ("IDENT", "a name"),
    ("$END", "end of file"),
)
_VALUE_WORDS = "a value (string, number, true/false/null, list or map)"


def _expected(names) -> str:
    names = set(names) - {"WS", "COMMENT"}
    parts = []
    if _VALUE_START <= names:
        parts.append(_VALUE_WORDS)
        names -= _VALUE_START
    if "IDENT" in names and "EQUAL" not in names:  # where a statement may start
        parts += ["an attribute", "a block"]
        names -= {"IDENT", "KEY_EQ", "STRING", "COMMA"}  # an optional ',' is noise here
    for name, words in _WORDS:
        if name in names and words not in parts:
            parts.append(words)
    if not parts:
        return "something else"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _found(tok: Token) -> str:
    kind = tok.type
    if kind == "$END":
        return "end of file"
    if kind == "IDENT":
        return f"name '{tok.value}'"
    if kind == "KEY_EQ":
        return f"name '{tok.value[:-1].rstrip()}'"
    if kind == "STRING":
        text = tok.value if len(tok.value) <= 30 else tok.value[:26] + '..."'
        return f"string {text}"
    if kind in ("INT", "FLOAT"):
        return f"number {tok.value}"
    return f"'{tok.value}'"


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> ConfigError:
    line, col = e.line, e.column
    if isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            line = getattr(tok, "end_line", None) or tok.line or 1
            col = getattr(tok, "end_column", None) or tok.column or 1
        else:
            line, col = tok.line, tok.column
        message = f"unexpected {_found(tok)}, expected {_expected(e.expected)}"
        if tok.type == "IDENT" and _VALUE_START <= set(e.expected):
            message += " (strings need double quotes)"
        stack = getattr(getattr(e, "state", None), "value_stack", None) or []
        if set(e.expected) == {"LBRACE"} and len(stack) >= 2 and _is_token(stack[-1], "STRING") \
                and _is_token(stack[-2], "IDENT", "STRING"):
            # `source "y"`: most likely a forgotten '=', so point there
            word, label = stack[-2], stack[-1]
            message = (f"expected '=' between {word.value} and {label.value} "
                       "(or '{' after it to open a block)")
            line, col = label.line, label.column
    elif isinstance(e, UnexpectedCharacters):
        message, line, col = _bad_characters(e, text)
    else:  # pragma: no cover - the LALR parser reports EOF as UnexpectedToken
        message = "unexpected end of file"
    if not line or line < 1:
        line, col = 1, 1
    return ConfigError(message, file=file, line=line, col=col, context=caret_context(text, line, col))


def _is_token(value, *types: str) -> bool:
    return value.__class__ is Token and value.type in types


_NUMBERISH_RE = re.compile(r"-?[0-9][0-9A-Za-z_.+-]*")


def _bad_characters(e: UnexpectedCharacters, text: str) -> tuple[str, int, int]:
    pos, line, col = e.pos_in_stream, e.line, e.column
    ch = text[pos]
    if ch == '"':
        return _bad_string(text, pos, line, col)
    number = _NUMBERISH_RE.match(text, pos)
    if number:
        return f"invalid number '{number.group()}'", line, col
    shown = f"'{ch}'" if ch.isprintable() else repr(ch)
    return f"unexpected character {shown}, expected {_expected(e.allowed)}", line, col


def _bad_string(text: str, pos: int, line: int, col: int) -> tuple[str, int, int]:
    """The STRING pattern failed at an opening quote: find out why."""
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch in "\n\r":
            break
        if ch == "\\":
            nxt = text[i + 1:i + 2]
            if nxt and nxt in '"\\ntr':
                i += 2
                continue
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
                i += 6
                continue
            shown = text[i:i + 6] if nxt == "u" else text[i:i + 2]
            return (f"invalid escape '{shown.rstrip()}' in string "
                    "(use \\\" \\\\ \\n \\t \\r or \\uXXXX)"), line, col + (i - pos)
        if ch == '"':  # pragma: no cover - the pattern would have matched
            break
        i += 1
    return "unterminated string (a string ends with \" on the same line)", line, col


# ---------------------------------------------------------------------------
# entry point

_lock = threading.Lock()
_parser: Optional[Lark] = None
_builder: Optional[_Builder] = None


def _get_parser() -> tuple[Lark, _Builder]:
    """The parser and its builder, made once; call it holding `_lock`."""
    global _parser, _builder
    if _parser is None:
        builder = _Builder()
        grammar = _grammar_path().read_text(encoding="utf-8")
        cache = _cache_file(grammar)
        fresh = cache is not None and not os.path.exists(cache)
        _parser = Lark(
            grammar,
            transformer=builder,
            lexer_callbacks={"COMMENT": builder.comment},
            cache=cache if cache else False,
            **_LARK_OPTIONS,
        )
        _builder = builder
        if fresh:  # a new grammar or lark version: drop the caches of older ones
            for old in Path(cache).parent.glob("grammar-*.lark-cache"):
                if str(old) != cache:
                    try:
                        old.unlink()
                    except OSError:
                        pass
    return _parser, _builder


def parse_dsl(text: str, file: str) -> Document:
    """Parse BUILD.atmos `text` into a Document in the YAML shape (kind="dsl").

    Raises ConfigError (with file, line, col and a caret context) for syntax
    errors, duplicates, and a missing or second `deployment` block.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    with _lock:
        parser, builder = _get_parser()
        builder.reset(text, file)
        gc_was_on = gc.isenabled()
        gc.disable()  # the parse allocates ~10 objects per token and frees none: no cycles to find
        try:
            data = parser.parse(text)
        except UnexpectedInput as e:
            raise _syntax_error(e, text, file) from None
        except LarkError as e:  # pragma: no cover - defensive: never show lark internals
            raise ConfigError(f"cannot parse: {e}", file=file) from None
        finally:
            if gc_was_on:
                gc.enable()
            tables, list_ends, comments = builder.tables, builder.list_ends, builder.comments
            builder.reset("", "")
    locator = _Locator(data, tables, list_ends)
    notes: tuple = ()
    if comments:
        try:
            notes = _attach_comments(data, locator, comments, text)
        except RecursionError:
            raise ConfigError("values are nested too deeply", file=file) from None
    return Document(data=data, file=file, text=text, locate=locator, kind="dsl", comments=notes)
