"""Pickers: who wins, how ties and randomness are spread."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.pickers.random_picker import RandomPicker
from epp.scheduling.plugins.pickers.round_robin import RoundRobinPicker
from epp.scheduling.plugins.pickers.weighted_random import WeightedRandomPicker
from tests.conftest import make_request, make_states


def pick_names(picker: object, scores: list[float]) -> list[str]:
    endpoints = make_states(len(scores))
    return [e.name for e in picker.pick(CycleState(), make_request(), endpoints, scores)]  # type: ignore[attr-defined]


def test_max_score_returns_best_first_up_to_max() -> None:
    picker = MaxScorePicker(max_num_of_endpoints=2, rng=random.Random(1))
    assert pick_names(picker, [0.1, 0.9, 0.5]) == ["e1", "e2"]
    assert pick_names(MaxScorePicker(max_num_of_endpoints=5), [0.1, 0.9]) == ["e1", "e0"]


def test_max_score_spreads_ties_with_several_endpoints() -> None:
    picker = MaxScorePicker(max_num_of_endpoints=2, rng=random.Random(3))
    firsts = Counter(pick_names(picker, [1.0, 1.0, 1.0, 0.0])[0] for _ in range(300))
    assert set(firsts) == {"e0", "e1", "e2"}


def test_random_picker_ignores_scores_and_is_uniform() -> None:
    picker = RandomPicker(rng=random.Random(2))
    counts = Counter(pick_names(picker, [1.0, 0.0, 0.0, 0.0])[0] for _ in range(4000))
    assert set(counts) == {"e0", "e1", "e2", "e3"}
    assert min(counts.values()) > 850
    two = RandomPicker(max_num_of_endpoints=2, rng=random.Random(2))
    picked = pick_names(two, [0.0, 0.0, 0.0])
    assert len(picked) == 2 and len(set(picked)) == 2


def test_weighted_random_picks_in_proportion_to_score() -> None:
    picker = WeightedRandomPicker(rng=random.Random(5))
    counts = Counter(pick_names(picker, [3.0, 1.0, 0.0])[0] for _ in range(8000))
    assert "e2" not in counts  # zero never wins while a positive score exists
    assert counts["e0"] / 8000 == pytest.approx(0.75, abs=0.03)


def test_weighted_random_all_zero_is_uniform_and_zeros_come_last() -> None:
    picker = WeightedRandomPicker(rng=random.Random(6))
    counts = Counter(pick_names(picker, [0.0, 0.0])[0] for _ in range(2000))
    assert min(counts.values()) > 850
    three = WeightedRandomPicker(max_num_of_endpoints=3, rng=random.Random(6))
    assert pick_names(three, [0.0, 2.0, 0.0])[0] == "e1"


def test_round_robin_takes_turns_in_name_order() -> None:
    picker = RoundRobinPicker()
    endpoints = list(reversed(make_states(3)))
    seq = [picker.pick(CycleState(), make_request(), endpoints, [0.0] * 3)[0].name for _ in range(5)]
    assert seq == ["e0", "e1", "e2", "e0", "e1"]
    assert [e.name for e in RoundRobinPicker(max_num_of_endpoints=2).pick(CycleState(), make_request(), endpoints, [0.0] * 3)] == ["e0", "e1"]


PICKERS = [MaxScorePicker, RandomPicker, WeightedRandomPicker, RoundRobinPicker]


@pytest.mark.parametrize("cls", PICKERS)
@pytest.mark.parametrize("bad", [0, -1])
def test_every_picker_rejects_fewer_than_one_endpoint_when_built_directly(cls: type, bad: int) -> None:
    with pytest.raises(ValueError, match="maxNumOfEndpoints: must be at least 1"):
        cls(max_num_of_endpoints=bad)


@pytest.mark.parametrize("cls", PICKERS)
def test_every_picker_names_itself_after_its_type_unless_named(cls: type) -> None:
    default, named = cls(), cls("mine", 2)
    assert default.typed_name.name == default.typed_name.type == cls.PLUGIN_TYPE
    assert (named.typed_name.name, named.typed_name.type, named.max_num_of_endpoints) == ("mine", cls.PLUGIN_TYPE, 2)


@pytest.mark.parametrize("cls", [MaxScorePicker, RandomPicker, WeightedRandomPicker])
def test_random_pickers_draw_from_the_injected_generator(cls: type) -> None:
    scores = [0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    runs = [pick_names(cls(max_num_of_endpoints=3, rng=random.Random(5)), scores) for _ in range(2)]
    assert runs[0] == runs[1]
