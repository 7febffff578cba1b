"""data.known_answers: the nearest training prompts' answers in the prompt, the rewards' view of it unchanged."""

import pytest
import torch

from meal_pl.data import PromptDataModule
from meal_pl.retrieval import HEADER, insert_known_answers, nearest_store_entries, with_known_answers
from meal_pl.rewards.relevance import last_request


def test_answers_go_before_the_last_human_turn_so_the_request_stays_what_the_rewards_read():
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: How do I bake bread?\n\nAssistant:"
    out = insert_known_answers(prompt, ["Knead the dough well and let it rise for an hour.", "No."], words=4)
    assert out.endswith("\n\nHuman: How do I bake bread?\n\nAssistant:")
    assert out.startswith("\n\nHuman: hi\n\nAssistant: hello\n\n" + HEADER)
    assert "1. Knead the dough well\n2. No.\n\nHuman:" in out  # cut to 4 words, numbered
    assert last_request(out) == last_request(prompt)


def test_a_prompt_that_is_not_hh_format_is_refused_with_the_key():
    with pytest.raises(ValueError, match="data.known_answers"):
        insert_known_answers("just text", ["a"], words=5)


def test_nearest_store_entries_rank_by_cosine_and_cap_k_at_the_store():
    store = torch.eye(3)
    queries = torch.nn.functional.normalize(torch.tensor([[0.1, 1.0, 0.3]]), dim=1)
    assert nearest_store_entries(queries, store, 2) == [[1, 2]]
    assert nearest_store_entries(queries, store, 10) == [[1, 2, 0]]


class _Words:
    """A stand-in encoder: one dimension per known word, so nearness is shared words."""

    vocab = ["bread", "bake", "car", "fix"]

    def embed(self, texts):
        rows = torch.tensor([[float(w in t.lower()) for w in self.vocab] + [1e-3] for t in texts])
        return torch.nn.functional.normalize(rows, dim=1)


def test_each_prompt_gets_its_nearest_store_prompts_answers():
    store = ["\n\nHuman: how to bake bread\n\nAssistant:", "\n\nHuman: fix my car\n\nAssistant:"]
    answers = {store[0]: ["Use flour."], store[1]: ["Check the oil.", "Go away."]}
    query = "\n\nHuman: can I bake bread at home\n\nAssistant:"
    out = with_known_answers([query, store[1]], store, answers, k=1, words=10, encoder=_Words())
    assert "1. Use flour.\n\nHuman: can I bake" in out[query]
    assert "1. Check the oil.\n2. Go away." in out[store[1]]  # a store prompt's nearest is itself


def test_without_self_a_store_prompt_reads_its_nearest_other_as_an_unseen_prompt_does():
    store = ["\n\nHuman: how to bake bread\n\nAssistant:", "\n\nHuman: fix my car\n\nAssistant:",
             "\n\nHuman: bake bread fast\n\nAssistant:"]
    answers = {store[0]: ["Use flour."], store[1]: ["Check the oil."], store[2]: ["Use a hot oven."]}
    query = "\n\nHuman: can I bake bread at home\n\nAssistant:"
    out = with_known_answers([query, store[0]], store, answers, k=1, words=10, encoder=_Words(), include_self=False)
    assert "1. Use flour.\n\nHuman: can I bake" in out[query]  # not in the store: its nearest, as before
    assert "Use a hot oven." in out[store[0]] and "Use flour." not in out[store[0]]


def test_datamodule_rewrites_every_prompt_and_keeps_responses_groups_and_the_hold_out(tmp_path):
    rows = [f'{{"prompt": "\\n\\nHuman: question {i} about topic {i % 3}\\n\\nAssistant:", "response": "answer number {i} end", '
            f'"group": "g{i % 2}"}}' for i in range(24)]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(rows))
    plain = PromptDataModule(path=str(path), batch_size=4, eval_size=4)
    plain.setup()
    dm = PromptDataModule(path=str(path), batch_size=4, eval_size=4, known_answers=1)
    dm.setup()
    assert [last_request(p) for p in dm.eval_prompts()] == [last_request(p) for p in plain.eval_prompts()]
    assert all(HEADER in p for p in dm.train_prompts + dm.eval_prompts())
    assert dm.eval_groups() == plain.eval_groups()
    held_out_answers = {a for p in plain.eval_prompts() for a in plain.responses[p]}
    for p in dm.eval_prompts():  # an evaluation prompt never reads its own (or any held-out) answer
        known = p.split(HEADER, 1)[1].split("Human:", 1)[0]
        assert not any(a in known for a in held_out_answers)
    for p in dm.train_prompts:
        assert dm.responses[p][0] in p  # its nearest is itself
    apart = PromptDataModule(path=str(path), batch_size=4, eval_size=4, known_answers=1, known_answers_self=False)
    apart.setup()
    assert [last_request(p) for p in apart.eval_prompts()] == [last_request(p) for p in plain.eval_prompts()]
    for p in apart.train_prompts:  # never its own answer, as an evaluation prompt never reads its own
        assert apart.responses[p][0] not in p.split(HEADER, 1)[1].split("Human:", 1)[0]


@pytest.mark.parametrize("key,value", [("known_answers", -1), ("known_answer_words", 0), ("known_answers", True),
                                       ("known_answers_self", "no")])
def test_bad_known_answer_settings_are_refused_with_the_key(key, value):
    with pytest.raises(ValueError, match=f"data.{key}"):
        PromptDataModule(**{key: value})
