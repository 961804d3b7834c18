"""The per-endpoint ledger: booking, draining, first-token corrections, overruns, expiry."""

from __future__ import annotations

import pytest

from epp.scheduling.ttft import EndpointLedger, Flight
from epp.scheduling.ttft.ledger import MAX_SLOWNESS


def flight(at: float, prefill: float, cold: float | None = None, prompt: int = 1000, output: int = 100,
           streamed: bool = True) -> Flight:
    return Flight(at, prefill, prefill if cold is None else cold, prompt, output, streamed=streamed)


def test_a_burst_queues_behind_itself_and_time_drains_it() -> None:
    """Non-streamed: no first token comes before the end, so only time drains the backlog."""
    ledger = EndpointLedger()
    ledger.routed("a", flight(10.0, 0.5, streamed=False))
    ledger.routed("b", flight(10.0, 0.3))
    assert ledger.backlog(10.0) == pytest.approx(0.8)
    assert ledger.backlog(10.6) == pytest.approx(0.2)
    assert ledger.backlog(11.0) == 0.0
    ledger.routed("c", flight(12.0, 0.4))  # the engine went idle in between: no carried-over backlog
    assert ledger.backlog(12.0) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("first_token_at", "expected_backlog"),
    [(10.2, 0.3), (10.5, 0.3), (11.0, 0.3)],  # faster, on time, slower: what is left is b's prefill
)
def test_a_first_token_reanchors_what_is_still_pending(first_token_at: float, expected_backlog: float) -> None:
    ledger = EndpointLedger()
    ledger.routed("a", flight(10.0, 0.5))
    ledger.routed("b", flight(10.0, 0.3))
    ledger.started("a", first_token_at)
    assert ledger.backlog(first_token_at) == pytest.approx(expected_backlog)
    assert list(ledger.pending) == ["b"] and list(ledger.decoding) == ["a"]


def test_a_first_token_means_everything_routed_before_it_has_prefilled() -> None:
    ledger = EndpointLedger()
    for name in "abc":
        ledger.routed(name, flight(0.0, 1.0))
    ledger.started("b", 1.5)
    assert list(ledger.pending) == ["c"] and list(ledger.decoding) == ["a", "b"]
    ledger.started("a", 1.6)  # late event for a request already counted as started: ignored
    assert ledger.backlog(1.5) == pytest.approx(1.0)


def test_an_overdue_prefill_is_taken_to_have_missed_its_cache_hit() -> None:
    ledger = EndpointLedger()
    ledger.routed("big", flight(0.0, 0.1, cold=5.0))  # predicted a hit: 0.1 s instead of 5 s
    ledger.routed("next", flight(0.0, 0.2))
    assert ledger.backlog(0.0) == pytest.approx(0.3)
    # past its predicted first token and still silent: it is running cold, the engine is not idle
    assert ledger.backlog(1.0) == pytest.approx(0.3 + 4.9 - 1.0)
    # silent for twice its cold prefill: the engine runs slower than predicted, so is what waits behind it
    assert ledger.backlog(10.0) == pytest.approx(0.2 * 2)
    assert ledger.backlog(100.0) == pytest.approx(0.2 * MAX_SLOWNESS)  # bounded: a lost event never pins it


def test_an_engine_slower_than_predicted_loses_traffic_before_its_next_first_token() -> None:
    """A streamed head three times as slow as predicted (cold) stretches the queue behind it three times:
    routing sees the slowness while it lasts, not one first token later."""
    ledger = EndpointLedger()
    for name in "abc":
        ledger.routed(name, flight(0.0, 1.0))
    assert ledger.backlog(0.5) == pytest.approx(2.5)
    assert ledger.backlog(3.0) == pytest.approx(2.0 * 3.0)  # a is still silent at 3× its prediction
    ledger.observe_scrape(3.0, sequences=4, typical_cold_seconds=0.5)  # a foreign request queued too
    assert ledger.backlog(4.0) == pytest.approx(2.5 * MAX_SLOWNESS)
    ledger.started("a", 4.0)  # the first token: back to the predictions, from now
    assert ledger.backlog(4.0) == pytest.approx(2.0)


def test_a_non_streamed_head_still_drains_with_time() -> None:
    """A non-streamed response's first bytes are its end: its silence says nothing about speed."""
    ledger = EndpointLedger()
    ledger.routed("a", flight(0.0, 1.0, streamed=False))
    ledger.routed("b", flight(0.0, 1.0))
    assert ledger.backlog(1.5) == pytest.approx(0.5)
    assert ledger.backlog(3.0) == 0.0


