from __future__ import annotations

import random
from collections import Counter

import pytest

from epp.request import RequestError
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.plugins.scorers.active_request import ActiveRequestScorer
from epp.config.presets import build_preset
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler
from tests.conftest import make_request, make_state, make_states


class DropAll:
    typed_name = TypedName("drop-all", "drop-all")

    def filter(self, cycle, request, endpoints):  # type: ignore[no-untyped-def]
        return []


class Fixed:
    """A scorer returning given raw scores, to check clamping and weighting."""

    def __init__(self, values: list[float]) -> None:
        self.typed_name = TypedName("fixed", "fixed")
        self.values = values

    def score(self, cycle, request, endpoints):  # type: ignore[no-untyped-def]
        return self.values


def test_least_inflight_preset_picks_the_idle_endpoint() -> None:
    states = [make_state("a", inflight=3), make_state("b", inflight=0), make_state("c", inflight=1)]
    result = build_preset("least-inflight").schedule(make_request(), states)
    assert [e.name for e in result.endpoints] == ["b"]


def test_ties_are_broken_at_random_across_all_tied_endpoints() -> None:
    scheduler = Scheduler(
        {"default": SchedulerProfile("default", MaxScorePicker(rng=random.Random(7)), scorers=[WeightedScorer(ActiveRequestScorer())])},
        SingleProfileHandler(),
    )
    states = make_states(4)
    counts = Counter(scheduler.schedule(make_request(), states).endpoints[0].name for _ in range(400))
    assert set(counts) == {"e0", "e1", "e2", "e3"}
    assert min(counts.values()) > 60


def test_scores_are_clamped_then_weighted() -> None:
    profile = SchedulerProfile(
        "p", MaxScorePicker(max_num_of_endpoints=3),
        scorers=[WeightedScorer(Fixed([5.0, 0.5, -3.0]), 2.0), WeightedScorer(Fixed([0.0, 0.6, 1.0]), 1.0)],
    )
    result = profile.run(CycleState(), make_request(), make_states(3))
    assert result is not None
    assert result.scores == pytest.approx({"e0": 2.0, "e1": 1.6, "e2": 1.0})
    assert [e.name for e in result.endpoints] == ["e0", "e1", "e2"]


def test_no_candidates_is_503_and_all_filtered_is_429() -> None:
    with pytest.raises(RequestError) as empty:
        build_preset("least-inflight").schedule(make_request(), [])
    assert empty.value.status == 503 and empty.value.reason == "rejected-no-endpoints"

    scheduler = Scheduler({"p": SchedulerProfile("p", MaxScorePicker(), filters=[DropAll()])}, SingleProfileHandler())
    with pytest.raises(RequestError) as filtered:
        scheduler.schedule(make_request(), make_states(2))
    assert filtered.value.status == 429 and filtered.value.reason == "rejected-saturated"


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="least-inflight"):
        build_preset("nope")


def test_scheduler_hooks_come_from_the_built_plugins() -> None:
    from epp.datastore import Datastore
    from epp.scheduling.plugins.scorers.session_affinity import session_token
    from epp.config import load_scheduler_text

    scheduler = load_scheduler_text(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: session-affinity-scorer}, {type: prefix-cache-scorer}, {type: no-hit-lru-scorer}]\n"
    )
    assert {p.typed_name.type for p in scheduler.pre_request_plugins} == {"approx-prefix-cache-producer", "no-hit-lru-scorer"}
    states = make_states(2)
    assert scheduler.response_headers(make_request(), states[1]) == {"x-session-token": session_token(states[1])}
    store = Datastore()
    scheduler.attach(store)
    for s in states:
        store.upsert(s.endpoint)
    result = scheduler.schedule(make_request(prompt=b"z" * 256), states)
    picked = result.endpoints[0].name
    store.remove(picked)  # purged from the prefix index and the LRU
    lru = next(p for p in scheduler.plugins if p.typed_name.type == "no-hit-lru-scorer")
    assert picked not in lru._used  # type: ignore[attr-defined]


class Broken:
    """Every hook raises: the framework must contain it."""

    typed_name = TypedName("broken", "broken-1")

    def pre_request(self, cycle, request, result):  # type: ignore[no-untyped-def]
        raise RuntimeError("pre boom")

    def response_headers(self, request, endpoint):  # type: ignore[no-untyped-def]
        raise RuntimeError("headers boom")

    def response_started(self, request, endpoint):  # type: ignore[no-untyped-def]
        raise RuntimeError("started boom")

    def response_complete(self, request, endpoint, usage):  # type: ignore[no-untyped-def]
        raise RuntimeError("complete boom")


class Recording:
    typed_name = TypedName("recording", "recording")

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pre_request(self, cycle, request, result):  # type: ignore[no-untyped-def]
        self.calls.append("pre")

    def response_started(self, request, endpoint):  # type: ignore[no-untyped-def]
        self.calls.append("started")

    def response_complete(self, request, endpoint, usage):  # type: ignore[no-untyped-def]
        self.calls.append("complete")


def test_failing_hooks_are_contained_logged_once_with_the_plugin_name(caplog: pytest.LogCaptureFixture) -> None:
    after = Recording()
    scheduler = Scheduler(
        {"default": SchedulerProfile("default", MaxScorePicker(rng=random.Random(1)))}, SingleProfileHandler(),
        plugins=[Broken(), after],
    )
    state = make_state("a")
    with caplog.at_level("DEBUG", logger="epp.scheduling.scheduler"):
        for _ in range(2):
            result = scheduler.schedule(make_request(), [state])
            assert [e.name for e in result.endpoints] == ["a"]
            assert scheduler.response_headers(make_request(), state) == {}
            scheduler.response_started(make_request(), state)
            scheduler.response_complete(make_request(), state, {"prompt_tokens": 1})
    assert after.calls == ["pre", "started", "complete"] * 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage().split(" (")[0] for r in errors] == [
        "plugin broken-1/broken failed in PreRequest",
        "plugin broken-1/broken failed in ResponseHeaders",
        "plugin broken-1/broken failed in ResponseStarted",
        "plugin broken-1/broken failed in ResponseComplete",
    ]
    assert all(r.exc_info for r in errors)
    assert sum(r.levelname == "DEBUG" and "broken-1" in r.getMessage() for r in caplog.records) == 4
