"""Prints the upstream-config corpus count at the end of a run that included the corpus test."""

from __future__ import annotations

import logging

import pytest

from tests.config.corpus import config_files, expectations, load_error


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    ran = any("test_upstream_corpus" in getattr(report, "nodeid", "")
              for reports in terminalreporter.stats.values() for report in reports)
    if not ran:
        return
    logging.disable(logging.WARNING)  # the configs' own deprecation warnings
    try:
        table = expectations()
        real = [p for p in config_files() if p.name not in table.placeholders]
        loaded = sum(load_error(p) is None for p in real)
    finally:
        logging.disable(logging.NOTSET)
    terminalreporter.write_line(f"upstream EndpointPickerConfigs: {loaded} / {len(real)} real configs load "
                                f"({len(table.placeholders)} placeholders not counted; bench/corpus.py lists the rest)")
