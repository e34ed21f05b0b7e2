"""`nixpack`: builds an image with nixpacks. Build mode: the image is a pure
function of its inputs, so any earlier build with the same key is reused."""

from __future__ import annotations

from .base import BUILD, ActionContext, ComponentType, Invocation, require_binary


class Nixpack(ComponentType):
    name = "nixpack"
    mode = BUILD
    version = "1"
    forbidden = ("run", "backend", "preview", "destroy")
    # nixpacks reads only the image name from vars, so deployment- and
    # target-wide vars (replicas, cpu) must not split the build cache between
    # targets: prod reuses the image built for dev when the source is the same.
    key_vars = ("image",)

    def image(self, ctx: ActionContext) -> str:
        image = ctx.vars.get("image")
        name = image.get("name") if isinstance(image, dict) else None
        return f"{name or ctx.name}:{ctx.key[:12]}"

    def _binary(self, ctx: ActionContext) -> str:
        return ctx.toolchain.get("nixpacks") or "nixpacks"

    def prepare(self, ctx: ActionContext) -> None:
        if not ctx.remote:  # (a Dask worker checks its own: run/remote.py)
            require_binary(self._binary(ctx), "toolchain.nixpacks")

    def invocations(self, ctx: ActionContext) -> list[Invocation]:
        return [Invocation((self._binary(ctx), "build", ".", "--name", self.image(ctx)))]

    def outputs(self, ctx: ActionContext, captured: str | None) -> dict:
        return {"image": self.image(ctx), "tag": ctx.key[:12]}
