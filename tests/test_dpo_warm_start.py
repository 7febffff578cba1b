"""warm_start.loss=dpo: each prompt's answers ranked at the simplex's corners and learnt by DPO."""

import math

import pytest
import torch
from conftest import train_cli
from test_meta import CORPUS, micro_module

from meal_pl import sft
from meal_pl.dpo_warm_start import dpo_warm_start, pair_batches, ranked_pairs, summed_logprobs
from meal_pl.losses import dpo_loss, preference_pairs
from meal_pl.sft import dpo_preferences, warm_start_on
from meal_pl.train import train
from meal_pl.warm_start import WarmStart


def test_dpo_loss_is_log2_at_the_reference_and_falls_as_the_chosen_answer_gains():
    zero = torch.zeros(3)
    assert dpo_loss(zero, zero, zero, zero, beta=0.1).item() == pytest.approx(math.log(2))
    gained = dpo_loss(torch.tensor([2.0, 2.0, 2.0]), zero, zero, zero, beta=0.1)
    assert gained.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.2)).item())
    # only the margin against the reference counts: the same log-probabilities as the reference give log 2 again
    ref_c, ref_r = torch.tensor([-5.0, -1.0, -3.0]), torch.tensor([-2.0, -4.0, -1.0])
    assert dpo_loss(ref_c, ref_r, ref_c, ref_r, beta=0.5).item() == pytest.approx(math.log(2))


def test_preference_pairs_at_the_corners_rank_a_conflict_both_ways_and_a_dominant_answer_the_same_way():
    corners = torch.eye(2)
    rewards = torch.tensor([
        [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]],  # conflict: answer 0 the most helpful, answer 1 the most harmless
        [[0.5, 0.5], [0.1, 0.2], [0.3, 0.1]],  # answer 0 dominates; corner 0's worst is 1, corner 1's is 2
    ])
    assert preference_pairs(rewards, corners) == [(0, 0, 1, 0), (0, 1, 0, 1), (1, 0, 1, 0), (1, 0, 2, 1)]
    assert preference_pairs(torch.full((1, 3, 2), 0.4), corners) == []  # ties everywhere: no pair
    with_nan = torch.tensor([[[0.9, float("nan")], [0.2, 0.8], [0.1, 0.9]]])
    assert preference_pairs(with_nan, corners) == [(0, 1, 2, 0), (0, 2, 1, 1)]  # the NaN answer ranks against nothing
    assert preference_pairs(torch.tensor([[[0.9, 0.1]]]), corners) == []  # one answer: nothing to rank


def test_preference_pairs_turn_a_conflicts_ranking_where_the_two_scores_cross():
    rewards = torch.tensor([
        [[1.0, -1.0], [-0.5, 0.5]],  # conflict: w . (r_0 - r_1) = 1.5 w_0 - 1.5 w_1 crosses 0 at w = (0.5, 0.5)
        [[0.5, 0.5], [0.1, 0.2]],    # answer 0 dominates: the same pair at every preference
    ])
    grid = torch.tensor([[0.0, 1.0], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])
    assert preference_pairs(rewards, grid) == [(0, 1, 0, 0), (0, 1, 0, 1), (0, 0, 1, 3), (0, 0, 1, 4),
                                               (1, 0, 1, 0), (1, 0, 1, 1), (1, 0, 1, 2), (1, 0, 1, 3), (1, 0, 1, 4)]
    # at the corners only each objective's own order counts, whatever the other's scale
    assert preference_pairs(rewards * torch.tensor([1.0, 100.0]), torch.eye(2)) == preference_pairs(rewards, torch.eye(2))


def test_dpo_preferences_are_the_corners_or_the_simplex_grid_and_a_grid_below_the_corners_names_the_key():
    assert dpo_preferences(2, 0).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert dpo_preferences(2, 5)[:, 0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(dpo_preferences(3, 6)) == 6
    with pytest.raises(ValueError, match="warm_start.dpo_points=2 is below the 3 objectives"):
        dpo_preferences(3, 2)


def test_ranked_pairs_group_answers_by_prompt_whatever_their_order():
    prompts = ["p", "q", "p", "q", "r"]
    responses = ["p-helpful", "q-same", "p-harmless", "q-same", "r-alone"]
    raw = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.5, 0.5], [0.3, 0.3]])
    triples, corners = ranked_pairs(prompts, responses, raw, torch.eye(2))
    assert triples == [("p", "p-helpful", "p-harmless"), ("p", "p-harmless", "p-helpful")]
    assert corners.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    grid = torch.tensor([[0.0, 1.0], [0.25, 0.75], [0.5, 0.5], [1.0, 0.0]])
    triples, under = ranked_pairs(prompts, responses, raw, grid)
    assert triples == [("p", "p-harmless", "p-helpful"), ("p", "p-harmless", "p-helpful"), ("p", "p-helpful", "p-harmless")]
    assert under[:, 0].tolist() == [0.0, 0.25, 1.0]  # at (0.5, 0.5) the two answers tie (0.5 each): no pair


