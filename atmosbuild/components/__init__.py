"""The registry of component types: the one place a new type is added.

`TYPES` imports the type modules on first use, so what only passes the
registry along (loading settings, expanding a plain label: the no-op path)
or reads the modes imports nothing of terraform."""

from __future__ import annotations

from typing import Iterator, Mapping, MutableMapping

from .base import APPLY, BUILD, ComponentType


class _Registry(MutableMapping[str, ComponentType]):
    """Every component type, by name (mutable for tests: a type of their own
    is put in the place of one)."""

    def __init__(self) -> None:
        self._types: dict[str, ComponentType] | None = None

    def _all(self) -> dict[str, ComponentType]:
        if self._types is None:
            from .command import Command
            from .nixpack import Nixpack
            from .terraform import Terraform

            self._types = {t.name: t for t in (Command(), Terraform(), Nixpack())}
        return self._types

    def __getitem__(self, name: str) -> ComponentType:
        return self._all()[name]

    def __setitem__(self, name: str, ctype: ComponentType) -> None:
        self._all()[name] = ctype

    def __delitem__(self, name: str) -> None:
        del self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


TYPES: Mapping[str, ComponentType] = _Registry()

__all__ = ["APPLY", "BUILD", "ComponentType", "TYPES"]
