"""The state store interface and its records.

The scheduler and rollout code talk only to this narrow interface, so a
shared, server-backed store can be added later beside the embedded SQLite
one (sqlite.py) and the in-memory one used by tests.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Protocol

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


class Decision(NamedTuple):
    """Whether a node runs, under which key, and why (when cached: what it
    left). Made by the rebuilder (rebuild.py) or from the up-to-date record
    (run/decide.py); here so that the record's path imports no rebuilder."""

    run: bool
    key: str
    reasons: tuple[str, ...]
    outputs: Mapping[str, Any] | None = None  # when cached
    result: str | None = None  # result digest when cached
    reused_build: Built | None = None  # build mode: reused from another run/target

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


class HistoryEntry(NamedTuple):
    """One attempt of a component at a deployment+target (the `history`
    table: every success, failure, cancellation, destroy and drift)."""

    run_id: str
    key: str
    status: str  # succeeded | failed | timeout | cancelled | destroyed | drifted
    finished: float  # unix time
    duration: float  # seconds


class AppliedRow(NamedTuple):
    """What deciding "up to date" needs of an applied record (applied_summary)."""

    key: str
    result: str  # result digest
    duration: float


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

    def applied_summary(self, deployment: str, target: str) -> dict[str, AppliedRow]:
        """component -> (key, result digest, duration) of its applied record:
        all that deciding "up to date" needs, without outputs or ingredients.
        (Plain tuples are as good: callers unpack them.)"""

    def history(self, deployment: str, target: str, component: str, limit: int = 20) -> list[HistoryEntry]:
        """The last `limit` attempts of a component, newest first."""

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
        self.log: list[tuple[str, str, str, HistoryEntry]] = []  # (deployment, target, component, entry)

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

    def applied_summary(self, deployment: str, target: str) -> dict[str, AppliedRow]:
        return {c: AppliedRow(a.key, a.result, a.duration)
                for c, a in self.snapshot(deployment, target).applied.items()}

    def history(self, deployment, target, component, limit: int = 20) -> list[HistoryEntry]:
        place = (deployment, target, component)
        return [entry for *where, entry in reversed(self.log) if tuple(where) == place][:limit]

    def builds(self, keys: list[str]) -> dict[str, Built]:
        return {k: self.built[k] for k in keys if k in self.built}

    def record_success(self, deployment, target, component, applied, run_id, build) -> None:
        self.applied[(deployment, target, component)] = applied
        self.removals.pop((deployment, target, component), None)
        if build:
            self.built[applied.key] = Built(applied.key, component, applied.result,
                                            applied.outputs, applied.finished, applied.duration)
        self.record_attempt(deployment, target, component, Attempt(
            applied.key, "succeeded", run_id, applied.finished, applied.duration))

    def record_attempt(self, deployment, target, component, attempt) -> None:
        self.attempts[(deployment, target, component)] = attempt
        self.log.append((deployment, target, component, HistoryEntry(
            attempt.run_id, attempt.key, attempt.status, attempt.finished, attempt.duration)))

    def record_removal(self, deployment, target, component, removal) -> None:
        self.applied.pop((deployment, target, component), None)
        self.removals[(deployment, target, component)] = removal
        self.log.append((deployment, target, component, HistoryEntry(
            removal.run_id, removal.key, removal.kind, removal.finished, 0.0)))

    def file_cache(self) -> dict[str, tuple]:
        return dict(self.files)

    def save_file_cache(self, entries) -> None:
        self.files.update(entries)

    def close(self) -> None:
        pass


def history_table(attempts: Mapping[str, list[HistoryEntry]]) -> list[str]:
    """`status --history`: node id -> its last attempts (newest first), as
    the lines of one table, in the order given."""
    import time

    rows = [("COMPONENT", "RUN", "STATUS", "KEY", "WHEN", "TOOK")]
    for nid, entries in attempts.items():
        if not entries:
            rows.append((nid, "-", "never attempted", "-", "-", "-"))
        for e in entries:
            rows.append((nid, e.run_id, e.status, e.key[:12] or "-",
                         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.finished)), f"{e.duration:.1f}s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
