"""Static checks of an EndpointPickerConfig document (GIE / llm-d format).

The picker decodes its config strictly, so a typo in a key or a dangling plugin reference
only shows up when the pod starts. These checks catch that at render time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

API_VERSIONS = frozenset({"llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1"})
KIND = "EndpointPickerConfig"
TOP_LEVEL_KEYS = frozenset(
    {"apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "dataLayer", "flowControl", "requestHandler", "saturationDetector"}
)


def check_endpoint_picker_config(text: str) -> Iterator[str]:
    """Problems in one config file's text; nothing yielded means it would load."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as error:
        yield f"not valid YAML: {error}"
        return
    if not isinstance(doc, dict):
        yield "not a mapping"
        return
    if doc.get("apiVersion") not in API_VERSIONS:
        yield f"apiVersion {doc.get('apiVersion')!r} is not one of {sorted(API_VERSIONS)}"
    if doc.get("kind") != KIND:
        yield f"kind {doc.get('kind')!r} is not {KIND}"
    for key in sorted(doc.keys() - TOP_LEVEL_KEYS):
        yield f"unknown field {key!r}"
    names: list[str] = []
    for index, plugin in enumerate(doc.get("plugins") or []):
        if not isinstance(plugin, dict) or not plugin.get("type"):
            yield f"plugins[{index}] has no type"
            continue
        names.append(str(plugin.get("name") or plugin["type"]))
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield f"plugin name {name!r} is defined more than once"
    yield from _check_profiles(doc.get("schedulingProfiles") or [], set(names))


def _check_profiles(profiles: list[Any], plugin_names: set[str]) -> Iterator[str]:
    if not profiles:
        yield "no schedulingProfiles"
    for index, profile in enumerate(profiles):
        if not isinstance(profile, dict) or not profile.get("name"):
            yield f"schedulingProfiles[{index}] has no name"
            continue
        for ref in profile.get("plugins") or []:
            target = ref.get("pluginRef") if isinstance(ref, dict) else None
            if target not in plugin_names:
                yield f"profile {profile['name']!r} refers to undefined plugin {target!r}"
            weight = ref.get("weight") if isinstance(ref, dict) else None
            if weight is not None and (not isinstance(weight, (int, float)) or weight < 0):
                yield f"profile {profile['name']!r}: weight of {target!r} must be a non-negative number"
