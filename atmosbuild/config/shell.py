"""Where an interpolated value stands in a POSIX `sh -c` string.

A string-form `run` never has values pasted into it (SPEC 2): each reference
becomes a parameter expansion of a variable atmosbuild sets in the action's
environment (`ATMOS_V_1`, ...), quoted so that the shell expands it to exactly
the value, once, as data. Which quoting is right depends on where the
reference stands, so the text before each reference is lexed:

  bare (a word, or a word inside `$( )`)     -> "${ATMOS_V_1}"
  inside double quotes                        -> ${ATMOS_V_1}
  in a here-document's body (<<EOF)           -> ${ATMOS_V_1}
  a comment                                   -> "${ATMOS_V_1}" (never expanded)

and these are refused, since no expansion written there is data:

  inside single quotes, or a here-document with a quoted delimiter
                        (<<'EOF': no expansion happens at all)
  inside backquotes     (their text is parsed twice: use $( ) instead)
  inside ${...} or $((...)) (arithmetic evaluates what it expands)
  right after a backslash
  after a here-document started inside $( ), after `<<<`, after `$'`
  (bash's ANSI-C quotes), inside `case` in a `$( )`, or after a quote inside
  ${...} or $((...)): places this lexer cannot follow exactly.

The lexer knows: blanks and operators, `#` comments at the start of a word,
backslash escapes, '...', "...", `...`, $( ), $(( )), ${ }, and
here-documents started at the script's top level (<<WORD, <<-WORD, quoted
or not; several on one line). Anything it cannot classify is refused: it
never guesses.
"""

from __future__ import annotations

BARE, DQ = "bare", "dq"
_BLANK_OR_OPERATOR = " \t\n;&|()<>"


class ShellContextError(ValueError):
    """A reference stands where its value cannot be passed safely."""

    def __init__(self, ref: int, message: str) -> None:
        super().__init__(message)
        self.ref, self.message = ref, message


class Ref:
    """A reference in the template (its index among the references)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def classify(items: list) -> list[str]:
    """`items`: the shell text as single characters, with a `Ref` where each
    reference stands. The context (BARE or DQ) of each Ref, in order; raises
    ShellContextError for the first one that cannot be made safe."""
    out: list[str] = []
    # Frames: [kind, paren depth]; kinds: top (the script), cmd (a $( )),
    # dq, sq, bq, param, arith, comment; and here-document bodies, hdoc
    # (unquoted delimiter) and hsq (quoted): [kind, at a line start, spec].
    stack: list[list] = [["top", 0]]
    word_start = True
    word = ""
    poisoned = ""  # why the lexer cannot follow the text from here on
    pending: list[tuple[str, bool, bool]] = []  # here-documents: (delimiter, quoted, strip tabs)
    i, n = 0, len(items)
    while i < n:
        item = items[i]
        kind = stack[-1][0]
        if kind in ("hdoc", "hsq") and stack[-1][1]:  # at the start of a body line
            end = _line_end(items, i)
            line = items[i:end]
            delimiter, _, strip = stack[-1][2]
            if not any(isinstance(x, Ref) for x in line):
                text = "".join(line)
                if (text.lstrip("\t") if strip else text) == delimiter:
                    stack.pop()
                    i = end + 1
                    if pending:
                        stack.append(_heredoc(pending.pop(0)))
                    else:
                        word_start, word = True, ""
                    continue
            stack[-1][1] = False
            continue
        if isinstance(item, Ref):
            if poisoned and kind != "comment":
                raise ShellContextError(item.index, poisoned)
            if kind in ("top", "cmd", "comment"):
                out.append(BARE)
            elif kind in ("dq", "hdoc"):
                out.append(DQ)
            elif kind == "hsq":
                raise ShellContextError(item.index, "it is in a here-document whose delimiter is "
                                        "quoted (<<'EOF'), where the shell expands nothing: "
                                        "unquote the delimiter (<<EOF)")
            elif kind == "sq":
                raise ShellContextError(item.index, "it is inside single quotes, where the shell "
                                        "expands nothing: write it outside the quotes or inside "
                                        "double quotes ('...'${x}'...' or \"...${x}...\")")
            elif kind == "bq":
                raise ShellContextError(item.index, "it is inside backquotes (`...`), whose text "
                                        "the shell parses twice: use $( ... ) instead")
            elif kind == "param":
                raise ShellContextError(item.index, "it is inside a shell ${...} expansion: set a "
                                        "shell variable to it first (v=${x}; echo \"${v:-...}\")")
            else:
                raise ShellContextError(item.index, "it is inside $(( )), where the shell "
                                        "evaluates what it expands as arithmetic: assign it to a "
                                        "variable and check it first")
            word_start, word = False, "\0"
            i += 1
            continue
        c = item
        nxt = items[i + 1] if i + 1 < n else None
        if kind == "sq":
            if c == "'":
                stack.pop()
            i += 1
            continue
        if kind == "comment":
            if c == "\n":
                stack.pop()  # the newline itself ends the command line, below
                continue
            i += 1
            continue
        if kind == "hsq":
            if c == "\n":
                stack[-1][1] = True
            i += 1
            continue
        if kind == "hdoc" and c == "\n":
            stack[-1][1] = True
            i += 1
            continue
        if c == "\\":
            if isinstance(nxt, Ref):
                raise ShellContextError(nxt.index, "it follows a backslash: remove the backslash")
            word_start, word = False, "\0"
            i += 2
            continue
        if kind in ("top", "cmd"):
            if c in _BLANK_OR_OPERATOR:
                if word == "case" and kind == "cmd" and not poisoned:
                    poisoned = ("it comes after a `case` inside $( ), whose `)` patterns this "
                                "lexer cannot follow: move the case out of the $( )")
                word_start, word = True, ""
                if c == "(":
                    stack[-1][1] += 1
                elif c == ")":
                    if stack[-1][1] == 0 and kind == "cmd":
                        stack.pop()
                        word_start, word = False, "\0"
                    elif stack[-1][1] > 0:
                        stack[-1][1] -= 1
                elif c == "<" and nxt == "<":
                    if len(stack) > 1 or (i + 2 < n and items[i + 2] == "<"):
                        poisoned = poisoned or (
                            "it comes after a here-document inside $( ) or a `<<<`, which this "
                            "lexer cannot follow: pass the value as an argument or through `env:`")
                    else:
                        i, heredoc = _heredoc_word(items, i + 2)
                        if heredoc is None:
                            poisoned = poisoned or ("it comes after a here-document whose "
                                                    "delimiter this lexer cannot read")
                        else:
                            pending.append(heredoc)
                        word_start, word = False, "\0"
                        continue
                elif c == "\n" and pending and len(stack) == 1:
                    stack.append(_heredoc(pending.pop(0)))
                i += 1
                continue
            if c == "#" and word_start:
                stack.append(["comment", 0])
                i += 1
                continue
            word_start = False
            word = word + c if word != "\0" else word
            if c == "'":
                stack.append(["sq", 0])
                word = "\0"
            elif c == '"':
                stack.append(["dq", 0])
                word = "\0"
            elif c == "`":
                stack.append(["bq", 0])
                word = "\0"
            elif c == "$":
                depth = len(stack)
                i = _dollar(items, i, stack)
                word = "\0"
                poisoned = poisoned or _dollar_poison(items, i)
                if len(stack) > depth and stack[-1][0] == "cmd":
                    word_start, word = True, ""  # a command starts
                continue
            i += 1
            continue
        if kind in ("dq", "hdoc"):
            if c == '"' and kind == "dq":
                stack.pop()
            elif c == "`":
                stack.append(["bq", 0])
            elif c == "$":
                i = _dollar(items, i, stack)
                if stack[-1][0] == "cmd":
                    word_start, word = True, ""
                continue
            i += 1
            continue
        if kind == "bq":
            if c == "`":
                stack.pop()
            i += 1
            continue
        # param / arith
        if c in "'\"`" and not poisoned:
            poisoned = ("it comes after a quote inside a shell ${...} or $(( )), which this "
                        "lexer cannot follow: set a shell variable first")
        if kind == "param":
            if c == "}":
                stack.pop()
            elif c == "$":
                i = _dollar(items, i, stack)
                continue
            i += 1
            continue
        # arith
        if c == "(":
            stack[-1][1] += 1
        elif c == ")":
            if stack[-1][1] == 0:
                stack.pop()  # the first `)` of `))`
                i += 2
                continue
            stack[-1][1] -= 1
        elif c == "$":
            i = _dollar(items, i, stack)
            continue
        i += 1
    return out


def _line_end(items: list, i: int) -> int:
    """The index of the newline ending the line that starts at `i` (or the end)."""
    while i < len(items) and items[i] != "\n":
        i += 1
    return i


def _heredoc(spec: tuple) -> list:
    """The frame of a here-document's body: [kind, at a line start, spec]."""
    return ["hsq" if spec[1] else "hdoc", True, spec]


