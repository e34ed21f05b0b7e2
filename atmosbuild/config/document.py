"""The raw deployment document both front ends produce.

A *document* is plain data in exactly the YAML shape of SPEC section 2:

    {"deployment": {
        "name": str, "description": str, "labels": {str: str},
        "vars": {...}, "env": {...},
        "targets": {TARGET: {"vars": {...}, "env": {...},
                             "components": {TYPE: {NAME: OVERRIDE}}}},
        "components": {TYPE: {NAME: COMPONENT}}}}

where COMPONENT (and OVERRIDE, same shape) has the keys in COMPONENT_KEYS and
`metadata: {depends_on: [ID, ...]}`. Absent optional keys are simply absent
(never None), so YAML -> DSL -> YAML gives back an equal dict.

The front ends (yaml.py, dsl.py) only parse; `model.py` validates a document
and compiles it into the immutable model. Each front end also gives a
`locate(path)` so validation errors point at file:line:col.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

Path = tuple  # a path into the document, e.g. ("deployment", "components", "terraform", "ecr/api", "vars")
Position = tuple[int, int]  # (line, col), both 1-based

DEPLOYMENT_KEYS = ("name", "description", "labels", "vars", "env", "targets", "components")
TARGET_KEYS = ("vars", "env", "components")
COMPONENT_KEYS = (
    "source", "vars", "env", "run", "preview", "destroy", "inputs", "cache", "timeout", "retries",
    "enabled", "sensitive", "backend", "resources", "metadata",
)
METADATA_KEYS = ("depends_on",)


def _no_position(path: Path) -> Optional[Position]:
    return None


@dataclass(frozen=True)
class Document:
    """A parsed deployment file: its data, where it came from, and a locator."""

    data: dict
    file: str  # path as shown in messages
    text: str = ""  # the source text, for caret context in errors
    locate: Callable[[Path], Optional[Position]] = field(default=_no_position, compare=False)
    kind: str = "yaml"  # "yaml" or "dsl"
    # DSL only: the file's comments, attached to statements so `fmt` can keep
    # them: ((path, where, text), ...) in source order, where is "before",
    # "after", "end" or "close" (see fmt.format_dsl).
    comments: tuple = field(default=(), compare=False)
