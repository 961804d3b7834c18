"""PreciseIndex: exactly the engine-reported blocks, with a per-endpoint fallback while a feed is untrusted."""

from __future__ import annotations

import pytest

from epp._util.clock import VirtualClock
from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp.datastore import Endpoint
from epp.contracts.kv_events import Cleared, FeedState, Removed, SeqCheck, Stored
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.precise import PreciseIndex

MODEL = "m"
BS = 4


def tokens(tag: int, blocks: int) -> list[int]:
    return [tag * 1000 + i for i in range(blocks * BS)]


def keys(toks: list[int], seed: str = MODEL) -> list[int]:
    return chain_hashes(token_blocks(toks, BS), seed_hash(seed))


def stored(toks: list[int], engine_hashes: list[int] | None = None, parent: int | None = None, lora: str | None = None) -> Stored:
    hashes = engine_hashes if engine_hashes is not None else keys(toks, lora or MODEL)
    return Stored(tuple(hashes), parent, tuple(toks), BS, lora)


class Feed:
    """One endpoint's publisher: numbers batches like vLLM does."""

    def __init__(self, index: PreciseIndex, name: str) -> None:
        self.index, self.name, self.seq = index, name, 0

    def send(self, *events: Stored | Removed | Cleared, seq: int | None = None) -> SeqCheck:
        self.seq = self.seq if seq is None else seq
        check = self.index.ingest(self.name, self.seq, events, MODEL)
        self.seq += 1
        return check


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def index(clock: VirtualClock) -> PreciseIndex:
    return PreciseIndex(clock, BlockIndex(1000), event_timeout=5.0, resync_window=30.0, max_blocks_per_endpoint=50)


def test_hits_are_what_the_engine_stored_counted_per_endpoint_from_the_first_block(index: PreciseIndex) -> None:
    a, b = Feed(index, "a"), Feed(index, "b")
    t = tokens(1, 4)
    assert a.send(stored(t)) is SeqCheck.IN_ORDER
    b.send(stored(t[: 2 * BS]))
    assert index.match(keys(t), ["a", "b", "c"]) == [4, 2, 0]
    other = keys(tokens(2, 3))
    assert index.match(other, ["a", "b"]) == [0, 0]
    # b holds blocks 0 and 2 but not 1: its count stops at the first block it lacks
    k = keys(t)
    b.send(Removed((k[1],)), Stored((k[2],), k[1], tuple(t[2 * BS : 3 * BS]), BS, None))
    assert index.match(k, ["b", "a"]) == [1, 4]


def test_removed_blocks_stop_matching_and_a_block_stored_twice_needs_two_removals(index: PreciseIndex) -> None:
    a = Feed(index, "a")
    t = tokens(1, 3)
    k = keys(t)
    a.send(stored(t))
    a.send(Stored((k[0],), None, tuple(t[:BS]), BS, None))  # a second copy of block 0
    a.send(Removed((k[2],)))
    assert index.match(k, ["a"]) == [2]
    a.send(Removed((k[0],)))
    assert index.match(k, ["a"]) == [2]
    a.send(Removed((k[0],)))
    assert index.match(k, ["a"]) == [0]
    a.send(Removed((123456,)))  # never stored (before we subscribed): ignored
    assert index.held_blocks("a") == 1


def test_all_blocks_cleared_empties_the_view(index: PreciseIndex) -> None:
    a = Feed(index, "a")
    t = tokens(1, 2)
    a.send(stored(t))
    a.send(Cleared())
    assert index.match(keys(t), ["a"]) == [0]
    assert index.held_blocks("a") == 0


def test_engine_hashes_of_another_scheme_are_mapped_to_token_keys(index: PreciseIndex) -> None:
    """Real vLLM hashes with sha256: keys come from the token ids, engine hashes resolve removals and
    parents."""
    a = Feed(index, "a")
    t = tokens(1, 3)
    a.send(stored(t[: 2 * BS], engine_hashes=[901, 902]))
    a.send(stored(t[2 * BS :], engine_hashes=[903], parent=902))
    assert index.match(keys(t), ["a"]) == [3]
    a.send(Removed((903,)))
    assert index.match(keys(t), ["a"]) == [2]
    # a child of a parent we never saw cannot be keyed by tokens: it is keyed by its engine hash
    a.send(stored(tokens(2, 1), engine_hashes=[777], parent=555))
    assert index.match(keys(tokens(2, 1)), ["a"]) == [0]
    assert index.match([777], ["a"]) == [1]


