"""The state store interface and its records.

The scheduler and rollout code talk only to this narrow interface, so a
shared, server-backed store can be added later beside the embedded SQLite
one (sqlite.py) and the in-memory one used by tests.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

# (The two modes, APPLY and BUILD, are the component types' (components/base.py):
# the store keeps an applied record per deployment+target for both and a
# build cache for BUILD.)


class Applied:
    """The last successful apply of a component at a deployment+target.

    `outputs` and `ingredients` may be given as JSON text: a no-op rollout
    reads thousands of these and needs only `key` and `result`, so the text is
    decoded on first use.
    """

    __slots__ = ("key", "result", "_outputs", "_ingredients", "finished", "duration")

    def __init__(self, key: str, result: str, outputs: Mapping[str, Any] | str,
                 ingredients: Mapping[str, Any] | str, finished: float, duration: float) -> None:
        self.key, self.result = key, result  # result: the result digest
        self._outputs, self._ingredients = outputs, ingredients
        self.finished, self.duration = finished, duration  # unix time, seconds

    @property
    def outputs(self) -> Mapping[str, Any]:
        if isinstance(self._outputs, str):
            self._outputs = json.loads(self._outputs)
        return self._outputs

    @property
    def ingredients(self) -> Mapping[str, Any]:
        """Local ingredients + "upstream" (what `explain` compares)."""
        if isinstance(self._ingredients, str):
            self._ingredients = json.loads(self._ingredients)
        return self._ingredients

    def __eq__(self, other) -> bool:
        return isinstance(other, Applied) and (
            (self.key, self.result, self.outputs, self.ingredients, self.finished, self.duration)
            == (other.key, other.result, other.outputs, other.ingredients, other.finished,
                other.duration))

    def __repr__(self) -> str:
        return f"Applied(key={self.key!r}, result={self.result!r}, finished={self.finished!r})"


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


@dataclass(frozen=True)
class Removal:
    """Why a component at a deployment+target is no longer applied (SPEC 10):
    `destroy` tore it down, or `check` found it drifted. Recording one drops
    the applied record (so the next rollout applies it again, and the
    up-to-date record sees the row gone); the next success clears it."""

    kind: str  # "destroyed" | "drifted"
    run_id: str
    reason: str  # shown by explain/status: "destroyed by run R", "drift: 2 resources changed ..."
    key: str  # the key that was applied when it was removed
    finished: float


@dataclass
class Snapshot:
    """What one rollout reads from the store up front (bulk reads)."""

    applied: dict[str, Applied] = field(default_factory=dict)  # component id -> record
    attempts: dict[str, Attempt] = field(default_factory=dict)
    removals: dict[str, Removal] = field(default_factory=dict)  # component id -> why not applied


class Store(Protocol):
    def snapshot(self, deployment: str, target: str, components=None) -> Snapshot:
        """The applied records and last attempts at deployment+target (of
        `components` only, when given)."""

    def applied_summary(self, deployment: str, target: str) -> dict[str, tuple[str, str, float]]:
        """component -> (key, result digest, duration) of its applied record:
        all that deciding "up to date" needs, without outputs or ingredients."""

    def builds(self, keys: list[str]) -> dict[str, Built]: ...

    def record_success(self, deployment: str, target: str, component: str, applied: Applied,
                       run_id: str, build: bool) -> None:
        """Record a success at once (one transaction): the applied record, the
        build cache entry when `build`, and the attempt."""

    def record_attempt(self, deployment: str, target: str, component: str,
                       attempt: Attempt) -> None: ...

    def record_removal(self, deployment: str, target: str, component: str,
                       removal: Removal) -> None:
        """One transaction: drop the applied record (the build cache stays),
        keep `removal` as the reason, add a history row (status = kind).
        `record_success` of the component clears the removal again."""

    def file_cache(self) -> dict[str, tuple]: ...

    def save_file_cache(self, entries: Mapping[str, tuple]) -> None: ...

    def close(self) -> None: ...

    # A store shared between machines (postgres.py) also offers, and the
    # rollout uses when present:
    #   deployment_lock(deployment, target, label, *, wait, on_wait) -> a context
    #       manager holding that store's own lock (after this machine's flock);
    #       what it yields has `fds`, descriptors the actions inherit;
    #   watch(on_lost) -> stop(): notice a lost session while actions run;
    #   lost: why it was lost (then the run fails with StoreLost).


class MemoryStore:
    """An in-memory Store for tests and dry runs with no database yet."""

    def __init__(self) -> None:
        self.applied: dict[tuple[str, str, str], Applied] = {}
        self.built: dict[str, Built] = {}
        self.attempts: dict[tuple[str, str, str], Attempt] = {}
        self.removals: dict[tuple[str, str, str], Removal] = {}
        self.files: dict[str, tuple] = {}

    def snapshot(self, deployment: str, target: str, components=None) -> Snapshot:
        wanted = None if components is None else frozenset(components)
        snap = Snapshot()
        for (d, t, c), rec in self.applied.items():
            if (d, t) == (deployment, target) and (wanted is None or c in wanted):
                snap.applied[c] = rec
        for (d, t, c), rec in self.attempts.items():
            if (d, t) == (deployment, target) and (wanted is None or c in wanted):
                snap.attempts[c] = rec
        for (d, t, c), rec in self.removals.items():
            if (d, t) == (deployment, target) and (wanted is None or c in wanted):
                snap.removals[c] = rec
        return snap

    def applied_summary(self, deployment: str, target: str) -> dict[str, tuple[str, str, float]]:
        return {c: (a.key, a.result, a.duration) for c, a in self.snapshot(deployment, target).applied.items()}

    def builds(self, keys: list[str]) -> dict[str, Built]:
        return {k: self.built[k] for k in keys if k in self.built}

    def record_success(self, deployment, target, component, applied, run_id, build) -> None:
        self.applied[(deployment, target, component)] = applied
        self.removals.pop((deployment, target, component), None)
        if build:
            self.built[applied.key] = Built(applied.key, component, applied.result,
                                            applied.outputs, applied.finished, applied.duration)
        self.attempts[(deployment, target, component)] = Attempt(
            applied.key, "succeeded", run_id, applied.finished, applied.duration)

    def record_attempt(self, deployment, target, component, attempt) -> None:
        self.attempts[(deployment, target, component)] = attempt

    def record_removal(self, deployment, target, component, removal) -> None:
        self.applied.pop((deployment, target, component), None)
        self.removals[(deployment, target, component)] = removal

    def file_cache(self) -> dict[str, tuple]:
        return dict(self.files)

    def save_file_cache(self, entries) -> None:
        self.files.update(entries)

    def close(self) -> None:
        pass
