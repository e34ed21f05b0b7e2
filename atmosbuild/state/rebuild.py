"""The rebuilder: is a node up to date, and if not, why?

Apply mode (terraform, command) is a verifying trace: up to date only if the
key equals the key last *successfully applied* to this deployment+target.
Build mode (nixpack) is a constructive trace: any earlier success with the
same key, at any target, is reused with its outputs.

Reasons are computed by comparing the key ingredients with the ones stored
with the last success, so `plan`, `explain`, the dry-run JSON and `--report`
all say the same precise thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..components import BUILD
from ..graph.actions import ActionGraph, ActionNode
from ..graph.keys import action_key, canonical
from .store import Applied, Built, Snapshot, Store


# Secret values shorter than this are not redacted or masked: they would
# mask ordinary text ("1", "on").
MIN_SECRET_LEN = 3
_REDACTED = "***"
# The ingredient sections that hold user text, where a secret can land when
# it is interpolated (`run: ["deploy", "${var.db_password}"]`).
_TEXT_SECTIONS = ("vars", "env", "run")


def secret_values(comp) -> list[str]:
    """The clear values of a component's sensitive vars and env, as text."""
    out = []
    for name in comp.sensitive:
        for source in (comp.vars, comp.env):
            if name in source:
                value = source[name]
                text = value if isinstance(value, str) else canonical(value)
                if len(text) >= MIN_SECRET_LEN:
                    out.append(text)
    return out


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret replaced by `***` inside its strings."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            value = value.replace(secret, _REDACTED)
        return value
    if isinstance(value, Mapping):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    return value


def storable_ingredients(node: ActionNode) -> dict:
    """The node's local ingredients with no secret in clear: what is stored
    (for explain) and what stored ingredients are compared against. Sensitive
    vars are already digests; this catches their values interpolated into
    other vars, env or `run`. The key itself is computed from the clear text."""
    secrets = secret_values(node.component)
    local = dict(node.local)
    for section in _TEXT_SECTIONS:
        if section in local:
            local[section] = redact(local[section], secrets)
    return local


@dataclass(frozen=True)
class Decision:
    run: bool
    key: str
    reasons: tuple[str, ...]
    outputs: Mapping[str, Any] | None = None  # when cached
    result: str | None = None  # result digest when cached
    reused_build: Built | None = None  # build mode: reused from another run/target

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


class Rebuilder:
    def __init__(self, graph: ActionGraph, store: Store, *, force: bool = False,
                 snapshots: dict[tuple[str, str], Snapshot] | None = None) -> None:
        """`snapshots`: (deployment, target) -> what the store holds there, when
        the caller read it (only some components of it); else all is read."""
        self.graph = graph
        self.store = store
        self.force = force
        if snapshots is None:
            snapshots = {(spec.name, label.target): store.snapshot(spec.name, label.target)
                         for label, spec in graph.specs.items()}
        self.snapshots = snapshots

    def snapshot(self, node: ActionNode) -> Snapshot:
        return self.snapshots[(node.deployment, node.target)]

    def applied(self, node: ActionNode) -> Applied | None:
        return self.snapshot(node).applied.get(node.cid)

    def key(self, node: ActionNode, upstream: Mapping[str, str]) -> str:
        """`upstream`: dependency component id -> result digest."""
        return action_key(node.local_canonical, upstream)

    def must_run(self, node: ActionNode) -> str | None:
        """Why `node` runs whatever its key, or None."""
        if self.force:
            return "forced (--force)"
        if not node.component.cache:
            return "cache: false (always runs)"
        return None

    def local_changes(self, node: ActionNode) -> list[str]:
        """What changed in the node's own inputs since its last success."""
        last = self.applied(node)
        if last is None:
            removal = self.snapshot(node).removals.get(node.cid)
            if removal is not None:
                return [removal.reason]
            return ["never applied" if node.mode != BUILD else "never built"]
        return describe_changes(last.ingredients, storable_ingredients(node), None)

    def decide(self, node: ActionNode, upstream: Mapping[str, str]) -> Decision:
        key = self.key(node, upstream)
        last = self.applied(node)
        forced = self.must_run(node)
        if forced:
            return Decision(True, key, (forced,))
        if node.mode == BUILD:
            hit = self.store.builds([key]).get(key)
            if hit is not None:
                why = "built earlier with the same key" if not last or last.key != key else "up to date"
                return Decision(False, key, (why,), hit.outputs, hit.result, hit)
        elif last is not None and last.key == key:
            return Decision(False, key, ("up to date",), last.outputs, last.result)
        return Decision(True, key, self.reasons(node, upstream, key))

    def reasons(self, node: ActionNode, upstream: Mapping[str, str] | None, key: str | None) -> tuple[str, ...]:
        last = self.applied(node)
        attempt = self.snapshot(node).attempts.get(node.cid)
        out: list[str] = []
        if attempt is not None and attempt.status != "succeeded":
            out.append(f"last attempt {attempt.status}")
        if last is None:
            removal = self.snapshot(node).removals.get(node.cid)
            if removal is not None:
                out.append(removal.reason)  # destroyed by run R / drift: N resources changed ...
            else:
                out.append("never applied" if node.mode != BUILD else "never built")
            return tuple(out)
        changes = describe_changes(last.ingredients, storable_ingredients(node), upstream)
        if node.mode == BUILD and not changes:
            changes = ["no earlier build with this key"]
        return tuple(out + (changes or ["key changed"]))


