"""`terraform` (or OpenTofu via `toolchain.terraform: tofu`), SPEC 4 and 9.

Plan time (`compile`): the module's files are read (tfmodule.py) for the
variables it declares and the local modules it calls; only declared vars
enter the key and the var file, the local modules' files enter the key, and
so do the backend (secrets as digests) and the toolchain's identity
(`terraform version -json`).

Run time, per (deployment, component, target), nothing of which lives in
the rollout workspace:

    STATE_DIR/tfstate/DEPLOYMENT/TYPE/NAME/TARGET/terraform.tfstate  default local backend
    STATE_DIR/terraform/data/DEPLOYMENT@TARGET/ID                    TF_DATA_DIR (persisted)
    STATE_DIR/terraform/plugin-cache/                                TF_PLUGIN_CACHE_DIR (shared)

The backend is set by `atmos_backend_override.tf.json` beside the module.
`init` (and `workspace select -or-create`) run only when the digest of what
init depends on (module calls, provider requirements, backend, toolchain,
the lock file) differs from the stamp in the data dir, or the data dir is
new. Inits that may install providers into the shared plugin cache hold
file locks (flockrun.py): per provider, or all of them when a remote module
hides which; Terraform's cache is not safe for concurrent writers.

On a Dask worker (`executor: dask://…`) nothing under STATE_DIR is the
worker's: the data dir is the action's own (WORKSPACE/.atmos/ID.tfdata, in
the worker's private copy, removed with it), so `init` runs every time, as
on a Terraform Cloud agent or in Atlantis; the plugin cache and its locks
are the worker's (WORKER_DIR/terraform/plugin-cache, under its
--local-directory, shared by the actions it runs); the lock file travels
with the source and, written by init, comes back (`returned_files`). Only a
shared backend keeps state there: the default local one (or `type: local`)
is refused before the rollout runs anything (`remote_problem`).

A component whose local modules live outside its own directory runs in a
mirror of the root's layout (WORKSPACE/.atmos/ID.root/SOURCE, holding the
modules at their root-relative places); WORKSPACE/TYPE/NAME is a symlink to
it, so `../modules/label` resolves as it does in the repository.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import TYPE_CHECKING

from .base import (APPLY, CLUSTER_LOCK, WORKER_DIR, ActionContext, CompileEnv, Compiled, ComponentType, Invocation,
                   parse_json_object, require_binary)
from .tfbackend import backend_ingredient, backend_secrets, chosen_backend, override_document
from .tftoolchain import ToolchainCache, resolve_binary, toolchain_identity

if TYPE_CHECKING:  # (imported where it is used: plan time only)
    from .tfmodule import Module

OVERRIDE_FILE = "atmos_backend_override.tf.json"
LOCK_FILE = ".terraform.lock.hcl"
STAMP_FILE = "atmos-init.json"  # in the data dir: the digest init last succeeded with
SAVED_LOCK = "atmos.lock.hcl"  # in the data dir: the lock file of the last success
_FLOCKRUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flockrun.py")
_EXITMAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exitmap.py")


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("/", "%2F")


def _values(raw: dict) -> dict:
    """Each output's value out of `terraform output -json` (which wraps it
    with its type and sensitivity)."""
    return {name: (item.get("value") if isinstance(item, dict) else item) for name, item in raw.items()}


def data_dir(state_dir: str, deployment: str, target: str, cid: str) -> str:
    return os.path.join(state_dir, "terraform", "data", f"{_escape(deployment)}@{target}", _escape(cid))


# -- plan time ---------------------------------------------------------------------------

def read_module_dir(root: str, rel_dir: str, digester, cache) -> Module:
    """One module directory's summaries (its top-level .tf/.tf.json files),
    digests through the keys' digester and parses through the cache."""
    from ..config.workspace import outside_root
    from .tfmodule import Module, ModuleOutside, is_module_file

    base = root if rel_dir == "." else f"{root}/{rel_dir}"
    if outside_root(os.path.relpath(os.path.realpath(base), os.path.realpath(root))):
        raise ModuleOutside(rel_dir)
    files = {}
    for rel, kind, digest, _ in digester.tree(rel_dir):
        if kind != "f" or "/" in rel or not is_module_file(rel):
            continue
        path = f"{base}/{rel}"

        def read(path=path) -> str:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        files[rel] = cache.get(digest, rel, read)
    return Module(rel_dir, files)


