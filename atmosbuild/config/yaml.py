"""The YAML front end: `deployment.yaml` text -> Document.

Parsing uses libyaml (CSafeLoader) when present. Positions are not kept on
the fast path; `locate` re-composes the text only when an error needs a
file:line:col, so valid files pay nothing for good error messages.
"""

from __future__ import annotations

import threading

from ..errors import ConfigError, caret_context
from .document import Document, Position

# PyYAML is imported on first use (~20 ms): a run whose documents all come
# from the parse cache never needs it.
yaml = None
_BaseLoader = None


_import_lock = threading.Lock()


def _import_yaml() -> None:
    global yaml, _BaseLoader
    if yaml is None:
        with _import_lock:  # (loading can run in threads: both names are set together)
            if yaml is None:
                import yaml as module

                _BaseLoader = getattr(module, "CSafeLoader", module.SafeLoader)
                yaml = module


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Duplicate(Exception):
    def __init__(self, key, mark):
        self.key, self.mark = key, mark


class _Builder:
    """Plain data from a composed node tree (libyaml composes in C).

    Faster than SafeConstructor for the common case — strings, maps, lists —
    and refuses duplicate keys instead of silently keeping the last one.
    Other scalars (ints, floats, bools, null) and merge keys are
    handed to SafeConstructor so YAML 1.1 semantics stay exactly PyYAML's.
    """

    def __init__(self) -> None:
        self.safe = yaml.constructor.SafeConstructor()

    def build(self, node):
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR or node.tag == _TIMESTAMP:
                # Dates stay the text the user wrote: vars are JSON, and the
                # DSL has no date type.
                return node.value
            return self.safe.construct_object(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item) for item in node.value]
        if isinstance(node, yaml.MappingNode):
            if any(k.tag == _MERGE for k, _ in node.value):
                return self.safe.construct_object(node, deep=True)
            out = {}
            for key_node, value_node in node.value:
                key = self.build(key_node)
                try:
                    duplicate = key in out
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "found an unhashable key", key_node.start_mark) from None
                if duplicate:
                    raise _Duplicate(key, key_node.start_mark)
                out[key] = self.build(value_node)
            return out
        return self.safe.construct_object(node, deep=True)


def load_yaml_text(text: str, file: str):
    """Parse YAML text into plain data, raising ConfigError at file:line:col."""
    _import_yaml()
    try:
        node = yaml.compose(text, Loader=_BaseLoader)
        return None if node is None else _Builder().build(node)
    except _Duplicate as dup:
        line, col = dup.mark.line + 1, dup.mark.column + 1
        raise ConfigError(
            f"duplicate key '{dup.key}'", file=file, line=line, col=col,
            context=caret_context(text, line, col),
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"invalid YAML: {problem}", file=file, line=line, col=col,
            context=caret_context(text, line, col) if line else (),
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nesting too deep (recursive alias?)", file=file) from None


def parse_yaml(text: str, file: str) -> Document:
    data = load_yaml_text(text, file)
    if data is None:
        data = {}
    return Document(data=data, file=file, text=text, locate=_Locator(text), kind="yaml")


class _Locator:
    """Maps a document path to the (line, col) of its key, composing lazily."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._root = None

    def __call__(self, path) -> Position | None:
        if self._root is None:
            _import_yaml()
            try:
                self._root = yaml.compose(self._text, Loader=_BaseLoader)
            except yaml.YAMLError:
                return None
        node, best = self._root, None
        for step in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(step):
                        best, node = key_node.start_mark, value_node
                        break
                else:
                    break
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
                node = node.value[step]
                best = node.start_mark
            else:
                break
        if best is None:
            return None
        return best.line + 1, best.column + 1
