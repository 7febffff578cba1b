"""benchmarks/reward_blind_spots.py: canned non-answers built from each request, and what the rewards pay them."""

import importlib.util
import random
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "reward_blind_spots.py"
_spec = importlib.util.spec_from_file_location("reward_blind_spots", _PATH)
reward_blind_spots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reward_blind_spots)


def test_canned_responses_are_built_from_the_request_and_the_answer():
    prompt = "\n\nHuman: Is stretching before exercise useful?\n\nAssistant:"
    texts = reward_blind_spots.canned([prompt], ["A light warm-up helps more than holding stretches."])
    assert set(texts) == set(reward_blind_spots.KINDS)
    assert texts["the request"] == ["Is stretching before exercise useful?"]
    assert sorted(texts["its words shuffled"][0].split()) == ["before", "exercise", "stretching", "useful"]
    assert texts["loop of the answer"] == [" ".join(["A", "light", "warm-up", "helps", "more", "than"] * 4)]
    assert texts == reward_blind_spots.canned([prompt], ["A light warm-up helps more than holding stretches."])  # seeded
    assert reward_blind_spots.shuffled_words("a b c d", random.Random(0), limit=2).count(" ") == 1


def test_the_default_helpful_reward_does_not_pay_for_the_requests_words_in_any_order():
    # The earlier discount (word pairs) paid a shuffled copy of the request more than the data's own answers; the
    # default (the request's words removed before comparing) pays it nothing. 8 prompts: 4 everyday, 4 red team.
    default = {r["kind"]: r["all"] for r in reward_blind_spots.report([], 8)["rows"]}
    pairs = {r["kind"]: r["all"] for r in reward_blind_spots.report(["objective.rewards.helpful.copy_penalty=pairs"], 8)["rows"]}
    helpful = 0  # objectives: helpful, harmless
    assert default["its words shuffled"][helpful] == 0.0 and default["the request"][helpful] == 0.0
    assert default["data answer"][helpful] > default["'You can' + its words"][helpful] + 0.1
    assert pairs["its words shuffled"][helpful] > pairs["data answer"][helpful]
    assert default["refusal"][1] == pairs["refusal"][1]  # the harm reward is untouched
