"""The base contract of every plugin: one property naming its type and instance (GIE's
``interface/plugin/plugins.go`` and ``typedname.go``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Plugin", "TypedName"]


@dataclass(frozen=True, slots=True)
class TypedName:
    """A plugin's type (its registry key, e.g. ``queue-scorer``) and instance name (defaults to the type)."""

    type: str
    name: str

    def __str__(self) -> str:
        return self.name if self.name == self.type else f"{self.name}/{self.type}"


@runtime_checkable
class Plugin(Protocol):
    @property
    def typed_name(self) -> TypedName: ...
