"""``epp serve``'s shared-state flags and the ``RedisSharedState`` they build (the composition root
starts it after the plugins, so it never runs without them)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from epp._util.cli import duration
from epp._util.clock import Clock
from epp.shared.protocol import DEFAULT_PERIOD, DEFAULT_TTL, participants

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from epp.shared.redis_state import RedisSharedState


def add_shared_state_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("shared state between active-active replicas (docs/active-active.md)")
    g.add_argument("--shared-state-url", default="", metavar="redis://HOST:PORT/DB",
                   help="Redis/Valkey through which replicas (pods and --workers) share their in-flight load and "
                        "learned latency per endpoint, so N replicas predict like one; unset: each replica routes on its own state")
    g.add_argument("--shared-state-period", type=duration, default=DEFAULT_PERIOD, metavar="DURATION",
                   help=f"how often a replica publishes its state and reads the others' (one pipelined round "
                        f"trip; default {DEFAULT_PERIOD * 1000:g}ms)")
    g.add_argument("--shared-state-ttl", type=duration, default=DEFAULT_TTL, metavar="DURATION",
                   help=f"a replica's state expires this long after its last update (a dead replica drops out; "
                        f"default {DEFAULT_TTL:g}s)")
    g.add_argument("--shared-state-key-prefix", default="", metavar="PREFIX",
                   help="Redis key prefix (default epp:shared:<pool name>): replicas share state with those "
                        "using the same prefix")


@dataclass(frozen=True, slots=True)
class SharedStateConfig:
    """``--shared-state-*`` checked: ``url`` empty means each replica routes on its own state."""

    url: str = ""
    period: float = DEFAULT_PERIOD
    ttl: float = DEFAULT_TTL
    key_prefix: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace, pool_name: str) -> SharedStateConfig:
        """The section of ``epp serve``'s parsed flags; ValueError names a bad flag."""
        url: str = args.shared_state_url
        if not url:
            return cls()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--shared-state-url {url!r}: expected redis://, rediss:// or unix://")
        period: float = args.shared_state_period
        ttl: float = args.shared_state_ttl
        if period <= 0 or ttl <= 2 * period:
            raise ValueError("--shared-state-period must be positive and --shared-state-ttl more than twice as long")
        prefix = args.shared_state_key_prefix or f"epp:shared:{pool_name or 'default'}"
        return cls(url=url, period=period, ttl=ttl, key_prefix=prefix)


def shared_state(
    config: SharedStateConfig, plugins: Iterable[object], clock: Clock, registry: CollectorRegistry
) -> RedisSharedState | None:
    """The exchange ``config`` asks for (None without a URL)."""
    if not config.url:
        return None
    from epp.shared.redis_state import RedisSharedState

    return RedisSharedState(config.url, participants(plugins), clock, prefix=config.key_prefix, period=config.period,
                            ttl=config.ttl, registry=registry)
