"""warm_start.source=policy: the warm start on the policy's own answers (RiC's offline stage on what it
writes) instead of the data's."""

import pytest
import torch
from conftest import train_cli
from test_meta import CORPUS, micro_module

from meal_pl import sft
from meal_pl.sft import own_answers
from meal_pl.train import train


def test_own_answers_are_the_policys_samples_under_the_uniform_preference():
    module = micro_module("alternating").train()
    prompts = CORPUS[:3]
    pairs, dropped = own_answers(module, prompts, answers=2, seed=7)
    assert dropped == 0 and [p for p, _ in pairs] == prompts * 2 and module.training  # train mode restored
    uniform = torch.full((3, 2), 0.5, dtype=torch.float64)
    module.eval()
    assert [a for _, a in pairs[:3]] == module.respond(prompts, uniform, seed=7)
    assert [a for _, a in pairs[3:]] == module.respond(prompts, uniform, seed=8)
    assert [a for _, a in pairs[:3]] != [a for _, a in pairs[3:]]  # two seeds, two sets of answers


def test_answers_that_are_empty_or_echo_the_conditioning_text_are_dropped(monkeypatch):
    module = micro_module("alternating")
    module.conditioner.header = "\nPreference:"  # as conditioning=text's
    canned = iter([["a real answer", "Preference: a 0.50, b 0.50", "  "], ["ok. Preference: a 1.00", "fine", "x"]])
    monkeypatch.setattr(module, "respond", lambda prompts, weights, seed=None: next(canned))
    pairs, dropped = own_answers(module, CORPUS[:3], answers=2, seed=0)
    assert dropped == 3 and pairs == [(CORPUS[0], "a real answer"), (CORPUS[1], "fine"), (CORPUS[2], "x")]


def test_a_run_warm_starts_on_the_policys_own_answers(tiny_cfg, monkeypatch):
    seen = {}
    original = sft.warm_start_on

    def spy(module, stage, pairs, what="answers", announce=True):
        seen["pairs"], seen["train_prompts"] = pairs, list(module.trainer.datamodule.train_prompts)
        seen["data_pairs"] = module.trainer.datamodule.sft_pairs()
        return original(module, stage, pairs, what, announce)

    monkeypatch.setattr(sft, "warm_start_on", spy)
    train(tiny_cfg("objective=synthetic", "logger=none", "trainer.max_steps=1", "warm_start.source=policy",
                   "warm_start.answers=2", "warm_start.prompts=4"))
    prompts = [p for p, _ in seen["pairs"]]
    assert len(seen["pairs"]) == 8 and prompts == seen["train_prompts"][:4] * 2
    assert not set(seen["pairs"]) & set(seen["data_pairs"])  # not the data's answers


@pytest.mark.parametrize("override, named", [("warm_start.source=web", "warm_start.source='web'"),
                                              ("warm_start.answers=0", "warm_start.answers=0")])
def test_a_bad_warm_start_source_is_one_line_naming_the_key(monkeypatch, capsys, tmp_path, override, named):
    code, err = train_cli(monkeypatch, capsys, "objective=synthetic", f"hydra.run.dir={tmp_path}", override)
    assert code != 0 and named in err and len(err.strip().splitlines()) == 1
