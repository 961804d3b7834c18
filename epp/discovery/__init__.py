"""Where endpoints come from: Kubernetes (InferencePool or a label selector), llm-d's endpoints file,
and static lists.

Discovery writes membership into the datastore (``upsert``/``remove``/``replace_all``/``mark_synced``)
and never imports scheduling. Kubernetes entry points live in ``epp.discovery.kube_setup``.
"""

from epp.discovery.endpoints_file import EndpointsFileError, load_endpoints, parse_endpoints
from epp.discovery.file import FILE_DISCOVERY, FileDiscovery

__all__ = ["FILE_DISCOVERY", "EndpointsFileError", "FileDiscovery", "load_endpoints", "parse_endpoints"]
