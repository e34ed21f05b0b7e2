"""The registry of component types: the one place a new type is added."""

from __future__ import annotations

from .base import APPLY, BUILD, ComponentType
from .command import Command
from .nixpack import Nixpack
from .terraform import Terraform

TYPES: dict[str, ComponentType] = {t.name: t for t in (Command(), Terraform(), Nixpack())}

__all__ = ["APPLY", "BUILD", "ComponentType", "TYPES", "get_type"]


def get_type(name: str) -> ComponentType:
    return TYPES[name]
