"""The YAML front end: `deployment.yaml` text -> Document.

Parsing uses libyaml (CSafeLoader) when present. Positions are not kept on
the fast path; `locate` re-composes the text only when an error needs a
file:line:col, so valid files pay nothing for good error messages.
"""

from __future__ import annotations

import yaml

from ..errors import ConfigError, caret_context
from .document import Document, Position

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable key; SafeLoader reports it
                    break
                if duplicate:
                    raise _Duplicate(key, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


class _Duplicate(Exception):
    def __init__(self, key, mark):
        self.key, self.mark = key, mark


def load_yaml_text(text: str, file: str):
    """Parse YAML text into plain data, raising ConfigError at file:line:col."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
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
