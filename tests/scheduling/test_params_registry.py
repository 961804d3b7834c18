"""Typed plugin parameters and the registry."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from epp.plugin.params import Duration, ParamError, decode_params, parse_duration
from epp.scheduling.plugins.scorers.queue import QueueScorer
from epp.plugin.registry import PluginHandle, PluginRegistry, PluginType
from epp.config.plugins import builtin_registry


@dataclass(frozen=True)
class Sample:
    max_num_of_endpoints: int = 1
    weight: float = 1.0
    enabled: bool = True
    label: str | None = None
    names: list[str] = field(default_factory=list)
    timeout: Duration = Duration(0.2)
    odd_name: int = field(default=0, metadata={"key": "ODD"})


def test_decodes_camel_case_keys_into_typed_fields() -> None:
    p = decode_params(Sample, {"maxNumOfEndpoints": 3, "weight": 2, "enabled": False, "label": "x", "names": ["a"], "timeout": "1m30s", "ODD": 4})
    assert p == Sample(3, 2.0, False, "x", ["a"], Duration(90.0), 4)
    assert decode_params(Sample, None) == Sample()


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"maxNumOfEndpoint": 2}, "maxNumOfEndpoint", "unknown parameter"),
        ({"maxNumOfEndpoints": True}, "maxNumOfEndpoints", "integer"),
        ({"maxNumOfEndpoints": 2.5}, "maxNumOfEndpoints", "integer"),
        ({"weight": "heavy"}, "weight", "number"),
        ({"enabled": "yes"}, "enabled", "true or false"),
        ({"names": "a"}, "names", "list of strings"),
        ({"timeout": "5 parsecs"}, "timeout", "duration"),
        ({"timeout": -1}, "timeout", "negative"),
    ],
)
def test_bad_parameters_name_the_key(raw: dict, key: str, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ParamError) as err:
        decode_params(Sample, raw)
    assert err.value.key == key and message in err.value.message


@pytest.mark.parametrize(("text", "seconds"), [("200ms", 0.2), ("2s", 2.0), ("1h", 3600.0), ("1.5m", 90.0), ("0", 0.0), (3, 3.0), ("10us", 1e-5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_registry_is_one_explicit_table() -> None:
    registry = builtin_registry()
    assert {
        "queue-scorer", "running-requests-size-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer",
        "approx-prefix-cache-producer", "load-aware-scorer", "active-request-scorer", "token-load-scorer",
        "lora-affinity-scorer", "session-affinity-scorer", "no-hit-lru-scorer", "model-availability-filter",
        "owned-by-filter", "prefill-filter", "decode-filter", "header-based-testing-filter", "max-score-picker",
        "random-picker", "weighted-random-picker", "single-profile-handler", "utilization-detector",
    } <= set(registry.names())
    assert builtin_registry() is not registry  # built on demand, nothing global
    with pytest.raises(ValueError, match="registered twice"):
        PluginRegistry([PluginType("x", lambda n, p, h: QueueScorer(n)), PluginType("x", lambda n, p, h: QueueScorer(n))])
    with pytest.raises(ValueError, match="unknown plugin type 'nope'"):
        registry.get("nope")


def test_build_adds_to_the_handle_and_names_are_unique() -> None:
    handle = PluginHandle()
    registry = builtin_registry()
    plugin = registry.build("queue-scorer", "q", None, handle)
    assert handle.plugins == {"q": plugin} and handle.by_type("queue-scorer") is plugin
    with pytest.raises(ValueError, match="duplicate plugin name 'q'"):
        registry.build("queue-scorer", "q", {}, handle)
