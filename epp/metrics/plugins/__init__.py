"""Data-source plugins other than the engines' ``/metrics``: what a config declares about an HTTP source
(where to fetch, how often; ``dcgm-data-source``, ``models-data-source``, the multicluster metrics
source) and the pure extractors that turn a fetched page into endpoint attributes. The fetching lives
in ``epp.metrics.sources``, started by the composition root; scheduling plugins read the attributes by
the names in ``epp.contracts.attributes``."""