def test_lora_blocks_are_seeded_with_the_adapter_name(index: PreciseIndex) -> None:
    a = Feed(index, "a")
    t = tokens(1, 2)
    a.send(stored(t, lora="adapter"))
    assert index.match(keys(t, "adapter"), ["a"]) == [2]
    assert index.match(keys(t), ["a"]) == [0]


def test_a_sequence_gap_falls_back_until_the_resync_window_drops_unconfirmed_blocks(
    index: PreciseIndex, clock: VirtualClock
) -> None:
    a = Feed(index, "a")
    kept, dropped = tokens(1, 2), tokens(2, 2)
    a.send(stored(kept), stored(dropped))
    assert index.match(keys(kept), ["a"]) == [2]  # a lookup the engine's view answers: keys agree
    index.add("a", keys(tokens(3, 2)))  # a pick: only the fallback learns it
    a.send(seq=5)  # events 1..4 lost
    assert index.feed_state("a") is FeedState.RESYNCING
    assert index.match(keys(tokens(3, 2)), ["a"]) == [2]  # the fallback answers meanwhile
    assert index.match(keys(kept), ["a"]) == [0]
    a.send(stored(kept))  # re-reported since the gap: confirmed
    clock.advance(30.0)
    assert index.feed_state("a") is FeedState.LIVE
    assert index.match(keys(kept), ["a"]) == [2]
    assert index.match(keys(dropped), ["a"]) == [0]
    assert index.held_blocks("a") == 2


def test_all_blocks_cleared_ends_a_resync_at_once(index: PreciseIndex) -> None:
    a = Feed(index, "a")
    a.send(stored(tokens(1, 2)))
    assert index.match(keys(tokens(1, 2)), ["a"]) == [2]
    a.send(seq=9)
    a.send(Cleared())
    assert index.feed_state("a") is FeedState.LIVE


def test_a_publisher_restart_clears_the_view_and_a_later_jump_is_a_gap(index: PreciseIndex, clock: VirtualClock) -> None:
    a = Feed(index, "a")
    t = tokens(1, 2)
    a.send(stored(t))
    a.send(stored(tokens(2, 1)))
    assert index.match(keys(t), ["a"]) == [2]
    assert index.feed_state("a") is FeedState.LIVE
    assert a.send(stored(tokens(3, 1)), seq=0) is SeqCheck.RESTART
    assert index.feed_state("a") is FeedState.UNVERIFIED  # a fresh engine: keys must agree again
    assert index.match(keys(t), ["a"]) == [0]
    assert index.match(keys(tokens(3, 1)), ["a"]) == [1]
    assert index.feed_state("a") is FeedState.LIVE
    assert a.send(seq=7) is SeqCheck.GAP
    assert index.feed_state("a") is FeedState.RESYNCING


def test_joining_a_running_engine_is_a_baseline_and_a_young_view_takes_the_better_match(
    index: PreciseIndex, clock: VirtualClock
) -> None:
    b = Feed(index, "b")
    t, old = tokens(1, 2), keys(tokens(2, 3))
    assert b.send(stored(t), seq=4) is SeqCheck.BASELINE
    assert index.feed_state("b") is FeedState.UNVERIFIED  # not RESYNCING: nothing to resynchronise
    assert index.match(keys(t), ["b"]) == [2]  # stored after joining, and keys agree: LIVE
    assert index.feed_state("b") is FeedState.LIVE and index.young("b")
    index.add("b", old)  # epp routed a prompt whose blocks the engine cached before we subscribed
    assert index.match(old, ["b"]) == [3]  # young: the learned match counts
    assert index.match(keys(t), ["b"]) == [2]
    clock.advance(index.young_window)
    b.send()  # the engine answered the pick: LIVE, not SILENT
    assert not index.young("b")
    assert index.match(old, ["b"]) == [0]  # grown up: only what the engine reported
    c = Feed(index, "c")
    c.send(stored(t))  # seq 0: the whole stream is seen, never young
    assert not index.young("c")


