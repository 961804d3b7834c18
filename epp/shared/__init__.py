"""State shared by active-active picker replicas (pods, ``--workers``) so N of them route like one.

Plugins that keep per-replica state worth sharing (the TTFT scorer's in-flight ledger) implement
``SharesState``: ``export_shared`` returns what this replica knows of its own (JSON-ready), and
``import_shared`` takes the other replicas' latest exports with their ages. Plugins stay pure: the
exchange runs outside the scheduling path, in ``RedisSharedState`` (``epp serve --shared-state-url``,
Redis/Valkey, a background task every ``--shared-state-period``) or ``VirtualExchange`` (``epp replay
--shared-state``, the same payloads in virtual time, deterministic).
"""

from epp.shared.protocol import PeerExport, SharesEvents, SharesState, participants
from epp.shared.virtual import VirtualExchange

__all__ = ["PeerExport", "SharesEvents", "SharesState", "VirtualExchange", "participants"]
# ``RedisSharedState`` lives in ``epp.shared.redis_state`` (imported by ``epp serve`` only: it loads redis).
