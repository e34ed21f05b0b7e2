"""`command`: runs `run` (argv list as is; a string under `sh -c`)."""

from __future__ import annotations

from ..config.values import as_text
from .base import APPLY, ActionContext, ComponentType, Invocation


class Command(ComponentType):
    name = "command"
    mode = APPLY
    version = "1"
    required = ("run",)
    forbidden = ("backend",)

    def invocations(self, ctx: ActionContext) -> list[Invocation]:
        if isinstance(ctx.run, str):
            return [Invocation(("sh", "-c", ctx.run))]
        return [Invocation(tuple(as_text(a) for a in ctx.run))]

    # SPEC 10: `preview:` and `destroy:` are optional argv of their own; the
    # rollout renders the verb's argv into ctx.run.
    def has_preview(self, comp) -> bool:
        return getattr(comp, "preview", None) is not None

    def preview_invocations(self, ctx: ActionContext) -> list[Invocation]:
        return self.invocations(ctx)

    def has_destroy(self, comp) -> bool:
        return getattr(comp, "destroy", None) is not None

    def destroy_invocations(self, ctx: ActionContext) -> list[Invocation]:
        return self.invocations(ctx)