def _heredoc_word(items: list, i: int):
    """After `<<`: (index after the delimiter word, (delimiter, quoted, strip
    tabs)), or (index, None) when the word cannot be read."""
    strip = i < len(items) and items[i] == "-"
    if strip:
        i += 1
    while i < len(items) and items[i] in (" ", "\t"):
        i += 1
    word: list[str] = []
    quoted = False
    quote = ""
    while i < len(items):
        c = items[i]
        if isinstance(c, Ref):
            return i, None
        if quote:
            if c == quote:
                quote = ""
            else:
                word.append(c)
        elif c in "'\"":
            quote, quoted = c, True
        elif c == "\\":
            quoted = True
            if i + 1 < len(items) and isinstance(items[i + 1], str):
                word.append(items[i + 1])
            i += 2
            continue
        elif c in _BLANK_OR_OPERATOR or c in "$`":
            break
        else:
            word.append(c)
        i += 1
    if quote or not word:
        return i, None
    return i, ("".join(word), quoted, strip)


def _dollar(items: list, i: int, stack: list) -> int:
    """At a `$`: push what it opens; the index after what was consumed."""
    nxt = items[i + 1] if i + 1 < len(items) else None
    if isinstance(nxt, Ref):
        raise ShellContextError(nxt.index, "it follows a `$`: remove the `$`")
    if nxt == "(":
        if i + 2 < len(items) and items[i + 2] == "(":
            stack.append(["arith", 0])
            return i + 3
        stack.append(["cmd", 0])
        return i + 2
    if nxt == "{":
        stack.append(["param", 0])
        return i + 2
    if nxt == '"':
        stack.append(["dq", 0])  # bash's $"..." is a double-quoted string
        return i + 2
    return i + 1


def _dollar_poison(items: list, after: int) -> str:
    if after >= 2 and items[after - 1] == "$" and after < len(items) and items[after] == "'":
        return "it comes after $'...' (bash's ANSI-C quotes), which this lexer cannot follow"
    return ""


def expansion(name: str, context: str) -> str:
    """The text that expands to exactly the value of `name` in `context`
    (`$${` as the template escape of `${`, so render() leaves it as written)."""
    return f"$${{{name}}}" if context == DQ else f"\"$${{{name}}}\""
