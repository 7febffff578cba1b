"""objective=synthetic_prompted: the generated letter families, their balance and share, groups, composition."""

import json
import statistics
from collections import Counter

import pytest
import torch
from conftest import TINY, compose_train
from hydra.utils import instantiate

from meal_pl.callbacks.rejection_sampling import RejectionSampling
from meal_pl.data import PromptDataModule, balanced_pick, split_hh
from meal_pl.rewards.synthetic import WordShareReward
from meal_pl.synthetic_prompts import A_TO_M, N_TO_Z, LetterFamilyDataModule, letter_family_records

A = WordShareReward("abcdefghijklm", min_words=8)
B = WordShareReward("nopqrstuvwxyz", min_words=8)


def words_of(prompt: str) -> str:
    return prompt.removeprefix("\n\nHuman: ").removesuffix("\n\nAssistant:")


def test_word_lists_start_in_their_set_and_are_disjoint():
    assert all(w.isalpha() and w.islower() for w in A_TO_M + N_TO_Z)
    assert all(w[0] in "abcdefghijklm" for w in A_TO_M) and all(w[0] in "nopqrstuvwxyz" for w in N_TO_Z)
    assert len(set(A_TO_M)) >= 50 and len(set(N_TO_Z)) >= 50


def test_families_are_equal_and_lean_to_their_letter_set():
    records = letter_family_records(num_prompts=200, seed=3)
    assert Counter(r["group"] for r in records) == {"a": 100, "b": 100}
    assert len({r["prompt"] for r in records}) == 200
    for r in records:
        assert r["prompt"].startswith("\n\nHuman: ") and split_hh(r["prompt"] + " x")[0] == r["prompt"]
        own, other = (A, B) if r["group"] == "a" else (B, A)
        text = words_of(r["prompt"])
        assert len(text.split()) == 10 and own.score(text) == pytest.approx(0.8) and other.score(text) == pytest.approx(0.2)
        assert len(r["responses"]) == 2
        for response in r["responses"]:  # the warm start's responses continue in the prompt's style
            assert len(response.split()) >= 10 and own.score(response) == pytest.approx(0.8)
    # the families differ: the mean A-share of family a's responses is far above family b's
    share = {g: statistics.fmean(A.score(x) for r in records if r["group"] == g for x in r["responses"]) for g in "ab"}
    assert share["a"] - share["b"] > 0.5


def test_three_letter_sets_give_three_leaning_families():
    """synthetic3_prompted's data: one family per letter set, each 80% its own set's words, the rest the others'."""
    sets = ["abcdefgh", "ijklmnop", "qrstuvwxyz"]
    records = letter_family_records(num_prompts=30, seed=0, letter_sets=sets)
    assert Counter(r["group"] for r in records) == {"a": 10, "b": 10, "c": 10}
    rewards = [WordShareReward(letters) for letters in sets]
    for r in records:
        own = "abc".index(r["group"])
        for text in (words_of(r["prompt"]), *r["responses"]):
            shares = [reward.score(text) for reward in rewards]
            assert shares[own] == pytest.approx(0.8) and sum(shares) == pytest.approx(1.0)


def test_generation_is_seeded():
    assert letter_family_records(num_prompts=8, seed=1) == letter_family_records(num_prompts=8, seed=1)
    assert letter_family_records(num_prompts=8, seed=1) != letter_family_records(num_prompts=8, seed=2)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"num_prompts": 7}, "data.num_prompts"), ({"share": 0.4}, "data.share"), ({"response_words": 0}, "data.response_words"),
     ({"letter_sets": ["abc", "cde"]}, "data.letter_sets"), ({"letter_sets": ["abcdefgh", "ijklmnop", "qrstuvwxyz"]}, "data.num_prompts")],
)
def test_bad_settings_name_the_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        LetterFamilyDataModule(**kwargs)


def test_eval_set_is_family_balanced_and_groups_align():
    dm = LetterFamilyDataModule(num_prompts=64, eval_size=10, batch_size=4)
    dm.setup("fit")
    prompts, groups = dm.eval_prompts(), dm.eval_groups()
    assert len(prompts) == len(groups) == 10 and Counter(groups) == {"a": 5, "b": 5}
    assert dm.eval_groups(4) == groups[:4] and Counter(dm.eval_groups(4)) == {"a": 2, "b": 2}  # every prefix too
    for p, g in zip(prompts, groups, strict=True):  # aligned: each group is its prompt's family
        assert (A.score(words_of(p)) > 0.5) == (g == "a")
    assert not set(prompts) & set(dm.train_prompts) and len(dm.train_prompts) == 54
    assert len(dm.sft_pairs()) == 2 * 54


def test_balanced_pick_takes_groups_in_turn():
    groups = ["a", "a", "a", "b", None, "b"]
    assert balanced_pick(groups, ["a1", "a2", "a3", "b1", "n1", "b2"], 5) == ["a1", "b1", "n1", "a2", "b2"]
    assert balanced_pick(["a", "a"], ["x", "y"], 5) == ["x", "y"]


