"""Module-level tables are shared by every caller in the process: nobody may change them."""

from __future__ import annotations

import pytest


def test_module_tables_are_read_only() -> None:
    from epp.discovery.kubernetes import POOL_VERSIONS
    from epp.envoy.config import ACCESS_LOG_FIELDS
    from epp.config.presets import PRESETS
    from epp.telemetry.metrics import ERROR_CODES

    for table in (POOL_VERSIONS, ACCESS_LOG_FIELDS, PRESETS, ERROR_CODES):
        with pytest.raises(TypeError):
            table["x"] = "y"  # type: ignore[index]
