"""EndpointPickerConfig: the reference's YAML format, decoded strictly and built into a ``Scheduler``.

``load_scheduler(source)`` accepts a preset name (``gie-default``, ``least-queue`` …, see
``epp.config.presets``) or a path to a YAML file; ``load_scheduler_text`` takes YAML text (for
``--config-text``). ``load_config``/``parse_config_text`` stop at the typed config, for the parts that
own ``dataLayer``, ``flowControl`` and ``requestHandler``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

from epp._util.clock import Clock
from epp.config.build import EXTERNAL_PLUGIN_TYPES, build_scheduler, plugin_specs, request_parsers
from epp.config.decode import ConfigError, decode_config, parse_config_text
from epp.config.model import EndpointPickerConfig
from epp.config.presets import PRESETS
from epp.scheduling.scheduler import Scheduler

__all__ = [
    "EXTERNAL_PLUGIN_TYPES",
    "ConfigError",
    "EndpointPickerConfig",
    "build_scheduler",
    "decode_config",
    "load_config",
    "load_config_and_scheduler",
    "load_scheduler",
    "load_scheduler_text",
    "parse_config_text",
    "plugin_specs",
    "request_parsers",
]


def load_config(source: str | Path) -> EndpointPickerConfig:
    """A preset name or a YAML file path → the typed config (``ConfigError`` if neither works)."""
    if isinstance(source, str) and source in PRESETS:
        return parse_config_text(PRESETS[source])
    path = Path(source)
    if not path.is_file():
        raise ConfigError("", f"{str(source)!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("", f"cannot read {path}: {err}") from None
    with _located(path):
        return parse_config_text(text)


def load_scheduler(source: str | Path, *, clock: Clock | None = None, rng: random.Random | None = None) -> Scheduler:
    """A preset name or YAML file path → ``Scheduler``."""
    return load_config_and_scheduler(source, clock=clock, rng=rng)[1]


def load_config_and_scheduler(
    source: str | Path, *, clock: Clock | None = None, rng: random.Random | None = None, allow_experimental: bool = True,
) -> tuple[EndpointPickerConfig, Scheduler]:
    """Both, for callers that also own other config sections (``epp serve``'s discovery)."""
    config = load_config(source)
    with _located(None if isinstance(source, str) and source in PRESETS else Path(source)):
        scheduler = build_scheduler(config, clock=clock, rng=rng, allow_experimental=allow_experimental)
        request_parsers(config, scheduler)  # a wrong requestHandler.parsers ref fails here, with the file name
        return config, scheduler


def load_scheduler_text(text: str, *, clock: Clock | None = None, rng: random.Random | None = None) -> Scheduler:
    """EndpointPickerConfig YAML text → ``Scheduler``."""
    return build_scheduler(parse_config_text(text), clock=clock, rng=rng)


@contextlib.contextmanager
def _located(path: Path | None) -> Iterator[None]:
    """Append the file name to config errors raised inside."""
    try:
        yield
    except ConfigError as err:
        if path is None:
            raise
        raise ConfigError(err.path, f"{err.message} (in {path})") from None
