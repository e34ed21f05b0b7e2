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
