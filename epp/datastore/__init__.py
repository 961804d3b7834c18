"""The data layer the scheduler reads: endpoints, their latest engine metrics, and epp's own in-flight load.

Discovery writes endpoints, the metrics poller writes snapshots, the director counts in-flight work;
scheduling only reads.
"""

from epp.datastore.endpoint import Endpoint, EndpointMetrics, EndpointState
from epp.datastore.health import HealthParams, HealthState
from epp.datastore.store import Datastore, DatastoreListener

__all__ = ["Datastore", "DatastoreListener", "Endpoint", "EndpointMetrics", "EndpointState", "HealthParams", "HealthState"]