def test_more_blocks_than_allowed_means_lost_removals(index: PreciseIndex) -> None:
    a = Feed(index, "a")
    assert a.send(stored(tokens(1, 51))) is SeqCheck.OVERFLOW
    assert index.held_blocks("a") == 0
    assert index.feed_state("a") is FeedState.RESYNCING


def test_untrusted_feeds_use_the_fallback_per_endpoint(index: PreciseIndex, clock: VirtualClock) -> None:
    """A mixed view: each endpoint is answered by the source that can be trusted for it."""
    a, b = Feed(index, "a"), Feed(index, "b")
    precise, learned = keys(tokens(1, 3)), keys(tokens(2, 3))
    a.send(stored(tokens(1, 3)))
    b.send(stored(tokens(1, 3)))
    assert index.match(precise, ["a", "b"]) == [3, 3]
    index.add("a", learned)
    index.add("b", learned)
    assert index.feed_state("never-heard") is FeedState.NO_EVENTS
    index.add("never-heard", learned)
    b.send()  # b answers the pick with a (here empty) batch: its events are flowing
    clock.advance(5.5)
    assert (index.feed_state("a"), index.feed_state("b")) == (FeedState.SILENT, FeedState.LIVE)
    assert index.match(learned, ["a", "b", "never-heard"]) == [3, 0, 3]
    assert index.match(precise, ["a", "b"]) == [0, 3]
    index.set_connected("b", False)
    assert index.match(precise, ["a", "b"]) == [0, 0]
    assert index.feed_state("b") is FeedState.DISCONNECTED
    index.set_connected("b", True)
    a.send()
    assert index.match(precise, ["a", "b"]) == [3, 3]


def test_an_idle_engine_stays_live(index: PreciseIndex, clock: VirtualClock) -> None:
    a = Feed(index, "a")
    a.send(stored(tokens(1, 1)))
    assert index.match(keys(tokens(1, 1)), ["a"]) == [1]
    clock.advance(3600)
    assert index.feed_state("a") is FeedState.LIVE


def test_removing_an_endpoint_forgets_it_everywhere_and_reuses_its_bit(index: PreciseIndex) -> None:
    a = Feed(index, "a")
    t = keys(tokens(1, 2))
    a.send(stored(tokens(1, 2)))
    index.add("a", t)
    index.endpoint_removed(Endpoint("a", "10.0.0.1", 8000))
    assert index.feed_state("a") is FeedState.NO_EVENTS
    assert index.match(t, ["a"]) == [0]
    c = Feed(index, "c")
    c.send(stored(tokens(2, 1)))
    assert index.match(t, ["c"]) == [0]
    assert index.match(keys(tokens(2, 1)), ["c"]) == [1]


def test_an_undecodable_batch_is_its_own_state_then_a_gap(index: PreciseIndex) -> None:
    a = Feed(index, "a")
    a.send(stored(tokens(1, 1)))
    index.lost("a")
    assert index.feed_state("a") is FeedState.UNDECODABLE
    a.seq += 1  # the lost batch's number
    assert a.send() is SeqCheck.GAP
    assert index.feed_state("a") is FeedState.RESYNCING  # its events are lost
    index.lost("b")  # nothing decodable yet
    assert index.feed_state("b") is FeedState.UNDECODABLE
    assert index.ingest("b", 0, [], MODEL) is SeqCheck.BASELINE  # something before it was lost
    assert index.young("b")


def test_bad_settings_are_rejected(clock: VirtualClock) -> None:
    with pytest.raises(ValueError):
        PreciseIndex(clock, BlockIndex(10), event_timeout=0)


# -- key agreement: a feed is trusted only once it reports blocks of prompts epp hashed --------------


