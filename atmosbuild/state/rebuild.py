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

import json
import shlex
from typing import Any, Mapping

from ..components import BUILD
from ..config.values import as_text
from ..graph.actions import ActionGraph, ActionNode
from ..graph.keys import action_key, canonical
from .store import Applied, Decision, Snapshot, Store  # (Decision: re-exported)


_REDACTED = "***"
# The ingredient sections that hold user text, where a secret can land when
# it is interpolated (`run: ["deploy", "${var.db_password}"]`).
_TEXT_SECTIONS = ("vars", "env", "run", "run_values")
# What state holds instead of a sensitive output's value (SPEC 14). The
# result digest is still computed over the real value, so early cutoff holds.
SENSITIVE_MARKER = {"$atmosbuild": "sensitive"}
# An output that holds one of its action's secrets is sensitive too (it was
# built from it); only secrets at least this long are looked for inside
# outputs, or a secret `1` would mark every output holding a digit. Masking
# of printed text has no minimum (see README, "Secrets").
MIN_TAINT_LEN = 4


def is_marker(value: Any) -> bool:
    return isinstance(value, dict) and value == SENSITIVE_MARKER


def _texts(value: Any, out: list[str]) -> None:
    """The value as text, and every string inside it (a secret map's leaves
    are printed on their own too)."""
    if isinstance(value, str):
        if value:
            out.append(value)
        return
    text = canonical(value) if isinstance(value, (dict, list, tuple)) else as_text(value)
    if text:
        out.append(text)
    if isinstance(value, dict):
        for v in value.values():
            _texts(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _texts(v, out)


def sensitive_refs(comp, upstream_sensitive: Mapping[str, frozenset]) -> set[tuple[str, str]]:
    """The `${outputs...}` references of `comp` that name a sensitive output:
    `upstream_sensitive` is upstream id -> its sensitive output names."""
    out = set()
    for up, key in comp.output_refs:
        if key.split(".", 1)[0] in upstream_sensitive.get(up, ()):
            out.add((up, key))
    return out


def secret_values(comp, rendered: Mapping[str, Any] | None = None,
                  refs: set[tuple[str, str]] = frozenset(), outputs: Mapping | None = None) -> list[str]:
    """Every secret text of one action: the values of its sensitive vars and
    env, of argv items and string-run values built from one, and (with
    `refs`, the sensitive output references) the output values and every
    value built from them. `rendered`: vars/env/run/run_env after render()
    (the clear values the action gets); without it the resolved ones."""
    from ..config.resolve import _walk_refs  # (no import cycle at module load)

    ids = {up for up, _ in comp.output_refs}
    r = rendered or {"vars": comp.vars, "env": comp.env, "run": comp.run, "run_env": comp.run_env}

    def built_from_output(template) -> bool:
        if not refs:
            return False
        found: set = set()
        _walk_refs(template, ids, found)
        return bool(found & refs)

    # Roots: the values that are secret in themselves; derived: values built
    # from one. A derived value is masked whole only when it holds no root
    # (a map's JSON, say): else masking the root in it is enough, and the
    # log keeps `--password=***` rather than `***`.
    from ..config.resolve import is_sensitive_name

    roots: list[str] = []
    derived: list[str] = []
    declared = set(comp.declared_sensitive)
    names = set(comp.sensitive)
    for section, template in (("vars", comp.vars), ("env", comp.env)):
        for name, value in template.items():
            if name in declared or is_sensitive_name(name):
                _texts(r[section].get(name), roots)
            elif name in names or built_from_output(value):
                _texts(r[section].get(name), derived)
    secret_run = set(comp.secret_run)
    if isinstance(comp.run, tuple):
        for i, item in enumerate(comp.run):
            if i in secret_run or built_from_output(item):
                _texts(r["run"][i], derived)
    for name, value in comp.run_env.items():
        if name in secret_run or built_from_output(value):
            _texts(r["run_env"][name], derived)
    if refs and outputs is not None:
        for up, key in refs:
            value = outputs.get(up, {})
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None and not is_marker(value):
                _texts(value, roots)
    out = roots + [d for d in derived if not any(root in d for root in roots)]
    # A program that prints a secret inside JSON (say, its vars file) shows
    # it escaped, and a shell tracing its commands (`set -x`) shell-quoted:
    # mask those forms too.
    for text in list(out):
        forms = {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
        if "'" in text:
            forms |= {shlex.quote(text), "'" + text.replace("'", "'\\''") + "'"}
        out.extend(forms - {text})
    return sorted(set(out), key=len, reverse=True)


def sensitive_output_names(comp, outputs: Mapping[str, Any], typed=frozenset(),
                           secrets: list[str] = ()) -> frozenset:
    """Which of an action's outputs are sensitive: those its type marks
    (`typed`), those `sensitive:` lists, those whose name says so, and those
    that hold one of the action's secrets."""
    from ..config.resolve import is_sensitive_name

    declared = set(comp.declared_sensitive)
    long = [s for s in secrets if len(s) >= MIN_TAINT_LEN]
    names = set()
    for name, value in outputs.items():
        if name in typed or name in declared or is_sensitive_name(name):
            names.add(name)
        elif long:
            texts: list[str] = []
            _texts(value, texts)
            if any(s in t for s in long for t in texts):
                names.add(name)
    return frozenset(names)


def storable_outputs(outputs: Mapping[str, Any], sensitive: frozenset) -> dict:
    """Outputs as state keeps them: sensitive ones replaced by the marker."""
    if not sensitive:
        return dict(outputs)
    return {k: (dict(SENSITIVE_MARKER) if k in sensitive else v) for k, v in outputs.items()}


def marked_outputs(outputs: Mapping[str, Any] | None) -> frozenset:
    """The names of the outputs state holds only a marker for."""
    return frozenset(k for k, v in (outputs or {}).items() if is_marker(v))


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
    (for explain) and what stored ingredients are compared against. Secret
    values, and the values built from them, are digests already (graph/keys);
    this also catches a secret's text written out literally elsewhere (a
    password pasted into a plain var). The key is computed before this."""
    comp = node.component
    if not comp.sensitive:
        return node.local
    secrets = [s for s in secret_values(comp) if "${outputs." not in s]
    local = dict(node.local)
    for section in _TEXT_SECTIONS:
        if section in local:
            local[section] = redact(local[section], secrets)
    return local


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
        for name, how in diff_entries(before, after, _differs):
            out.append(f"{word} `{name}` {how}"
                       + (_values(before[name], after[name]) if how == CHANGED else ""))
    if _differs(old.get("run"), new_local.get("run")):
        out.append("run changed" + _values(old.get("run"), new_local.get("run")))
    elif _differs(old.get("run_values"), new_local.get("run_values")):
        out.append("run changed (a value it expands)"
                   + _values(old.get("run_values"), new_local.get("run_values")))
    if old.get("source") != new_local.get("source"):
        out.append(f"source moved {old.get('source')} → {new_local.get('source')}")
    if old.get("commit") != new_local.get("commit"):  # a git source (sources/git.py)
        out.append(f"source commit {str(old.get('commit'))[:12]} → {str(new_local.get('commit'))[:12]}")
    if old.get("timeout") != new_local.get("timeout"):
        out.append(f"timeout changed {old.get('timeout')} → {new_local.get('timeout')}")
    out += _type_changes(old, new_local)
    before, after = old.get("files") or {}, new_local.get("files") or {}
    source = new_local.get("source") or old.get("source") or ""
    for name, how in diff_entries(before, after):
        kind, _, rel = name.partition(":")
        shown = f"{source}/{rel}" if kind == "source" and source else rel
        if how == CHANGED and before[name][:2] == after[name][:2]:
            how = "executable bit changed"
        out.append(f"file `{shown}` {how}")
    if upstream is not None:
        words = {ADDED: "new dependency `{}`", REMOVED: "dependency `{}` removed",
                 CHANGED: "upstream `{}` result changed"}
        out += [words[how].format(dep) for dep, how in diff_entries(old.get("upstream") or {}, upstream)]
    return out


ADDED, REMOVED, CHANGED = "added", "removed", "changed"


def diff_entries(before: Mapping, after: Mapping, differs=None) -> list[tuple[str, str]]:
    """(name, ADDED | REMOVED | CHANGED) for each name whose entry differs
    between two ingredient maps, in name order. `differs(a, b)`: whether two
    entries differ (default: !=)."""
    out = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            out.append((name, ADDED))
        elif name not in after:
            out.append((name, REMOVED))
        elif differs(before[name], after[name]) if differs else before[name] != after[name]:
            out.append((name, CHANGED))
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
    a, b = canonical(before), canonical(after)
    if _holds_digest(before) or _holds_digest(after):
        return " (sensitive, values hidden)"
    if _REDACTED in a or _REDACTED in b:
        return " (values hidden: they hold a sensitive value)"
    if len(a) + len(b) > 120:
        return ""
    return f" {a} → {b}"


def _holds_digest(value) -> bool:
    """Whether a secret's digest (graph.keys.secret_digest) is inside `value`."""
    if isinstance(value, dict):
        if len(value) == 1 and "sha" in value:
            return True
        return any(_holds_digest(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_digest(v) for v in value)
    return False
