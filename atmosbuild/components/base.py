"""The component-type interface. One module per type, registered in
components/__init__.py; adding a type (say `helmfile`) is one new file.

A type turns one resolved, rendered component into the argv lists to run and
reads the component's outputs afterwards. It never starts processes itself.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

# The two modes a component type decides in (SPEC 4).
APPLY = "apply"  # changes the world: skipped only if this key was last applied here
BUILD = "build"  # pure: any earlier success with the same key is reused

__all__ = ["APPLY", "BUILD", "ActionContext", "CompileEnv", "Compiled", "ComponentType", "Invocation",
           "parse_json_object",
           "read_outputs_file", "require_binary"]


@dataclass(frozen=True)
class Invocation:
    argv: tuple[str, ...]
    capture: bool = False  # hand this step's stdout to `outputs`
    # False: a captured stdout that may hold secrets nobody knows yet
    # (`terraform output -json`) is kept out of the log.
    log: bool = True


@dataclass(frozen=True)
class ActionContext:
    """What a type needs to know about one action."""

    component_id: str
    name: str
    target: str
    deployment: str
    key: str  # hex action key
    workdir: str  # WORKSPACE/TYPE/NAME
    vars: Mapping[str, Any]  # rendered (outputs substituted)
    run: Any  # rendered `run` (list or str) or None
    outputs_path: str  # $ATMOS_OUTPUTS
    vars_path: str  # $ATMOS_VARS_FILE
    # WORKSPACE/.atmos/ID-with-slashes-escaped: where files of ours for this
    # action go (PREFIX.vars.json, ...), outside the action's own directory,
    # so `nixpacks build .` or `tar .` never pick them up.
    meta_prefix: str = ""
    toolchain: Mapping[str, str] = field(default_factory=dict)
    state_dir: str = ""  # STATE_DIR (absolute): what persists across rollouts lives here
    root: str = ""  # the workspace root
    component: Any = None  # the ResolvedComponent
    ingredients: Mapping[str, Any] = field(default_factory=dict)  # the node's local key ingredients
    extra: Mapping[str, Any] = field(default_factory=dict)  # what the type's `compile` kept
    settings: Mapping[str, Any] = field(default_factory=dict)  # atmos.yaml, per type (`terraform:`)
    color: bool = False  # the console shows colours (a terminal, no NO_COLOR): tools may colour
    verb: str = "apply"  # apply | preview | destroy | check (SPEC 10)
    # preview/check: where the plan goes; apply --from-preview: the reviewed plan to apply
    plan_file: str = ""


@dataclass
class CompileEnv:
    """What a type's `compile` may use besides the component: the root, the
    state directory (for caches), atmos.yaml settings, the digester of the
    keys, and `fail(path, message)`, which gives the error to raise for a
    problem at `path` of the deployment document (("vars", NAME) of the
    component or its override, ...)."""

    root: str
    state_dir: str
    deployment: str
    target: str
    digester: Any
    toolchain: Mapping[str, str]
    settings: Mapping[str, Any]
    fail: Any  # (path: tuple, message: str) -> Exception
    set_vars: frozenset = frozenset()  # vars written on the component or its per-target override
    caches: dict = field(default_factory=dict)  # per-compile caches, shared by all nodes


@dataclass(frozen=True)
class Compiled:
    """A type's refinement of a node's key ingredients (see `compile`)."""

    config: Mapping[str, Any]
    files: Mapping[str, list]
    extra: Mapping[str, Any] = field(default_factory=dict)  # for the run, not the key


class ComponentType:
    name: str = ""
    mode: str = APPLY
    version: str = "1"  # enters every key of this type: bump it when behaviour changes
    #: the component keys (config/document.py) a component of this type must
    #: have, and may not have (read by config/model.py and config/resolve.py)
    required: Sequence[str] = ()
    forbidden: Sequence[str] = ()
    #: the vars that enter this type's action key; None = all of them
    key_vars: Sequence[str] | None = None

    def invocations(self, ctx: ActionContext) -> list[Invocation]:
        raise NotImplementedError

    # -- the lifecycle verbs (SPEC 10) ---------------------------------------------
    # A type that has nothing to do for a verb says so up front (has_*), so
    # the verb lists the component ("would run", nothing to destroy) instead
    # of starting an action for it.

    def has_preview(self, comp) -> bool:
        return False

    def preview_invocations(self, ctx: ActionContext) -> list[Invocation]:
        return []

    def read_preview(self, ctx: ActionContext, captured: str | None) -> dict:
        """What the preview found: {"add", "change", "destroy": counts or
        None, "outputs": names of outputs that would change, or None when the
        type cannot tell}."""
        return {"add": None, "change": None, "destroy": None, "outputs": None}

    def has_destroy(self, comp) -> bool:
        return False

    def destroy_invocations(self, ctx: ActionContext) -> list[Invocation]:
        return []

    def has_check(self, comp) -> bool:
        return False

    def check_invocations(self, ctx: ActionContext) -> list[Invocation]:
        return []

    def read_check(self, ctx: ActionContext, captured: str | None) -> list[str]:
        """The addresses of what drifted (empty: none)."""
        return []

    def after_lifecycle(self, ctx: ActionContext) -> None:
        """A preview/destroy/check action succeeded (terraform: stamp its data dir)."""

    def compile(self, comp, config: dict, files: dict, env: CompileEnv) -> Compiled | None:
        """Refine the key ingredients at plan time (which vars count, extra
        files, the toolchain's identity); None keeps them as they are. May
        raise env.fail(...) or AtmosError for bad input."""
        return None

    def config_secrets(self, comp, settings: Mapping[str, Any], deployment: str, target: str) -> list[str]:
        """Secret values in the type's own configuration (terraform: backend
        passwords), masked in the action's output like sensitive vars."""
        return []

    def source_additions(self, ctx: ActionContext) -> dict[str, list]:
        """Files the action added to its *source* directory that the next
        compile will see (`.terraform.lock.hcl`), as key file entries
        ("source:REL" -> [kind, digest, exec]): the key recorded for the
        success includes them, so writing them does not re-run it."""
        return {}

    def extra_env(self, ctx: ActionContext) -> dict[str, str]:
        return {}

    def prepare(self, ctx: ActionContext) -> None:
        """Write type-specific files into the workdir before running."""

    def outputs(self, ctx: ActionContext, captured: str | None) -> dict:
        """The component's outputs: by default the JSON object at $ATMOS_OUTPUTS."""
        return read_outputs_file(ctx.outputs_path)

    def sensitive_outputs(self, ctx: ActionContext, captured: str | None) -> frozenset[str]:
        """The names of the outputs this type knows to be sensitive (say,
        Terraform's `"sensitive": true`), called after `outputs()` with the
        same arguments. Besides these, outputs that `sensitive:` lists, whose
        name says so, or that hold a secret of the action are sensitive
        (state/rebuild.sensitive_output_names). Sensitive outputs are never
        stored in clear, are masked, and taint what is built from them."""
        return frozenset()

    def recover_outputs(self, ctx: ActionContext) -> dict | None:
        """The component's current outputs, read back without applying
        anything (say, from Terraform state), or None: this type cannot.

        Asked when a dependent needs a sensitive output of this component
        while it is cached this rollout: state keeps only a marker for a
        sensitive value. `ctx` is built as for a run (its workdir holds the
        materialized source; `vars` as resolved, any `${outputs...}` in them
        not substituted; `run` None), but `prepare` has not run. The
        result must be the outputs the recorded result digest was computed
        over, or the dependent fails (they changed since: re-run)."""
        return None


def read_outputs_file(path: str) -> dict:
    """A missing file means no outputs; anything but a JSON object fails."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as fh:
        raw = fh.read()
    if not raw.strip():
        return {}
    return parse_json_object(raw, "outputs file $ATMOS_OUTPUTS")


def parse_json_object(text, what: str) -> dict:
    """JSON text that must be an object; a clear ValueError naming `what` if not."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must hold a JSON object, got {type(value).__name__}")
    return value


def require_binary(binary: str, setting: str) -> None:
    """Fail the action up front, naming the setting, when its tool is missing:
    `command not found: terraform` alone does not tell the user what to change."""
    if os.sep in binary and not os.path.isabs(binary):
        return  # relative to the action's workdir: let the process report it
    if shutil.which(binary) is None:
        where = "is not executable" if os.path.isabs(binary) and os.path.exists(binary) else \
            "was not found" + ("" if os.path.isabs(binary) else " on PATH")
        raise ValueError(f"{binary!r} {where}: install it or set `{setting}` in atmos.yaml "
                         "to the binary to use")
