"""Endpoint discovery: where the datastore's membership comes from."""

from epp.discovery.endpoints_file import EndpointsFileError, load_endpoints, parse_endpoints
from epp.discovery.file import FILE_DISCOVERY, FileDiscovery

__all__ = ["FILE_DISCOVERY", "EndpointsFileError", "FileDiscovery", "load_endpoints", "parse_endpoints"]
