"""Labels (`//api:dev`, `//:ci`) and patterns (`//...:dev`, `//infra/...:dev`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

_PKG_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@=-]*\Z")
_TARGET = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True, order=True)
class Label:
    package: str  # "" for the root package
    target: str

    def __str__(self) -> str:
        return f"//{self.package}:{self.target}"


@dataclass(frozen=True)
class Pattern:
    """`//PREFIX/...:TARGET`: every package at or under PREFIX with TARGET."""

    prefix: str  # "" for the whole workspace
    target: str

    def __str__(self) -> str:
        return f"//{self.prefix + '/' if self.prefix else ''}...:{self.target}"

    def matches(self, package: str) -> bool:
        return not self.prefix or package == self.prefix or package.startswith(self.prefix + "/")


def parse_label(text: str, *, allow_pattern: bool = True) -> Label | Pattern:
    def bad(why: str) -> UsageError:
        return UsageError(f"bad label '{text}': {why} (expected //PACKAGE:TARGET, e.g. //api:dev"
                          + (", or a pattern like //...:dev" if allow_pattern else "") + ")")

    if not text.startswith("//"):
        raise bad("labels start with //")
    body = text[2:]
    if ":" not in body:
        raise bad("missing :TARGET")
    pkg, target = body.rsplit(":", 1)
    if not _TARGET.match(target):
        raise bad(f"bad target name '{target}'")
    pattern = pkg == "..." or pkg.endswith("/...")
    if pattern:
        if not allow_pattern:
            raise bad("a single label is needed here, not a pattern")
        pkg = pkg[:-3].rstrip("/")
    if pkg:
        for seg in pkg.split("/"):
            if seg in ("", ".", "..") or seg == "..." or not _PKG_SEGMENT.match(seg):
                raise bad(f"bad package path '{pkg}'")
    return Pattern(pkg, target) if pattern else Label(pkg, target)