def _conflict_batches(module):
    triples = [(p, "water flour", "bread bread bread") for p in CORPUS[:4]]
    triples += [(p, "bread bread bread", "water flour") for p in CORPUS[:4]]
    corners = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    return pair_batches(module.tokenizer, module.conditioner, triples, corners, 32, 8, batch_size=4), corners


def test_dpo_warm_start_teaches_the_corners_opposite_rankings():
    module = micro_module("alternating").float()
    batches, _ = _conflict_batches(module)
    assert [b[0].shape[0] for b in batches] == [8, 8]  # 4 prompts, chosen rows then rejected rows

    def margins():
        with torch.no_grad():
            return [(c - r).mean().item() for c, r in (summed_logprobs(module.policy, b, module.conditioner) for b in batches)]

    before = margins()
    history = dpo_warm_start(module.policy, batches, steps=40, lr=1e-2, beta=0.5, conditioner=module.conditioner)
    after = margins()
    assert history[0] == pytest.approx(math.log(2), abs=1e-4)  # the reference is the policy before the first step
    assert history[-1] < 0.5 * history[0]
    # each corner's chosen answer gains on its rejected one: the same two texts, ranked oppositely by the tags alone
    assert after[0] > before[0] + 1.0 and after[1] > before[1] + 1.0


def test_a_run_warm_starts_by_dpo_on_the_policys_own_answers_ranked_on_a_grid(tiny_cfg, monkeypatch, caplog):
    seen = {}
    original = sft.warm_start_on

    def spy(module, stage, pairs, what="answers", announce=True):
        seen["info"] = original(module, stage, pairs, what, announce)
        return seen["info"]

    monkeypatch.setattr(sft, "warm_start_on", spy)
    with caplog.at_level("INFO", logger="meal_pl"):
        train(tiny_cfg("objective=synthetic", "logger=none", "trainer.max_steps=1", "warm_start.source=policy",
                       "warm_start.answers=3", "warm_start.prompts=4", "warm_start.loss=dpo",
                       "warm_start.steps=3", "warm_start.dpo_points=3"))
    assert seen["info"]["loss"]["steps"] == 3 and seen["info"]["loss"]["first"] == pytest.approx(math.log(2), abs=1e-3)
    assert "ranked at the simplex's 3-point grid" in caplog.text and " at 3 preferences; " in caplog.text


@pytest.mark.parametrize("override, named", [("warm_start.loss=ppo", "warm_start.loss='ppo'"),
                                              ("warm_start.dpo_beta=0", "warm_start.dpo_beta=0"),
                                              ("warm_start.dpo_points=1", "warm_start.dpo_points=1")])
def test_a_bad_warm_start_loss_is_one_line_naming_the_key(monkeypatch, capsys, tmp_path, override, named):
    code, err = train_cli(monkeypatch, capsys, "objective=synthetic", f"hydra.run.dir={tmp_path}", override)
    assert code != 0 and named in err and len(err.strip().splitlines()) == 1


def test_dpo_on_single_answers_names_the_fix():
    module = micro_module("alternating").float()
    with pytest.raises(ValueError, match="warm_start.source=policy"):  # one answer per prompt: nothing to rank
        warm_start_on(module, WarmStart(loss="dpo", steps=2), [(p, "an answer") for p in CORPUS[:4]])


def test_the_warm_start_says_how_many_pairs_its_corners_rank_oppositely(caplog):
    module = micro_module("alternating").float()  # rewards: a = len % 5, b = len % 3
    pairs = [(CORPUS[0], "ab"), (CORPUS[0], "abcd"),   # a 2 / 4, b 2 / 1: a conflict
             (CORPUS[1], "abc"), (CORPUS[1], "ab")]    # a 3 / 2, b 0 / 2: a conflict too
    pairs += [(CORPUS[2], "abcd"), (CORPUS[2], "a")]   # a 4 / 1, b 1 / 1: ranked at corner a only
    with caplog.at_level("INFO", logger="meal_pl"):
        info = warm_start_on(module, WarmStart(loss="dpo", steps=1), pairs)
    assert info["loss"]["steps"] == 1
    assert "5 ranked pairs at 2 preferences; 2 answer pairs ranked one way at one corner and the other way" in caplog.text


@pytest.mark.parametrize("loss, scored", [("sft", 4), ("dpo", 8)])
def test_the_warm_start_scores_only_what_its_steps_use(loss, scored, monkeypatch):
    # 2 steps of 2: at most 4 answers (sft), or 4 prompts with their answers (dpo); 20 prompts x 2 answers available
    module = micro_module("alternating").float()
    pairs = [(f"{CORPUS[i % len(CORPUS)]} {i}", answer) for i in range(20) for answer in ("ab", "abcd")]
    seen = []
    score = module.rewards.__call__
    monkeypatch.setattr(type(module.rewards), "__call__", lambda self, p, c: seen.append(len(c)) or score(p, c))
    warm_start_on(module, WarmStart(loss=loss, steps=2, batch_size=2), pairs)
    assert seen[0] == scored