def describe_changes(old: Mapping, new_local: Mapping, upstream: Mapping[str, str] | None) -> list[str]:
    """Plain-words differences between stored ingredients and the current ones."""
    out: list[str] = []
    if old.get("type") != new_local.get("type"):
        out.append(f"component type version changed {old.get('type')} → {new_local.get('type')}")
    for section, word in (("vars", "var"), ("env", "env")):
        before, after = old.get(section) or {}, new_local.get(section) or {}
        for name in sorted(set(before) | set(after)):
            if name not in before:
                out.append(f"{word} `{name}` added")
            elif name not in after:
                out.append(f"{word} `{name}` removed")
            elif _differs(before[name], after[name]):
                out.append(f"{word} `{name}` changed" + _values(before[name], after[name]))
    if _differs(old.get("run"), new_local.get("run")):
        out.append("run changed" + _values(old.get("run"), new_local.get("run")))
    if old.get("source") != new_local.get("source"):
        out.append(f"source moved {old.get('source')} → {new_local.get('source')}")
    if old.get("commit") != new_local.get("commit"):  # a git source (sources/git.py)
        out.append(f"source commit {str(old.get('commit'))[:12]} → {str(new_local.get('commit'))[:12]}")
    if old.get("timeout") != new_local.get("timeout"):
        out.append(f"timeout changed {old.get('timeout')} → {new_local.get('timeout')}")
    out += _type_changes(old, new_local)
    before, after = old.get("files") or {}, new_local.get("files") or {}
    source = new_local.get("source") or old.get("source") or ""
    for name in sorted(set(before) | set(after)):
        kind, _, rel = name.partition(":")
        shown = f"{source}/{rel}" if kind == "source" and source else rel
        if name not in before:
            out.append(f"file `{shown}` added")
        elif name not in after:
            out.append(f"file `{shown}` removed")
        elif before[name] != after[name]:
            if before[name][:2] == after[name][:2]:
                out.append(f"file `{shown}` executable bit changed")
            else:
                out.append(f"file `{shown}` changed")
    if upstream is not None:
        b_up, a_up = old.get("upstream") or {}, upstream
        for dep in sorted(set(b_up) | set(a_up)):
            if dep not in b_up:
                out.append(f"new dependency `{dep}`")
            elif dep not in a_up:
                out.append(f"dependency `{dep}` removed")
            elif b_up[dep] != a_up[dep]:
                out.append(f"upstream `{dep}` result changed")
    return out


def _type_changes(old: Mapping, new: Mapping) -> list[str]:
    """Ingredients a type adds (terraform: toolchain, backend, local modules)."""
    out = []
    if "toolchain" in old and _differs(old.get("toolchain"), new.get("toolchain")):
        from ..components.tftoolchain import describe_toolchain

        out.append(f"toolchain changed {describe_toolchain(old.get('toolchain'))} → "
                   f"{describe_toolchain(new.get('toolchain'))}")
    if "backend" in old and _differs(old.get("backend"), new.get("backend")):
        b, a = old.get("backend") or {}, new.get("backend") or {}
        if b.get("type") != a.get("type"):
            out.append(f"backend changed {b.get('type')} → {a.get('type')}")
        else:
            out.append("backend config changed" + _values(b.get("config"), a.get("config")))
    if _differs(old.get("modules"), new.get("modules")):
        b, a = set(old.get("modules") or ()), set(new.get("modules") or ())
        for name in sorted(a - b):
            out.append(f"local module `{name}` added")
        for name in sorted(b - a):
            out.append(f"local module `{name}` removed")
    return out


def _differs(before, after) -> bool:
    return canonical(before) != canonical(after)


def _values(before, after) -> str:
    if isinstance(before, dict) and "sha" in before and len(before) == 1:
        return " (sensitive, values hidden)"
    a, b = canonical(before), canonical(after)
    if _REDACTED in a or _REDACTED in b:
        return " (values hidden: they hold a sensitive value)"
    if len(a) + len(b) > 120:
        return ""
    return f" {a} → {b}"
