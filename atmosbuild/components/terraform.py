"""`terraform` (or OpenTofu via `toolchain.terraform: tofu`).

Each component keeps its `.terraform` data dir inside its own workspace
directory, so parallel components of one module never share it.
"""

from __future__ import annotations

import json
import os

from .base import APPLY, ActionContext, ComponentType, Invocation, parse_json_object, require_binary


class Terraform(ComponentType):
    name = "terraform"
    mode = APPLY
    version = "1"
    forbidden = ("run",)

    def _binary(self, ctx: ActionContext) -> str:
        return ctx.toolchain.get("terraform") or "terraform"

    def tfvars_path(self, ctx: ActionContext) -> str:
        return ctx.meta_prefix + ".tfvars.json"

    def prepare(self, ctx: ActionContext) -> None:
        require_binary(self._binary(ctx), "toolchain.terraform")
        path = self.tfvars_path(ctx)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(dict(ctx.vars), fh, indent=2, sort_keys=True)

    def extra_env(self, ctx: ActionContext) -> dict[str, str]:
        return {
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "TF_DATA_DIR": os.path.join(ctx.workdir, ".terraform"),
        }

    def invocations(self, ctx: ActionContext) -> list[Invocation]:
        tf = self._binary(ctx)
        return [
            Invocation((tf, "init", "-input=false")),
            Invocation((tf, "workspace", "select", "-or-create=true", ctx.target)),
            Invocation((tf, "apply", "-auto-approve", "-input=false",
                        f"-var-file={self.tfvars_path(ctx)}")),
            Invocation((tf, "output", "-json"), capture=True),
        ]

    def outputs(self, ctx: ActionContext, captured: str | None) -> dict:
        text = (captured or "").strip()
        if not text:
            return {}
        raw = parse_json_object(text, "what `terraform output -json` printed")
        return {name: (item.get("value") if isinstance(item, dict) else item)
                for name, item in raw.items()}
