"""Picker replicas in offline replay: requests dealt in turn, per-replica bookkeeping, shared views."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import pytest

from epp._util.clock import VirtualClock
from epp.cli import main
from epp.datastore import EndpointState
from epp.contracts.datalayer import DataNeeds, KVEventFeed
from epp.contracts.kv_events import KVEvent, SeqCheck
from epp.replay.offline import ClusterSpec, OfflineReplay
from epp.replay.policies import resolve
from epp.replay.replicas import Replicas
from epp.replay.traces import SegmentPrompt, TraceRequest
from epp.request import LLMRequest
from epp.scheduling import CycleState, SchedulerProfile
from epp.plugin.typed_name import TypedName
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.profile import WeightedScorer
from epp.scheduling.scheduler import Scheduler

SMALL = ["--synthetic", "shared-prefix", "--sp-groups", "3", "--sp-prompts-per-group", "4", "--sp-system-len", "512",
         "--sp-question-len", "32", "--sp-output-len", "8", "--sp-rate", "20", "--engines", "2", "--jobs", "1"]


def unique(n: int, gap: float, output: int = 8) -> list[TraceRequest]:
    return [TraceRequest(i * gap, SegmentPrompt(((1_000_000 + i * 256, 256),)), output) for i in range(n)]


def run(trace: list[TraceRequest], policy: str, replicas: Replicas, engines: int) -> tuple[OfflineReplay, str]:
    clock = VirtualClock()
    schedulers, view = replicas.build(resolve(policy), clock, 0)
    driver = OfflineReplay(trace, schedulers, ClusterSpec(engines=engines), clock)
    driver.run()
    return driver, view


def test_replicas_take_requests_in_turn() -> None:
    """Each round-robin replica keeps its own turn: two replicas over two engines send pairs."""
    one, _ = run(unique(8, 1.0), "round-robin", Replicas(1), 2)
    two, _ = run(unique(8, 1.0), "round-robin", Replicas(2), 2)
    assert [r.engine for r in one.records] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert [r.engine for r in two.records] == [0, 0, 1, 1, 0, 0, 1, 1]


class SeenInflight:
    """A scorer recording the in-flight requests its scheduler's datastore showed at each pick."""

    typed_name = TypedName("seen-inflight", "seen-inflight")

    def __init__(self) -> None:
        self.seen: list[int] = []

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> Sequence[float]:
        self.seen.append(sum(e.inflight_requests for e in endpoints))
        return [1.0] * len(endpoints)


def test_each_replica_counts_only_its_own_requests_in_flight() -> None:
    recorders = [SeenInflight(), SeenInflight()]
    schedulers = [
        Scheduler({"p": SchedulerProfile("p", MaxScorePicker(), scorers=[WeightedScorer(r)])}, SingleProfileHandler())
        for r in recorders
    ]
    burst = unique(6, 0.0, output=64)  # all in flight together
    driver = OfflineReplay(burst, schedulers, ClusterSpec(engines=2), VirtualClock())
    run_result = driver.run()
    assert all(r.finish is not None for r in run_result.records)
    assert recorders[0].seen == recorders[1].seen == [0, 1, 2]
    # finishes went to the replica that picked: every counter is back to zero, none negative
    for datastore in driver.datastores:
        assert all(s.inflight_requests == 0 and s.inflight_tokens == 0 for s in datastore.endpoints())


def test_a_shared_prefix_view_finds_what_the_other_replica_placed() -> None:
    """Each prompt comes twice: first to replica 0, then to replica 1. Only a shared view lets
    replica 1 find it; its own view sees a new prompt and breaks the tie at random."""
    prompts = 8
    trace = [
        TraceRequest(float(i), SegmentPrompt(((10_000 * (i // 2), 1024),)), 4) for i in range(2 * prompts)
    ]
    own, own_view = run(trace, "gie-default", Replicas(2), 4)
    shared, shared_view = run(trace, "gie-default", Replicas(2, shared_prefix_view=True), 4)
    assert (own_view, shared_view) == ("own", "shared")
    repeats = [r.cached_tokens for r in shared.records[1::2]]
    assert repeats == [1024 - 16] * prompts
    assert sum(1 for r in own.records[1::2] if r.cached_tokens) < prompts


def test_a_policy_without_a_prefix_index_reports_its_view_as_own() -> None:
    _, view = run(unique(4, 0.1), "least-inflight", Replicas(2, shared_prefix_view=True), 2)
    assert view == "own"


@pytest.mark.parametrize(("count", "shared", "message"), [
    (0, False, "--replicas must be at least 1"),
    (1, True, "--shared-prefix-view needs --replicas 2 or more"),
])  # fmt: skip
def test_bad_replica_specs_are_refused(count: int, shared: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Replicas(count, shared)


class RecordingSink:
    """A KV-event sink (what the precise producer asks the data layer to feed) that records when batches arrive."""

    typed_name = TypedName("recording-sink", "recording-sink")

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.batches: list[tuple[float, str, int, str | None]] = []

    def ingest(self, endpoint: str, seq: int, events: Iterable[KVEvent], model: str | None) -> SeqCheck:
        self.batches.append((self.clock.now(), endpoint, seq, model))
        return SeqCheck.IN_ORDER

    def set_connected(self, endpoint: str, connected: bool) -> None: ...

    def lost(self, endpoint: str) -> None: ...


def test_events_arrive_when_the_engine_step_ends_with_dense_sequence_numbers() -> None:
    clock = VirtualClock()
    sink = RecordingSink(clock)
    profile = SchedulerProfile("p", MaxScorePicker())
    needs = DataNeeds(kv_event_feeds=[KVEventFeed(sink)])  # type: ignore[arg-type]  # a sink, no trust states
    schedulers = [Scheduler({"p": profile}, SingleProfileHandler(), plugins=[sink], data_needs=needs) for _ in range(2)]
    cluster = ClusterSpec(engines=1)
    driver = OfflineReplay(unique(3, 1.0, output=40), schedulers, cluster, clock)
    result = driver.run()
    assert driver.engines[0].config.enable_kv_events
    assert result.kv_event_batches == len(sink.batches) > 0  # one sink behind both replicas: fed once
    assert [seq for _, _, seq, _ in sink.batches] == list(range(len(sink.batches)))
    assert {(endpoint, model) for _, endpoint, _, model in sink.batches} == {("engine-0", cluster.engine.model)}
    # the prefill's blocks are published when the prefill step ends: at the first token, not before
    first_token = result.records[0].first_token
    assert first_token is not None and sink.batches[0][0] == first_token


def test_cli_reports_replicas_and_view(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["replay", *SMALL, "--policy", "gie-default", "--replicas", "2", "--shared-prefix-view", "--json"]
    assert main(argv) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert (summary["replicas"], summary["prefix_view"], summary["kv_event_batches"]) == (2, "shared", 0)
    assert summary["completed"] == 12


@pytest.mark.parametrize(("argv", "message"), [
    (["--replicas", "0"], "--replicas must be at least 1"),
    (["--shared-prefix-view"], "--shared-prefix-view needs --replicas 2 or more"),
    (["--live", "--replicas", "2"], "--replicas runs offline only"),
])  # fmt: skip
def test_cli_refuses_bad_replica_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", *SMALL, "--policy", "gie-default", *argv]) == 2
    assert message in capsys.readouterr().err
