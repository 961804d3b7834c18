"""Endpoint attribute names that data-source extractors write (``Datastore.update_attributes``) and
scheduling plugins read: the one contract between ``epp.metrics.plugins`` and ``epp.scheduling``."""

from __future__ import annotations

from typing import Final

__all__ = ["KV_CACHE_ATTRIBUTE", "MODELS_ATTRIBUTE", "MODEL_IDS_ATTRIBUTE", "QUEUE_SIZE_ATTRIBUTE"]

MODELS_ATTRIBUTE: Final = "models"
"""``models-data-extractor``: the engine's ``/v1/models`` entries."""
MODEL_IDS_ATTRIBUTE: Final = "model_ids"
"""``models-data-extractor``: the ids of those entries, a frozenset."""
KV_CACHE_ATTRIBUTE: Final = "multicluster.kv_cache_utilization"
"""The multicluster metrics extractor: a remote cluster's KV-cache utilization."""
QUEUE_SIZE_ATTRIBUTE: Final = "multicluster.queue_size"
"""The multicluster metrics extractor: a remote cluster's queue size."""
