"""What the body-based router decides for one request: which routing headers to set, which to drop.

The headers (all set with overwrite; the route cache is then cleared so HTTPRoutes re-match on them):

- ``X-Gateway-Model-Name``: the body's ``model``, verbatim (UTF-8 bytes for non-ASCII names).
- ``X-Gateway-Base-Model-Name``: the base model of a catalogued model (an adapter's base, or the model
  itself); only for models in the catalog, as GIE's router does for its ConfigMaps.
- ``X-Gateway-Engine``: the engine that must serve the request: the body's ``owned_by`` (the field
  ``/v1/models`` reports, e.g. ``vllm``/``sglang``), else the catalog's only engine for the model.

Any of the three a request does not get is removed, so a client cannot pick a route by sending the
header itself. Bodies are parsed with the picker's OpenAI parser, so a broken body gets the same 400 on
either component; an unknown model (when the catalog restricts) gets OpenAI's 404 ``model_not_found``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.bbr.catalog import CatalogError, ModelCatalog, ModelEntry, engine_name
from epp.request import RequestError
from epp.request.headers import MODEL_NAME_HEADER as MODEL_HEADER
from epp.request.parse import parse_request

BASE_MODEL_HEADER = "x-gateway-base-model-name"
ENGINE_HEADER = "x-gateway-engine"
ROUTING_HEADERS = (MODEL_HEADER, BASE_MODEL_HEADER, ENGINE_HEADER)

# Envoy refuses header values with control characters, and very long ones bloat every hop.
MAX_MODEL_BYTES = 1024


@dataclass(frozen=True, slots=True)
class RouteHeaders:
    """The header mutation for one request; ``model`` is kept for logs ("" when the body named none)."""

    set: dict[str, str] = field(default_factory=dict)
    model: str = ""

    @property
    def remove(self) -> tuple[str, ...]:
        return tuple(h for h in ROUTING_HEADERS if h not in self.set)


class BodyRouter:
    """Turns (headers, body) into ``RouteHeaders`` against the current catalog; ``update`` swaps the catalog."""

    def __init__(self, catalog: ModelCatalog | None = None) -> None:
        self.catalog = catalog or ModelCatalog()

    def update(self, catalog: ModelCatalog) -> None:
        self.catalog = catalog

    def route(self, request_id: str, headers: Mapping[str, str], body: bytes | None) -> RouteHeaders:
        """Raises ``RequestError``: 400 for an unusable body, 404 ``model_not_found`` for an unknown model."""
        if body is None:  # no body (GET /v1/models, health checks): nothing to route on
            return RouteHeaders()
        request = parse_request(request_id, headers, body)
        model = request.model
        if not model:  # a non-inference path whose body names no model
            return RouteHeaders()
        _check_header_safe(model)
        entry = self.catalog.get(model)
        if entry is None and self.catalog.restricts:
            raise RequestError(404, f"The model `{model}` does not exist.", code="model_not_found")
        out = {MODEL_HEADER: _header_text(model)}
        if entry is not None:
            out[BASE_MODEL_HEADER] = _header_text(entry.base_model)
        engine = _engine(model, request.owned_by, entry)
        if engine:
            out[ENGINE_HEADER] = engine
        return RouteHeaders(out, model)


def _engine(model: str, owned_by: str | None, entry: ModelEntry | None) -> str | None:
    engines = entry.engines if entry is not None else frozenset()
    if owned_by:
        try:
            wanted = engine_name(owned_by)
        except CatalogError as exc:
            raise RequestError(400, f"'owned_by': {exc}", code="invalid_owned_by") from None
        if engines and wanted not in engines:
            raise RequestError(
                404, f"The model `{model}` is not served by engine `{wanted}`.", code="model_not_found"
            )
        return wanted
    return next(iter(engines)) if len(engines) == 1 else None


def _check_header_safe(model: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in model):
        raise RequestError(400, "'model' must not contain control characters", code="invalid_model")
    if len(model.encode()) > MAX_MODEL_BYTES:
        raise RequestError(400, f"'model' is longer than {MAX_MODEL_BYTES} bytes", code="invalid_model")


def _header_text(value: str) -> str:
    """The value as the str whose latin-1 encoding (what ``messages`` sends) is the UTF-8 of ``value``."""
    return value.encode().decode("latin-1")