def test_jsonl_rows_may_name_a_group(tmp_path):
    rows = [{"prompt": f"q{i}?", "response": "r", **({"group": "g1" if i % 2 else "g2"} if i < 6 else {})} for i in range(12)]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PromptDataModule(path=str(path), batch_size=2, eval_size=4)
    dm.setup()
    expect = {f"\n\nHuman: q{i}?\n\nAssistant:": ("g1" if i % 2 else "g2") if i < 6 else None for i in range(12)}
    assert dm.eval_groups() == [expect[p] for p in dm.eval_prompts()]
    path.write_text(json.dumps({"prompt": "q?", "group": 3}) + "\n")
    with pytest.raises(ValueError, match="line 1: 'group' must be a non-empty string"):
        PromptDataModule(path=str(path)).setup()


def test_a_file_without_group_fields_has_no_groups(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(f'{{"prompt": "question {i}?"}}\n' for i in range(20)))
    dm = PromptDataModule(path=str(path), eval_size=8)
    dm.setup()
    assert dm.eval_groups() == [None] * 8


def test_objective_alone_selects_the_prompted_data(tmp_path):
    cfg = compose_train(TINY + ["objective=synthetic_prompted"], tmp_path)
    synthetic = compose_train(TINY + ["objective=synthetic"], tmp_path)
    assert cfg.objective.name == "synthetic_prompted"
    assert cfg.data._target_ == "meal_pl.synthetic_prompts.LetterFamilyDataModule"
    # the same rewards, analytic front and reference point as `synthetic`
    for key in ("rewards", "reference_point", "front", "grid_points"):
        assert cfg.objective[key] == synthetic.objective[key]
    assert synthetic.data._target_ == "meal_pl.data.PromptDataModule"
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert Counter(dm.eval_groups()) == {"a": 4, "b": 4}  # TINY: data.eval_size=8
    # an explicit data choice on the command line still wins
    explicit = compose_train(TINY + ["objective=synthetic_prompted", "data=default"], tmp_path)
    assert explicit.data._target_ == "meal_pl.data.PromptDataModule"


def test_synthetic3_prompted_is_synthetic3_on_three_families(tmp_path):
    cfg = compose_train(TINY + ["objective=synthetic3_prompted"], tmp_path)
    synthetic3 = compose_train(TINY + ["objective=synthetic3"], tmp_path)
    for key in ("rewards", "reference_point", "front", "grid_points"):
        assert cfg.objective[key] == synthetic3.objective[key]
    assert (cfg.objective.warm_start_tags, cfg.objective.warm_start_steps) == ("neutral", 400)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert set(dm.eval_groups()) == {"a", "b", "c"}


def test_the_objectives_warm_start_length_wins_for_every_method(tmp_path):
    from meal_pl.train import build_run

    for algorithm in ("meal", "ric"):
        cfg = compose_train(TINY + ["objective=synthetic_prompted", f"algorithm={algorithm}", "warm_start.steps=3",
                                    "objective.warm_start_steps=5"], tmp_path)
        assert build_run(cfg)[1].warm_start.steps == 5
    assert compose_train(TINY + ["objective=synthetic_prompted"], tmp_path).objective.warm_start_steps == 400
    assert build_run(compose_train(TINY + ["warm_start.steps=3"], tmp_path))[1].warm_start.steps == 3


class RecordingSampling(RejectionSampling):
    """Meal's rollout, keeping each batch's prompts and proposed preferences."""

    def __init__(self) -> None:
        self.proposed: list[tuple[list[str], torch.Tensor]] = []

    def rollout(self, module, prompts):
        r = super().rollout(module, prompts)
        self.proposed.append((r.prompts, r.weights))
        return r


def test_group_source_reads_each_prompts_family_in_training(tmp_path):
    """pwn=group: the rollout hands each training prompt its family's preference distribution."""
    from meal_pl.train import build_run

    cfg = compose_train(TINY + ["objective=synthetic_prompted", "algorithm=ric", "pwn=group", "objective.warm_start_steps=0",
                                "algorithm.pwn.means={a:[0,1],b:[1,0]}", "logger=none", "trainer.max_steps=4",
                                "callbacks.rejection_sampling._target_=test_synthetic_prompts.RecordingSampling"], tmp_path)
    datamodule, module, trainer = build_run(cfg)
    trainer.fit(module, datamodule=datamodule)
    recorder = next(cb for cb in trainer.callbacks if isinstance(cb, RecordingSampling))
    by_family = {"a": [], "b": []}
    for prompts, weights in recorder.proposed:
        for prompt, w in zip(prompts, weights[:, 0].tolist(), strict=True):
            by_family[datamodule.groups[prompt]].append(w)
    assert len(by_family["a"]) >= 8 and len(by_family["b"]) >= 8
    # E[w_0] = 0.25 on family a, 0.75 on family b (alpha = 0.5 + mean)
    assert statistics.fmean(by_family["b"]) - statistics.fmean(by_family["a"]) > 0.2
