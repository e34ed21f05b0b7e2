"""The state store interface and its records.

The scheduler and rollout code talk only to this narrow interface, so a
shared, server-backed store can be added later beside the embedded SQLite
one (sqlite.py) and the in-memory one used by tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol


@dataclass(frozen=True)
class Applied:
    """The last successful apply of a component at a deployment+target."""

    key: str
    result: str  # result digest
    outputs: Mapping[str, Any]
    ingredients: Mapping[str, Any]  # local ingredients + "upstream" (for explain)
    finished: float  # unix time
    duration: float


@dataclass(frozen=True)
class Built:
    """A successful build-mode action, reusable at any target."""

    key: str
    component: str
    result: str
    outputs: Mapping[str, Any]
    finished: float
    duration: float


@dataclass(frozen=True)
class Attempt:
    """The last attempt of a component at a deployment+target, successful or not."""

    key: str
    status: str
    run_id: str
    finished: float
    duration: float


@dataclass
class Snapshot:
    """What one rollout reads from the store up front (bulk reads)."""

    applied: dict[str, Applied] = field(default_factory=dict)  # component id -> record
    attempts: dict[str, Attempt] = field(default_factory=dict)


class Store(Protocol):
    def snapshot(self, deployment: str, target: str) -> Snapshot: ...

    def builds(self, keys: list[str]) -> dict[str, Built]: ...

    def record_success(self, deployment: str, target: str, component: str, applied: Applied,
                       run_id: str, build: bool) -> None:
        """Record a success at once (one transaction): the applied record, the
        build cache entry when `build`, and the attempt."""

    def record_attempt(self, deployment: str, target: str, component: str,
                       attempt: Attempt) -> None: ...

    def file_cache(self) -> dict[str, tuple]: ...

    def save_file_cache(self, entries: Mapping[str, tuple]) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """An in-memory Store for tests and dry runs with no database yet."""

    def __init__(self) -> None:
        self.applied: dict[tuple[str, str, str], Applied] = {}
        self.built: dict[str, Built] = {}
        self.attempts: dict[tuple[str, str, str], Attempt] = {}
        self.files: dict[str, tuple] = {}

    def snapshot(self, deployment: str, target: str) -> Snapshot:
        snap = Snapshot()
        for (d, t, c), rec in self.applied.items():
            if (d, t) == (deployment, target):
                snap.applied[c] = rec
        for (d, t, c), rec in self.attempts.items():
            if (d, t) == (deployment, target):
                snap.attempts[c] = rec
        return snap

    def builds(self, keys: list[str]) -> dict[str, Built]:
        return {k: self.built[k] for k in keys if k in self.built}

    def record_success(self, deployment, target, component, applied, run_id, build) -> None:
        self.applied[(deployment, target, component)] = applied
        if build:
            self.built[applied.key] = Built(applied.key, component, applied.result,
                                            applied.outputs, applied.finished, applied.duration)
        self.attempts[(deployment, target, component)] = Attempt(
            applied.key, "succeeded", run_id, applied.finished, applied.duration)

    def record_attempt(self, deployment, target, component, attempt) -> None:
        self.attempts[(deployment, target, component)] = attempt

    def file_cache(self) -> dict[str, tuple]:
        return dict(self.files)

    def save_file_cache(self, entries) -> None:
        self.files.update(entries)

    def close(self) -> None:
        pass