def test_a_completion_without_first_token_only_shortens_the_backlog() -> None:
    ledger = EndpointLedger()
    ledger.routed("a", flight(0.0, 1.0))
    ledger.routed("b", flight(0.0, 1.0))
    ledger.finished("a", 0.5)  # earlier than predicted: b now ends at 1.5, not 2.0
    assert ledger.backlog(0.5) == pytest.approx(1.0)
    ledger.routed("c", flight(0.6, 1.0))
    ledger.finished("b", 3.0)  # later than predicted: does not push c out
    assert ledger.backlog(3.0) == 0.0
    assert len(ledger) == 1 and ledger.context_tokens == 1050


def test_load_totals_follow_the_requests_in_flight() -> None:
    ledger = EndpointLedger()
    ledger.routed("a", flight(0.0, 0.1, prompt=1000, output=100))
    ledger.routed("b", flight(1.0, 0.1, prompt=2000, output=300))
    assert ledger.context_tokens == 1050 + 2150 and ledger.mean_output_tokens(7) == 200
    assert ledger.routed_after(0.5) == (1, 2000)
    assert ledger.unstarted_at(0.5) == 1
    ledger.started("a", 0.7)
    assert ledger.unstarted_at(0.5) == 1  # a had not started at 0.5
    assert ledger.unstarted_at(0.8) == 0
    ledger.finished("a", 2.0)
    ledger.finished("b", 2.0)
    assert len(ledger) == 0 and ledger.context_tokens == 0 and ledger.mean_output_tokens(7) == 7


def test_expiry_forgets_old_requests_and_names_them() -> None:
    ledger = EndpointLedger()
    ledger.routed("old", flight(0.0, 0.1))
    ledger.routed("new", flight(100.0, 0.1))
    ledger.started("old", 0.1)
    assert ledger.expire(50.0) == ["old"]
    assert list(ledger.decoding) == [] and list(ledger.pending) == ["new"]


def test_a_reused_request_id_replaces_the_old_request() -> None:
    ledger = EndpointLedger()
    ledger.routed("x", flight(0.0, 1.0))
    ledger.routed("x", flight(5.0, 1.0))
    assert len(ledger) == 1 and ledger.backlog(5.0) == pytest.approx(1.0)


def test_queued_counts_requests_predicted_not_yet_through_their_prefill() -> None:
    ledger = EndpointLedger()
    for name in "abc":
        ledger.routed(name, flight(0.0, 1.0))  # predicted first tokens at 1, 2, 3
    assert [ledger.queued(t) for t in (0.0, 1.5, 2.5, 3.5)] == [3, 2, 1, 0]


def test_sequences_a_scrape_shows_beyond_this_epps_own_are_booked_as_foreign_prefill() -> None:
    """Another router's request prefilling counts as *running* in a scrape: the rise in sequences this
    epp did not have in the engine at the scrape is queued work ahead of the next request."""
    ledger = EndpointLedger()
    ledger.routed("a", flight(0.0, 0.5, streamed=False))  # a silent streamed head would stretch the queue
    ledger.observe_scrape(0.1, sequences=1, typical_cold_seconds=0.8)  # only "a": nothing foreign
    assert ledger.backlog(0.1) == pytest.approx(0.4)
    ledger.observe_scrape(0.2, sequences=3, typical_cold_seconds=0.8)  # two foreign arrivals
    assert ledger.backlog(0.2) == pytest.approx(0.3 + 1.6)
    assert ledger.backlog(1.0) == pytest.approx(1.1)  # queued behind "a", draining with time
    ledger.observe_scrape(0.2, sequences=9, typical_cold_seconds=0.8)  # a repeated scrape changes nothing
    ledger.observe_scrape(0.3, sequences=3, typical_cold_seconds=0.8)  # no rise: nothing new
    assert ledger.backlog(1.0) == pytest.approx(1.1)
    ledger.routed("c", flight(1.0, 0.5))  # this epp's next request queues behind the foreign work
    assert ledger.pending["c"].eta == pytest.approx(2.6)


def test_own_requests_that_ended_after_a_scrape_are_not_taken_for_foreign_ones() -> None:
    """A scrape is read after the fact: a request of this epp that finished since still counted then."""
    ledger = EndpointLedger()
    ledger.observe_scrape(0.0, sequences=0, typical_cold_seconds=0.8)
    ledger.routed("a", flight(0.0, 0.1))
    ledger.routed("b", flight(0.0, 0.1))
    ledger.started("b", 0.2)
    ledger.finished("a", 0.4)
    ledger.observe_scrape(0.3, sequences=2, typical_cold_seconds=0.8)  # a and b, a ended at 0.4
    ledger.observe_scrape(0.5, sequences=1, typical_cold_seconds=0.8)  # b
    assert ledger.backlog(0.3) == ledger.backlog(0.5) == 0.0
