"""Plugin types by name: the one table configs are built from.

A ``PluginRegistry`` is an ordinary object built at start-up (``epp.config.plugins.builtin_registry()``); nothing
registers itself at import time and there is no global map. A factory takes the instance name, the
raw ``parameters`` mapping from the config and a ``PluginHandle``, decodes its parameters strictly
(``epp.plugin.params``) and returns the plugin.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp._util.clock import Clock, WallClock
from epp.contracts.datalayer import DataNeeds
from epp.plugin.typed_name import Plugin

Factory = Callable[[str, Mapping[str, Any], "PluginHandle"], Plugin]


@dataclass(slots=True)
class PluginHandle:
    """What a factory may use besides its parameters: injected time and randomness, the plugins
    built so far (so a scorer can find the data producer it reads from, or create it), and the record
    of data-layer feeds (``needs``) through which a plugin gets engine data without owning any I/O."""

    clock: Clock = field(default_factory=WallClock)
    rng: random.Random = field(default_factory=random.Random)
    plugins: dict[str, Plugin] = field(default_factory=dict)
    reserved: frozenset[str] = frozenset()  # names the config declares, not all built yet
    needs: DataNeeds = field(default_factory=DataNeeds)
    """Feeds the plugins ask the data layer for (KV events, replication): recorded, never opened here."""

    def child_rng(self) -> random.Random:
        """An independent generator per plugin, derived from the handle's seed: runs are reproducible
        and one plugin's draws never shift another's."""
        return random.Random(self.rng.getrandbits(64))

    def by_type(self, plugin_type: str) -> Plugin | None:
        """The first plugin built of that type, if any."""
        for plugin in self.plugins.values():
            if plugin.typed_name.type == plugin_type:
                return plugin
        return None

    def available(self, name: str) -> bool:
        """Whether a plugin a factory creates on its own may take ``name``."""
        return name not in self.plugins and name not in self.reserved

    def add(self, plugin: Plugin) -> None:
        name = plugin.typed_name.name
        if name in self.plugins:
            raise ValueError(f"duplicate plugin name {name!r}")
        self.plugins[name] = plugin


@dataclass(frozen=True, slots=True)
class PluginType:
    """A registry row. ``producer`` types are built before the others, so consumers declared earlier
    in a config still find them. ``alpha`` types (upstream's alpha stability level) load only with
    ``--allow-experimental-plugins``, as upstream's loader demands."""

    name: str
    factory: Factory
    producer: bool = False
    alpha: bool = False


class PluginRegistry:
    """Plugin type name → factory."""

    def __init__(self, types: Iterable[PluginType]) -> None:
        self._types: dict[str, PluginType] = {}
        for t in types:
            if t.name in self._types:
                raise ValueError(f"plugin type {t.name!r} registered twice")
            self._types[t.name] = t

    def __contains__(self, plugin_type: str) -> bool:
        return plugin_type in self._types

    def names(self) -> list[str]:
        return sorted(self._types)

    def get(self, plugin_type: str) -> PluginType:
        try:
            return self._types[plugin_type]
        except KeyError:
            raise ValueError(f"unknown plugin type {plugin_type!r} (known: {', '.join(self.names())})") from None

    def build(self, plugin_type: str, name: str, params: Mapping[str, Any] | None, handle: PluginHandle) -> Plugin:
        """Build one plugin and add it to ``handle``; parameter errors propagate as ``ParamError``."""
        plugin = self.get(plugin_type).factory(name, params or {}, handle)
        handle.add(plugin)
        return plugin

