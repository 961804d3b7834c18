"""``models-data-source`` and ``models-data-extractor`` (llm-d ``datalayer/source/models``,
``extractor/models``): the models each engine serves, from its OpenAI ``/v1/models``.

The source fetches ``<scheme>://<endpoint>/v1/models`` (``path``, ``insecureSkipVerify`` default true,
``caCertPath``, ``clientCertPath``/``clientKeyPath`` for mTLS, ``interval``). The extractor stores the
``data`` entries as the ``models`` attribute (a tuple of ``{id, parent, root}`` mappings as the engine
reported them) and their ids as ``model_ids``. A body that is not a models list is an error for that
scrape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from epp.contracts.attributes import MODEL_IDS_ATTRIBUTE, MODELS_ATTRIBUTE
from epp.datastore import Endpoint
from epp.plugin.typed_name import TypedName
from epp.plugin.params import NoParams, decode_params
from epp.metrics.http_source import HttpSourceParams, SourcePlugin
from epp.plugin.registry import PluginHandle

MODELS_DATA_SOURCE = "models-data-source"
MODELS_DATA_EXTRACTOR = "models-data-extractor"


class ModelsExtractor:
    def __init__(self, name: str = MODELS_DATA_EXTRACTOR) -> None:
        self.typed_name = TypedName(MODELS_DATA_EXTRACTOR, name)

    def extract(self, endpoint: Endpoint, body: str) -> Mapping[str, Any]:
        try:
            doc = json.loads(body)
        except json.JSONDecodeError as err:
            raise ValueError(f"/v1/models answer is not JSON: {err}") from None
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise ValueError("/v1/models answer has no data list of models with ids")
        models = tuple({k: m.get(k) for k in ("id", "parent", "root") if m.get(k) is not None} for m in data)
        return {MODELS_ATTRIBUTE: models, MODEL_IDS_ATTRIBUTE: frozenset(m["id"] for m in models)}


def source_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> SourcePlugin:
    raw = {"path": "/v1/models", **params}
    return SourcePlugin(TypedName(MODELS_DATA_SOURCE, name), decode_params(HttpSourceParams, raw), MODELS_DATA_EXTRACTOR)


def extractor_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> ModelsExtractor:
    decode_params(NoParams, params)
    return ModelsExtractor(name)
