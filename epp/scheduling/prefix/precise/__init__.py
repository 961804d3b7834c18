"""The precise prefix index: exactly the blocks engines report in their KV-cache events, with a
per-endpoint fallback to an approximate index whenever an endpoint's event feed cannot be trusted.

* ``index`` — ``PreciseIndex``: ingesting event batches, per-endpoint feed trust (``FeedState``),
  matching a prompt's keys against the views and the fallback;
* ``keys`` — how engine-reported blocks are keyed so they agree with epp's prompt hashes;
* ``agreement`` — the probes that show, per prompt kind, that they do agree;
* ``view`` — one endpoint's view of its engine's cache.

The vocabulary (event records, ``FeedState``, ``KeyAgreement``, prompt kinds) is shared with the data
layer that feeds and exports this index: ``epp.contracts.kv_events``.
"""

from epp.scheduling.prefix.precise.index import PreciseIndex

__all__ = ["PreciseIndex"]
