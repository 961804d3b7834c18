"""The upstream EndpointPickerConfig corpus (``data/upstream-epp-configs``, copied from ../shared with its
SOURCES.md and collected-index.json) and the table of configs epp does not load yet
(``data/corpus-expectations.yaml``); shared by the corpus tests and ``bench/corpus.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from epp.config import ConfigError, load_config_and_scheduler

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "upstream-epp-configs"
EXPECTATIONS = DATA / "corpus-expectations.yaml"


@dataclass(frozen=True)
class Expectations:
    placeholders: dict[str, str]  # file → why no picker can load it
    failures: dict[str, tuple[str, str]]  # real config file → (owner, reason)


def expectations() -> Expectations:
    table = yaml.safe_load(EXPECTATIONS.read_text(encoding="utf-8"))
    return Expectations(dict(table["placeholders"]),
                        {name: (owner, reason) for name, (owner, reason) in table["expected_failures"].items()})


def config_files() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


def load_error(path: Path) -> str | None:
    """None when epp loads the config as ``epp serve --config-file`` would (decode, plugins, profiles,
    parsers), else the one-line ``ConfigError``. Any other exception propagates: that is a bug."""
    try:
        load_config_and_scheduler(path)
    except ConfigError as err:
        return str(err)
    return None
