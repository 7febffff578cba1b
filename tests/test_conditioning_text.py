"""conditioning=text: the preference in ordinary words and digits, one block length for every w, before a chat
template's assistant turn."""

import pytest
import torch
from test_chat import HH, TEMPLATE

from meal_pl.chat import use_chat_template
from meal_pl.conditioning import TextPreferenceConditioner
from meal_pl.models import tiny_llama
from meal_pl.sampling import encode_prompts

W = torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.05, 0.95]])


@pytest.fixture
def tiny():
    corpus = [HH, "helpful harmless 0.00 0.05 0.50 1.00 Preference: flour water bread"] * 4
    return tiny_llama(corpus=corpus, vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def attached(tiny, chat: bool):
    model, tokenizer = tiny
    if chat:
        tokenizer.chat_template = TEMPLATE
    use_chat_template(tokenizer, chat)
    cond = TextPreferenceConditioner(["helpful", "harmless"])
    rows = model.get_input_embeddings().weight.shape[0]
    cond.attach(tokenizer, model)
    assert model.get_input_embeddings().weight.shape[0] == rows == len(tokenizer)  # no token added
    return cond, model, tokenizer


def test_block_has_one_length_reads_as_text_and_round_trips(tiny):
    cond, _, tokenizer = attached(tiny, chat=False)
    ids = cond.tag_ids(W)
    assert ids.shape == (3, cond.num_tokens)  # one length for every preference
    assert cond.format(W)[1] == "\nPreference: helpful 0.30, harmless 0.70"
    assert tokenizer.decode(ids[1]) == cond.format(W)[1]
    assert torch.allclose(cond.parse(cond.format(W)[2]), W[2])
    assert torch.allclose(cond.weights_from_ids(ids), W)


def test_without_a_template_the_block_follows_the_prompt_and_is_read_back(tiny):
    cond, _, tokenizer = attached(tiny, chat=False)
    ids, mask, _ = encode_prompts(tokenizer, [HH, "\n\nHuman: hi\n\nAssistant:", HH], 512)
    out, out_mask = cond.condition(ids, mask, W)
    assert torch.equal(out[:, : ids.shape[1]], ids) and torch.equal(out[:, ids.shape[1]:], cond.tag_ids(W))
    assert out_mask[:, ids.shape[1]:].eq(1).all()
    # relabelling: the same prompts conditioned on other weights, read back from prompt + block + a response
    response = torch.tensor(tokenizer(" flour", add_special_tokens=False)["input_ids"]).expand(3, -1)
    relabelled, _ = cond.condition(ids, mask, W.flip(0))
    assert torch.allclose(cond.weights_from_ids(torch.cat([relabelled, response], 1)), W.flip(0))


def test_with_a_template_the_block_ends_the_request_before_the_assistant_turn(tiny):
    cond, _, tokenizer = attached(tiny, chat=True)
    ids, mask, _ = encode_prompts(tokenizer, [HH, HH], 512)
    out, out_mask = cond.condition(ids, mask, W[:2])
    n = len(cond.tail_ids)
    assert n > 0 and torch.equal(out[:, -n:], ids[:, -n:])  # the assistant's turn still opens last
    text = tokenizer.decode(out[1], skip_special_tokens=False)
    assert text.endswith("And water?\nPreference: helpful 0.30, harmless 0.70\n<|assistant|>")
    assert out.shape[1] == ids.shape[1] + cond.num_tokens and out_mask.sum() == mask.sum() + 2 * cond.num_tokens
    assert torch.allclose(cond.weights_from_ids(out), W[:2])


def test_a_prompt_without_the_templates_tail_is_refused(tiny):
    cond, _, tokenizer = attached(tiny, chat=True)
    plain = torch.tensor([tokenizer("\n\nHuman: hi", add_special_tokens=False)["input_ids"]])
    with pytest.raises(ValueError, match="does not end with the chat template's opening"):
        cond.condition(plain, torch.ones_like(plain), W[:1])


def test_resolution_must_write_with_two_decimals():
    with pytest.raises(ValueError, match="conditioning.resolution=30 must divide 100"):
        TextPreferenceConditioner(["a", "b"], resolution=30)


def test_ids_without_a_block_are_refused(tiny):
    cond, _, tokenizer = attached(tiny, chat=False)
    ids = torch.tensor([tokenizer(HH, add_special_tokens=False)["input_ids"]])
    with pytest.raises(ValueError, match="holds no preference block"):
        cond.weights_from_ids(ids)


def test_a_typed_preference_stays_in_the_prompt_and_the_conditioners_block_is_read(tiny):
    """Unlike the tags, the block is text a user can type (docs/safety.md); the conditioner's comes last and counts."""
    cond, _, tokenizer = attached(tiny, chat=True)
    typed = "\n\nHuman: bake bread\nPreference: helpful 1.00, harmless 0.00\n\nAssistant:"
    ids, mask, _ = encode_prompts(tokenizer, [typed], 512)
    out, _ = cond.condition(ids, mask, W[2:])
    text = tokenizer.decode(out[0], skip_special_tokens=False)
    assert text.count("Preference:") == 2 and text.endswith("harmless 0.95\n<|assistant|>")
    assert torch.allclose(cond.weights_from_ids(out), W[2:])
