"""Typed plugin parameters: a frozen dataclass per plugin, decoded strictly from a config mapping.

Keys are the reference's camelCase names (a field ``max_num_of_endpoints`` reads
``maxNumOfEndpoints``; ``field(metadata={"key": ...})`` overrides). An unknown key or a value of the
wrong type raises ``ParamError`` naming the key, so a config error points at the exact field.
Supported field types: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``Duration`` (seconds;
Go-style strings such as ``"200ms"``/``"1m30s"`` or a number of seconds), ``list[str]``, ``dict[str, str]``,
nested objects the plugin checks itself (``dict[str, Any]``, ``list[dict[str, Any]]``), ``Mapping[str, Any]``
(any mapping, for blobs accepted and not read), a nested parameters dataclass (decoded strictly, its errors
named by dotted path such as ``kvEventsConfig.zmqEndpoint``), and ``X | None``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, NewType, TypeVar

from epp._util.duration import parse_duration as go_duration

Duration = NewType("Duration", float)
"""Seconds, decoded from a Go duration string or a number."""

T = TypeVar("T")



class ParamError(ValueError):
    """A bad plugin parameter; ``key`` is its config name (empty for the parameters object itself)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def parse_duration(value: object) -> float:
    """Seconds from a number or a Go duration string (``"200ms"``, ``"1m30s"``); negative is an error."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 200ms or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            seconds = go_duration(value)
        except ValueError:
            raise ValueError(f"must be a duration such as 200ms or a number of seconds, got {value!r}") from None
    else:
        raise ValueError("must be a duration such as 200ms or a number of seconds")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _convert(value: object, kind: Any) -> object:
    """``value`` as ``kind`` or ValueError with the expectation in words."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _convert(value, members[0])
    if kind is Duration:
        return parse_duration(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    if typing.get_origin(kind) is list and typing.get_args(kind) == (str,):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of strings")
        return list(value)
    if typing.get_origin(kind) is dict and typing.get_args(kind) == (str, str):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ValueError("must be a mapping of strings to strings")
        return dict(value)
    if typing.get_origin(kind) is dict:  # a nested object the plugin validates field by field itself
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping")
        return dict(value)
    if typing.get_origin(kind) is list and typing.get_origin(typing.get_args(kind)[0]) is dict:
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise ValueError("must be a list of mappings")
        return [dict(v) for v in value]
    if typing.get_origin(kind) is Mapping:
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping")
        return value
    if dataclasses.is_dataclass(kind):
        return decode_params(kind, value)  # type: ignore[arg-type]
    raise TypeError(f"unsupported parameter type {kind!r}")  # a programming error, not a config error


def decode_params(spec: type[T], raw: Mapping[str, Any] | None) -> T:
    """Build ``spec`` (a dataclass whose fields all have defaults) from config ``parameters``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamError("", "parameters must be a mapping")
    hints = typing.get_type_hints(spec)
    by_key = {f.metadata.get("key", camel(f.name)): f for f in dataclasses.fields(spec)}  # type: ignore[arg-type]
    values: dict[str, object] = {}
    for key, value in raw.items():
        field = by_key.get(key)
        if field is None:
            known = ", ".join(sorted(by_key)) or "none"
            raise ParamError(str(key), f"unknown parameter (known: {known})")
        try:
            values[field.name] = _convert(value, hints[field.name])
        except ParamError as err:  # from a nested parameters object
            raise ParamError(f"{key}.{err.key}" if err.key else key, err.message) from None
        except ValueError as err:
            raise ParamError(key, str(err)) from None
    try:
        return spec(**values)
    except ValueError as err:  # __post_init__ range checks name their own key
        if isinstance(err, ParamError):
            raise
        raise ParamError("", str(err)) from None


@dataclasses.dataclass(frozen=True, slots=True)
class NoParams:
    """For plugins that take no parameters: any key is an error."""
