"""llm-d's disaggregation configs (copied from upstream, source line at the top of each) load and put the
prefill and decode stages where upstream does."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config import load_scheduler
from epp.scheduling.plugins.profiles.disagg import DataParallelProfileHandler, DisaggProfileHandler

CONFIGS = sorted((Path(__file__).parent / "upstream_pd").glob("*.yaml"))


def test_the_copied_corpus_is_there() -> None:
    assert len(CONFIGS) == 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name.split("__")[-1])
def test_upstream_pd_config_loads(path: Path) -> None:
    scheduler = load_scheduler(path)
    handler = scheduler.handler
    assert isinstance(handler, (DisaggProfileHandler, DataParallelProfileHandler))
    if isinstance(handler, DisaggProfileHandler):
        assert handler.stages.decode in scheduler.profiles
        assert (handler.prefill_decider is None) == ("prefill" not in scheduler.profiles)
