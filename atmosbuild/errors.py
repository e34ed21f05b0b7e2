"""The error family. Each error knows its exit code and, where there is one,
its source position; only the CLI turns errors into messages and exit codes.

Exit codes (SPEC section 8): 1 component failed, 2 bad input, 3 locked,
130 interrupted.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence


class AtmosError(Exception):
    """Base of every error atmosbuild reports to a user."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        col: int | None = None,
        context: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.context = tuple(context)

    @property
    def where(self) -> str:
        """`file:line:col` (or as much of it as is known), '' if no file."""
        if not self.file:
            return ""
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)

    def render(self) -> str:
        """The text shown to the user: one `error:` line, then context lines."""
        head = f"error: {self.where}: {self.message}" if self.where else f"error: {self.message}"
        return "\n".join([head, *self.context])

    def __str__(self) -> str:  # pragma: no cover - debugging aid
        return self.render()


class UsageError(AtmosError):
    """Bad command line: flags, labels, patterns."""


class ConfigError(AtmosError):
    """Bad deployment file or workspace settings."""


class CycleError(ConfigError):
    """The dependency graph has a cycle; `cycle` is the path, first == last."""

    def __init__(self, cycle: Sequence[str], **kw) -> None:
        self.cycle = tuple(cycle)
        super().__init__("dependency cycle: " + " -> ".join(self.cycle), **kw)


class StateError(AtmosError):
    """The state store cannot be used (corrupt or foreign database)."""


class StoreLost(StateError):
    """The state store failed mid-run (a shared store's server went away):
    the run fails; every success recorded before it stays recorded."""

    exit_code = 1


class LockedError(AtmosError):
    """Another rollout holds the deployment+target lock."""

    exit_code = 3


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def caret_context(text: str, line: int, col: int) -> list[str]:
    """The offending source line and a caret under column `col` (1-based)."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return []
    src = lines[line - 1].replace("\t", " ")
    return [f"    {src}", "    " + " " * max(col - 1, 0) + "^"]
