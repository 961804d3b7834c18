"""``model-availability-filter``: only endpoints that serve the requested model or LoRA adapter.

An endpoint qualifies when the target model is among the models it reports (its metrics' model labels,
and its ``/v1/models`` ids when a ``models-data-source`` is configured), or among its active or waiting
LoRA adapters. An endpoint that reports neither models nor LoRA data is kept:
no information is not evidence that it cannot serve. Nothing left → the scheduler answers 429
(all filtered), so a request for a model the pool does not serve fails fast instead of 404-ing on an
engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.contracts.attributes import MODEL_IDS_ATTRIBUTE
from epp.plugin.registry import PluginHandle

MODEL_AVAILABILITY_FILTER = "model-availability-filter"


def serves(state: EndpointState, model: str) -> bool:
    m = state.metrics
    listed: frozenset[str] = state.attributes.get(MODEL_IDS_ATTRIBUTE, frozenset())  # models-data-source
    if m is None:
        return not listed or model in listed
    models = m.models | listed
    if not models and m.max_lora is None and not m.active_loras and not m.waiting_loras:
        return True
    return model in models or model in m.active_loras or model in m.waiting_loras


class ModelAvailabilityFilter:
    def __init__(self, name: str = MODEL_AVAILABILITY_FILTER) -> None:
        self.typed_name = TypedName(MODEL_AVAILABILITY_FILTER, name)

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        model = request.target_model
        return [e for e in endpoints if serves(e, model)]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> ModelAvailabilityFilter:
    decode_params(NoParams, params)
    return ModelAvailabilityFilter(name)
