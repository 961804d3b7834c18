"""``epp replay``: score routing policies on request traces.

Offline mode drives N pure engine cores and the real scheduler in virtual time; every layer the
scheduler reads (datastore, metrics snapshots, in-flight counters) is the production code, so what a
policy does here is what it does behind Envoy.
"""
