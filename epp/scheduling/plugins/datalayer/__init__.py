"""Data-layer plugins that serve scheduling directly: the topology extractor and the peer-topology rules
its consumers share. HTTP data sources and their extractors live in ``epp.metrics.plugins``."""