def _providers_intact(data: str) -> bool:
    """Every provider the data dir holds is still there (they are links
    into the shared plugin cache, which a user may have removed)."""
    for base, dirs, files in os.walk(os.path.join(data, "providers")):
        for name in dirs + files:
            if not os.path.exists(os.path.join(base, name)):
                return False
    return True


def _own_backend(module) -> str:
    """'backend "s3" (in main.tf)' when the module declares a backend or a
    cloud block, else ''."""
    for name in sorted(module.files):
        summary = module.files[name]
        if summary.get("cloud"):
            return f"a `cloud` block (in {name})"
        if summary.get("backend"):
            return f'backend "{summary["backend"][0]}" (in {name})'
    return ""


def _remote_calls(modules) -> bool:
    """Whether some module calls a non-local one (registry, git): its
    providers are not known before init fetches it."""
    from .tfmodule import is_local_source

    return any(not (isinstance(src, str) and is_local_source(src))
               for mod in modules for summary in mod.files.values()
               for _, src, _, _ in summary.get("modules", ()))


class Terraform(ComponentType):
    name = "terraform"
    mode = APPLY
    version = "2"  # 2: SPEC 9 (declared vars only, local modules, backend, toolchain in the key)
    forbidden = ("run", "preview", "destroy")

    def __init__(self) -> None:
        self._runs: dict[str, dict] = {}  # per running action (meta prefix): init or not, paths

    def _binary(self, ctx_or_toolchain) -> str:
        toolchain = getattr(ctx_or_toolchain, "toolchain", ctx_or_toolchain)
        return (toolchain or {}).get("terraform") or "terraform"

    # -- the key ---------------------------------------------------------------

    def compile(self, comp, config: dict, files: dict, env: CompileEnv) -> Compiled:
        from ..errors import ConfigError, did_you_mean
        from ..graph.keys import digest
        from .tfmodule import ModuleError, SummaryCache, init_inputs, local_modules, provider_addresses

        cache = env.caches.get("tf-summaries")
        if cache is None:
            cache = env.caches["tf-summaries"] = SummaryCache(
                os.path.join(env.state_dir, "cache", "terraform-modules.json") if env.state_dir else None)
        modules = []
        if comp.source is not None:
            try:
                modules = local_modules(comp.source, lambda d: read_module_dir(env.root, d, env.digester, cache))
            except ModuleError as exc:
                from ..config.workspace import shown_path

                raise ConfigError(exc.message + f" (in {comp.id})",
                                  file=shown_path(os.path.join(env.root, exc.file)),
                                  line=exc.line, col=exc.col) from None
        declared = modules[0].variables() if modules else set()
        for name in sorted(env.set_vars):
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise env.fail(("vars", name), f"var '{name}' of {comp.id} is not declared by its module "
                               f"({comp.source})" + did_you_mean(name, declared)
                               + f"; the module declares: {known}")
        config = dict(config)
        config["vars"] = {k: v for k, v in config["vars"].items() if k in declared}
        outside = []
        files = dict(files)
        src = comp.source
        for mod in modules[1:]:
            inside = src == "." or mod.dir == src or mod.dir.startswith(src + "/")
            if inside:
                continue  # already among the source's files
            outside.append(mod.dir)
            for rel, kind, dig, exe in env.digester.tree(mod.dir):
                files[f"module:{mod.dir}/{rel}"] = [kind, dig, exe]
        binary, toolchain = self._toolchain(env)
        backend = chosen_backend(comp, env.settings, env.deployment, env.target)
        if backend is None and modules:
            own = _own_backend(modules[0])
            if own:
                # Replacing it silently with the default would put the state
                # somewhere the module's author did not mean.
                raise env.fail(("source",), f"the module of {comp.id} declares {own}: atmosbuild "
                               "keeps state itself unless told otherwise; set `backend: {type: module}` "
                               "on the component to keep the module's, or `terraform: {backend: ...}` in "
                               "atmos.yaml (or `backend:` on it) to choose one, or remove the block")
        config["toolchain"] = toolchain
        config["backend"] = backend_ingredient(backend)
        config["modules"] = [m.dir for m in modules[1:]]
        init = digest(["init", init_inputs(modules), config["backend"], toolchain])
        sensitive = sorted(modules[0].sensitive_outputs()) if modules else []
        return Compiled(config, files, {"declared": sorted(declared), "outside": outside,
                                        "init": init, "sensitive_outputs": sensitive, "binary": binary,
                                        "providers": None if _remote_calls(modules) else
                                        provider_addresses(modules)})

    def _toolchain(self, env: CompileEnv) -> tuple[str | None, dict]:
        """(the binary's real path, its identity), once per compile."""
        name = self._binary(env.toolchain)
        hit = env.caches.get(("tf-binary", name))
        if hit is None:
            cache = env.caches.get("tf-toolchain")
            if cache is None:
                cache = env.caches["tf-toolchain"] = ToolchainCache(env.state_dir)
            path = resolve_binary(name, env.root)
            hit = env.caches[("tf-binary", name)] = (os.path.realpath(path) if path else None,
                                                     toolchain_identity(name, env.root, cache))
        return hit

    # -- the run -----------------------------------------------------------------

    def config_secrets(self, comp, settings, deployment: str, target: str) -> list[str]:
        secrets = backend_secrets(chosen_backend(comp, settings, deployment, target))
        out = []
        for value in secrets:  # a password inside a URL is a secret on its own too
            out.append(value)
            import re

            m = re.match(r"^[a-z][a-z0-9+.-]*://[^:/@]*:([^@]+)@", value)
            if m and len(m.group(1)) >= 3:
                out.append(m.group(1))
        return out

    def tfvars_path(self, ctx: ActionContext) -> str:
        return ctx.meta_prefix + ".tfvars.json"

    def _data_dir(self, ctx: ActionContext) -> str:
        if ctx.remote:
            return ctx.meta_prefix + ".tfdata"  # the worker's copy of the workspace: its own
        return data_dir(ctx.state_dir or os.path.join(ctx.root, ".atmos"), ctx.deployment, ctx.target,
                        ctx.component_id)

    def _plugin_cache(self, ctx: ActionContext) -> str:
        if ctx.remote:
            return os.path.join(WORKER_DIR, "terraform", "plugin-cache")
        return os.environ.get("TF_PLUGIN_CACHE_DIR") or os.path.join(ctx.state_dir, "terraform",
                                                                      "plugin-cache")

    def remote_problem(self, comp, settings, deployment: str, target: str, verb: str = "apply") -> str | None:
        backend = chosen_backend(comp, settings, deployment, target)
        if backend is None or backend["type"] == "local":
            what = "the default local backend" if backend is None else "backend `local`"
            return (f"it uses {what}, whose state would stay on whichever Dask worker ran it and be "
                    "lost; give it a shared backend (`terraform: {backend: {type: pg, config: ...}}` "
                    "in atmos.yaml, or `backend:` on the component), or use `executor: local`")
        if verb in ("preview", "check", "apply --from-preview"):
            return (f"`{verb}` keeps a plan file, which stays on the worker that made it (or is "
                    "here, where the worker cannot read it); run it with the local executor")
        return None

    def returned_files(self, ctx: ActionContext) -> list[str]:
        return [os.path.join(ctx.workdir, LOCK_FILE)] if ctx.remote else []

    def _backend(self, ctx: ActionContext) -> dict | None:
        return chosen_backend(ctx.component, ctx.settings, ctx.deployment, ctx.target) \
            if ctx.component is not None else None

    def prepare(self, ctx: ActionContext) -> None:
        if not ctx.remote:  # (a worker checks its own: run/remote.py)
            require_binary(self._binary(ctx), "toolchain.terraform")
        extra = ctx.extra or {}
        if extra.get("outside"):
            self._mirror(ctx, extra["outside"])
        backend = self._backend(ctx)
        override = override_document(backend, ctx.state_dir, ctx.deployment, ctx.component_id)
        if override is not None:
            if backend is None:
                os.makedirs(override["terraform"]["backend"]["local"]["workspace_dir"], exist_ok=True)
            with open(os.path.join(ctx.workdir, OVERRIDE_FILE), "w", encoding="utf-8") as fh:
                json.dump(override, fh, indent=2, sort_keys=True)
        declared = set(extra.get("declared", ctx.vars))
        with open(self.tfvars_path(ctx), "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in ctx.vars.items() if k in declared}, fh, indent=2, sort_keys=True)
        if ctx.remote:  # a data dir of its own on the worker: init every time
            self._runs[ctx.meta_prefix] = {"init": True, "backend": backend}
            return
        data = self._data_dir(ctx)
        lock = os.path.join(ctx.workdir, LOCK_FILE)
        saved = os.path.join(data, SAVED_LOCK)
        if not os.path.exists(lock) and os.path.isfile(saved):
            # No lock file in the source (not copied back yet): the one the
            # last init wrote, so the installed providers still match.
            with open(saved, "rb") as src, open(lock, "wb") as dst:
                dst.write(src.read())
        stamp = self._stamp(extra.get("init", ""), lock)
        try:
            with open(os.path.join(data, STAMP_FILE), encoding="utf-8") as fh:
                fresh = json.load(fh).get("stamp") != stamp
        except (OSError, ValueError, AttributeError):
            fresh = True
        if not fresh and not _providers_intact(data):
            fresh = True  # the plugin cache was cleaned: its links in the data dir lead nowhere
        os.makedirs(data, exist_ok=True)
        self._runs[ctx.meta_prefix] = {"init": fresh, "backend": backend}

    @staticmethod
    def _stamp(init: str, lock: str) -> str:
        from ..graph.keys import digest
        from ..state.files import file_digest

        return digest([init, file_digest(lock) if os.path.exists(lock) else None])

    def _mirror(self, ctx: ActionContext, outside: list[str]) -> None:
        """Move the materialized source into a mirror of the root's layout,
        add the local modules at their places (checked against the key's
        digests), and leave a symlink at the workdir."""
        import xxhash

        comp = ctx.component
        mirror = ctx.meta_prefix + ".root"
        home = mirror if comp.source == "." else os.path.join(mirror, *comp.source.split("/"))
        os.makedirs(os.path.dirname(home), exist_ok=True)
        os.rename(ctx.workdir, home)
        os.symlink(home, ctx.workdir)
        for name, (kind, dig, exe) in (ctx.ingredients.get("files") or {}).items():
            if not name.startswith("module:"):
                continue
            rel = name[len("module:"):]
            dst = os.path.join(mirror, *rel.split("/"))
            if os.path.lexists(dst):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            src = os.path.join(ctx.root, *rel.split("/"))
            if kind == "l":
                if os.readlink(src) != dig:
                    raise ValueError(f"{rel} changed since the rollout was planned; run again")
                os.symlink(dig, dst)
                continue
            with open(src, "rb") as fh:
                data = fh.read()
            if xxhash.xxh3_128_hexdigest(data) != dig:
                raise ValueError(f"{rel} changed since the rollout was planned; run again")
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if exe else 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)

    def extra_env(self, ctx: ActionContext) -> dict[str, str]:
        cache = self._plugin_cache(ctx)
        if not ctx.remote:  # (a worker makes its own: run/remote.py)
            os.makedirs(cache, exist_ok=True)
        return {
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "TF_DATA_DIR": self._data_dir(ctx),
            "TF_PLUGIN_CACHE_DIR": cache,
            "CHECKPOINT_DISABLE": "1",
        }

    def invocations(self, ctx: ActionContext) -> list[Invocation]:
        tf = self._binary(ctx)
        nc = () if ctx.color else ("-no-color",)
        steps = []
        if ctx.plan_file:  # rollout --from-preview: exactly the reviewed plan (its vars are in it)
            steps.append(Invocation((tf, "apply", "-auto-approve", "-input=false", *nc, ctx.plan_file)))
        else:
            steps.append(Invocation((tf, "apply", "-auto-approve", "-input=false", *nc,
                                     f"-var-file={self.tfvars_path(ctx)}")))
        # Its stdout holds every output in clear, sensitive ones too: never logged.
        steps.append(Invocation((tf, "output", "-json", "-no-color"), capture=True, log=False))
        return self._steps(ctx, steps)

    # -- the lifecycle verbs (SPEC 10): same backend, data dir and var file ----

    def has_preview(self, comp) -> bool:
        return True

    def preview_invocations(self, ctx: ActionContext) -> list[Invocation]:
        tf = self._binary(ctx)
        nc = () if ctx.color else ("-no-color",)
        return self._steps(ctx, [
            Invocation((tf, "plan", f"-out={ctx.plan_file}", "-input=false", *nc,
                        f"-var-file={self.tfvars_path(ctx)}")),
            # The plan's JSON holds values (sensitive ones too): read, never logged.
            Invocation((tf, "show", "-json", "-no-color", ctx.plan_file), capture=True, log=False)])

    def read_preview(self, ctx: ActionContext, captured: str | None) -> dict:
        plan = parse_json_object((captured or "").strip() or "{}", "what `terraform show -json` printed")
        counts = {"add": 0, "change": 0, "destroy": 0}
        addresses = []
        for rc in plan.get("resource_changes") or ():
            actions = set((rc.get("change") or {}).get("actions") or ())
            if actions <= {"no-op", "read"}:
                continue
            addresses.append(str(rc.get("address")))
            if "create" in actions:
                counts["add"] += 1
            if "delete" in actions:
                counts["destroy"] += 1
            if "update" in actions:
                counts["change"] += 1
        outputs = sorted(name for name, oc in (plan.get("output_changes") or {}).items()
                         if set((oc or {}).get("actions") or ()) - {"no-op"})
        return {**counts, "outputs": outputs, "addresses": addresses}

    def has_destroy(self, comp) -> bool:
        return True

    def destroy_invocations(self, ctx: ActionContext) -> list[Invocation]:
        tf = self._binary(ctx)
        nc = () if ctx.color else ("-no-color",)
        return self._steps(ctx, [Invocation((tf, "destroy", "-auto-approve", "-input=false", *nc,
                                             f"-var-file={self.tfvars_path(ctx)}"))])

    def has_check(self, comp) -> bool:
        return True

    def check_invocations(self, ctx: ActionContext) -> list[Invocation]:
        tf = self._binary(ctx)
        nc = () if ctx.color else ("-no-color",)
        plan = (tf, "plan", "-detailed-exitcode", f"-out={ctx.plan_file}", "-input=false", *nc,
                f"-var-file={self.tfvars_path(ctx)}")
        # -detailed-exitcode: 2 means "changes", an answer; exitmap keeps it from failing the action.
        return self._steps(ctx, [
            Invocation((sys.executable, "-S", "-E", _EXITMAP, ctx.plan_file + ".exitcode", "0,2", "--",
                        *plan)),
            Invocation((tf, "show", "-json", "-no-color", ctx.plan_file), capture=True, log=False)])

    def read_check(self, ctx: ActionContext, captured: str | None) -> list[str]:
        found = self.read_preview(ctx, captured)
        plan = parse_json_object((captured or "").strip() or "{}", "what `terraform show -json` printed")
        drifted = {str(rd.get("address")) for rd in plan.get("resource_drift") or ()
                   if set((rd.get("change") or {}).get("actions") or ()) - {"no-op", "read"}}
        return sorted(drifted | set(found["addresses"]))

    def after_lifecycle(self, ctx: ActionContext) -> None:
        """Stamp the data dir (init ran with these inputs) and keep its lock
        file, but write nothing into the source: preview and check change
        nothing outside STATE_DIR."""
        from ..fileops import write_atomic

        run = self._runs.pop(ctx.meta_prefix, None)
        if ctx.remote:
            return  # its data dir was the worker's
        data = self._data_dir(ctx)
        lock = os.path.join(ctx.workdir, LOCK_FILE)
        write_atomic(os.path.join(data, STAMP_FILE),
                     json.dumps({"stamp": self._stamp((ctx.extra or {}).get("init", ""), lock)}).encode())
        if run is not None and run["init"] and os.path.isfile(lock):
            with open(lock, "rb") as fh:
                write_atomic(os.path.join(data, SAVED_LOCK), fh.read())

    def _setup(self, ctx: ActionContext) -> list[Invocation]:
        """init and workspace selection, when the data dir needs them."""
        tf = self._binary(ctx)
        # Colours only for a terminal (the log is stripped of them anyway).
        nc = () if ctx.color else ("-no-color",)
        run = self._runs.get(ctx.meta_prefix, {"init": True, "backend": self._backend(ctx)})
        steps = []
        if run["init"]:
            # A changed backend moves the state along (every workspace):
            # -reconfigure would start from none and create it all again.
            init = (tf, "init", "-input=false", *nc, "-migrate-state", "-force-copy")
            providers = (ctx.extra or {}).get("providers", None)
            backend = run["backend"]
            # Serialized per provider on the shared cache (a lock file each,
            # taken in sorted order, after the backend's: `_steps`); built-ins
            # only: no lock.
            locks = self._cache_locks(ctx, providers) if providers is None or providers else []
            steps.append(Invocation(self._holding(locks, init)))
            if backend is None or backend["type"] != "module":
                steps.append(Invocation((tf, "workspace", "select", "-or-create=true", *nc, ctx.target)))
        return steps

    def _steps(self, ctx: ActionContext, verb_steps: list[Invocation]) -> list[Invocation]:
        """init and workspace selection when needed, then the verb's own
        steps; on a `pg` backend each of them holds the database's lock."""
        steps = self._setup(ctx) + verb_steps
        backend = self._runs.get(ctx.meta_prefix, {}).get("backend") if ctx.meta_prefix in self._runs \
            else self._backend(ctx)
        server = self._backend_lock(ctx, backend)
        if not server:
            return steps
        return [Invocation(self._holding(server, s.argv), s.capture, s.log) for s in steps]

    @staticmethod
    def _holding(locks: list[str], argv: tuple) -> tuple:
        """`argv`, run holding `locks` (flockrun.py) when there are any."""
        return (sys.executable, "-S", "-E", _FLOCKRUN, *locks, "--", *argv) if locks else argv

    def _backend_lock(self, ctx: ActionContext, backend: dict | None) -> list[str]:
        """Terraform's `pg` backend creates its schema, table and the shared
        `public.global_states_id_seq` on first init, and takes a creation
        lock that is not per schema while a workspace is new, neither safe
        against another component's terraform on the same database
        (`duplicate key value violates unique constraint
        "pg_class_relname_nsp_index"`, `Already locked for workspace
        creation`, both seen at -j2): every terraform step of components on
        one database runs one at a time on this machine (on a Dask cluster:
        on the whole cluster, a Dask Lock, run/remote.py). Other backends
        keep each state apart."""
        if backend is None or backend["type"] != "pg":
            return []
        from ..graph.keys import secret_digest

        server = (backend.get("config") or {}).get("conn_str") or os.environ.get("PG_CONN_STR", "")
        name = secret_digest(str(server))["sha"][:32]
        if ctx.remote:  # workers of one cluster on one database: a lock of the cluster
            return [f"{CLUSTER_LOCK}pg-{name}"]
        return [os.path.join(ctx.state_dir, "terraform", "backend-locks", f"pg-{name}.lock")]

    def _cache_locks(self, ctx: ActionContext, providers) -> list[str]:
        """An init whose providers are known holds `all` shared and each of
        its providers exclusively; one whose providers are not known (a
        remote module may require any) holds `all` exclusively. Always in
        this order, so no two inits wait on each other in a cycle."""
        base = self._plugin_cache(ctx).rstrip("/") + ".locks"
        everything = os.path.join(base, "all.lock")
        if providers is None:
            return [everything]
        return ["sh:" + everything] + [os.path.join(base, _escape(p) + ".lock") for p in sorted(providers)]

    def outputs(self, ctx: ActionContext, captured: str | None) -> dict:
        raw = self._raw_outputs(captured)
        self._after_success(ctx)
        return _values(raw)

    @classmethod
    def _output_values(cls, stdout: bytes) -> dict | None:
        """The values `terraform output -json` printed; None if it is not JSON."""
        try:
            return _values(cls._raw_outputs(stdout.decode("utf-8", "replace")))
        except ValueError:
            return None

    @staticmethod
    def _raw_outputs(captured: str | None) -> dict:
        text = (captured or "").strip()
        if not text:
            return {}
        return parse_json_object(text, "what `terraform output -json` printed")

    def sensitive_outputs(self, ctx: ActionContext, captured: str | None) -> frozenset[str]:
        raw = self._raw_outputs(captured)
        marked = {name for name, item in raw.items() if isinstance(item, dict) and item.get("sensitive")}
        return frozenset(marked | set((ctx.extra or {}).get("sensitive_outputs", ())) & set(raw))

    def _after_success(self, ctx: ActionContext) -> None:
        """Every step succeeded: stamp the data dir with what init ran with,
        keep its lock file, and copy that into the source when it has none."""
        from ..fileops import write_atomic

        run = self._runs.pop(ctx.meta_prefix, None)
        lock = os.path.join(ctx.workdir, LOCK_FILE)
        if not ctx.remote:  # (on a worker the data dir was its own; the lock file came back)
            data = self._data_dir(ctx)
            stamp = self._stamp((ctx.extra or {}).get("init", ""), lock)
            write_atomic(os.path.join(data, STAMP_FILE), json.dumps({"stamp": stamp}).encode())
        if not os.path.isfile(lock):
            return
        with open(lock, "rb") as fh:
            content = fh.read()
        if run is not None and run["init"] and not ctx.remote:
            write_atomic(os.path.join(data, SAVED_LOCK), content)
        comp = ctx.component
        if comp is None or comp.source is None:
            return
        src_dir = ctx.root if comp.source == "." else os.path.join(ctx.root, *comp.source.split("/"))
        target = os.path.join(src_dir, LOCK_FILE)
        if os.path.lexists(target) or not os.path.isdir(src_dir):
            return
        # Create-if-absent, atomically: a private file, then a hard link
        # (which fails if another component of the same module got there first).
        tmp = os.path.join(src_dir, f".{LOCK_FILE}.atmos-{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(content)
            try:
                os.link(tmp, target)
            except FileExistsError:
                pass
        except OSError:
            pass  # a read-only source: the data dir keeps the lock file
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def source_additions(self, ctx: ActionContext) -> dict[str, list]:
        comp = ctx.component
        if comp is None or comp.source is None:
            return {}
        name = f"source:{LOCK_FILE}"
        if name in (ctx.ingredients.get("files") or {}):
            return {}
        src_dir = ctx.root if comp.source == "." else os.path.join(ctx.root, *comp.source.split("/"))
        path = os.path.join(src_dir, LOCK_FILE)
        try:
            st = os.lstat(path)
        except OSError:
            return {}
        import stat as stat_mod

        if not stat_mod.S_ISREG(st.st_mode):
            return {}
        from ..state.files import file_digest

        return {name: ["f", file_digest(path), bool(st.st_mode & 0o111)]}

    def _recover_from_backend(self, ctx: ActionContext) -> dict | None:
        """recover_outputs for a component that runs on Dask workers: no data
        dir here, so a throwaway one, `init` against the shared backend and
        `output -json` of the target's workspace, with a terraform of this
        machine (None without one, or on a backend that is not shared)."""
        import subprocess
        import tempfile

        backend = self._backend(ctx)
        if backend is None or backend["type"] in ("local", "module"):
            return None
        binary = resolve_binary(self._binary(ctx), ctx.root)
        if binary is None:
            return None
        with tempfile.TemporaryDirectory(prefix="atmos-tf-") as tmp:
            with open(os.path.join(tmp, "backend.tf.json"), "w", encoding="utf-8") as fh:
                json.dump(override_document(backend, ctx.state_dir, ctx.deployment, ctx.component_id), fh)
            env = dict(os.environ, TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1",
                       TF_DATA_DIR=os.path.join(tmp, ".tfdata"), TF_WORKSPACE=ctx.target)
            try:
                for argv in ((binary, "init", "-input=false", "-no-color"),
                             (binary, "output", "-json", "-no-color")):
                    proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True,
                                          stdin=subprocess.DEVNULL, timeout=300)
                    if proc.returncode != 0:
                        return None
            except (OSError, subprocess.TimeoutExpired):
                return None
        return self._output_values(proc.stdout)

    def recover_outputs(self, ctx: ActionContext) -> dict | None:
        """Run `terraform output -json` against the persisted data dir and
        the backend: the outputs with their values, sensitive ones included."""
        import subprocess
        import tempfile

        if ctx.remote:
            return self._recover_from_backend(ctx)
        data = self._data_dir(ctx)
        if not os.path.isdir(data):
            return None
        backend = self._backend(ctx)
        override = override_document(backend, ctx.state_dir, ctx.deployment, ctx.component_id)
        comp = ctx.component
        with tempfile.TemporaryDirectory(prefix="atmos-tf-") as tmp:
            if override is not None:
                with open(os.path.join(tmp, OVERRIDE_FILE), "w", encoding="utf-8") as fh:
                    json.dump(override, fh)
                cwd = tmp
            elif comp is not None and comp.source is not None:
                cwd = ctx.root if comp.source == "." else os.path.join(ctx.root, comp.source)
            else:
                return None
            env = dict(os.environ, TF_IN_AUTOMATION="1", TF_INPUT="0", TF_DATA_DIR=data,
                       CHECKPOINT_DISABLE="1")
            try:
                proc = subprocess.run([self._binary(ctx), "output", "-json", "-no-color"], cwd=cwd,
                                      env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
            except (OSError, subprocess.TimeoutExpired):
                return None
        if proc.returncode != 0:
            return None
        return self._output_values(proc.stdout)

