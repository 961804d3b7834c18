"""Data-layer plugins: what a config declares about data sources other than the engine's ``/metrics``
(where to fetch, how often) and the pure extractors that turn a fetched page into endpoint attributes.
The fetching itself lives in ``epp.metrics.sources``, started by the composition root."""