def test_a_feed_is_trusted_once_a_prompt_epp_routed_there_shows_up_in_its_stores(
    index: PreciseIndex, clock: VirtualClock
) -> None:
    a = Feed(index, "a")
    a.send(stored(tokens(1, 2)))  # someone else's prompt: says nothing about epp's keys
    assert index.feed_state("a") is FeedState.UNVERIFIED
    prompt = keys(tokens(2, 3))
    index.add("a", prompt)
    assert index.match(prompt, ["a"]) == [3]  # the approximate fallback answers meanwhile
    index.routed("a", "r1", prompt, MODEL)
    a.send(stored(tokens(2, 3)))
    assert index.feed_state("a") is FeedState.LIVE
    assert index.agreed("a")
    index.responded("r1")
    clock.advance(60)
    assert index.match(keys(tokens(1, 2)), ["a"]) == [2]  # the engine's own view


def test_a_feed_whose_stores_never_hold_epps_keys_is_keys_mismatch_warned_once_and_can_recover(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """epp's default ``sim`` tokenizer against a real engine: the engine's token ids differ from
    epp's, so its stores never carry epp's keys; trusting the feed would make every match 0."""
    index = PreciseIndex(clock, BlockIndex(100), event_timeout=5.0, mismatch_after=3)
    feeds = {name: Feed(index, name) for name in ("a", "b")}
    epp_view = keys(tokens(5, 4))
    for i in range(3):
        for name, feed in feeds.items():
            index.add(name, epp_view)
            index.routed(name, f"{name}{i}", epp_view, MODEL)
            feed.send(stored(tokens(100 + i, 4)))  # the same prompt, as the engine tokenized it
            index.responded(f"{name}{i}")
        assert index.feed_state("a") is FeedState.UNVERIFIED
        clock.advance(5.5)
    assert (index.feed_state("a"), index.feed_state("b")) == (FeedState.KEYS_MISMATCH, FeedState.KEYS_MISMATCH)
    assert index.match(epp_view, ["a", "b"]) == [4, 4]  # the fallback, not a blind zero
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "`tokenizer`" in warnings[0].getMessage()
    assert "blocks of 4 tokens" in warnings[0].getMessage()
    # a prompt the engine reports with epp's keys after all (e.g. it had cached the earlier ones
    # before epp subscribed) lifts the mismatch
    index.routed("a", "late", keys(tokens(6, 1)), MODEL)
    feeds["a"].send(stored(tokens(6, 1)))
    assert index.feed_state("a") is FeedState.LIVE


def test_probes_without_evidence_are_never_misses(index: PreciseIndex, clock: VirtualClock) -> None:
    """Prefix caching off (no stores), prompts shorter than one block and requests that never got a
    response say nothing about the keys."""
    index = PreciseIndex(clock, BlockIndex(100), mismatch_after=1)
    a = Feed(index, "a")
    a.send(stored(tokens(9, 1)))  # stored before the prompts were routed: no evidence against them
    index.routed("a", "r1", keys(tokens(1, 2)), MODEL)
    a.send(Removed((1,)))  # events flow, but the engine stores nothing since
    index.responded("r1")
    index.routed("a", "short", [], MODEL)
    index.responded("short")
    clock.advance(10)
    assert index.feed_state("a") is FeedState.UNVERIFIED
    index.routed("a", "failed", keys(tokens(2, 2)), MODEL)
    a.send(stored(tokens(8, 1)))
    index.finished("failed")
    clock.advance(10)
    assert index.feed_state("a") is FeedState.UNVERIFIED


def test_without_a_model_in_the_topic_root_blocks_are_seeded_with_the_routed_model(index: PreciseIndex) -> None:
    """vLLM's default topic is empty: the model is the one epp routes there."""
    prompt = tokens(1, 2)
    index.ingest("a", 0, [], None)
    index.routed("a", "r1", keys(prompt), MODEL)
    index.ingest("a", 1, [stored(prompt)], None)
    assert index.feed_state("a") is FeedState.LIVE
    assert index.match(keys(prompt), ["a"]) == [2]
