"""Prompts through a model's chat template (model.chat_template: true), and tags that start from their words."""

import pytest

from meal_pl.chat import format_prompts, hh_to_messages, use_chat_template
from meal_pl.conditioning import TextTagConditioner
from meal_pl.models import tiny_llama
from meal_pl.sampling import encode_prompts

# A ChatML-like template, as SmolLM2-Instruct and Qwen-Instruct use.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
HH = "\n\nHuman: How do I bake bread?\n\nAssistant: With flour.\n\nHuman: And water?\n\nAssistant:"


@pytest.fixture
def tiny():
    corpus = [HH, "helpful harmless 0.00 0.05 0.50 1.00 flour water bread"] * 4
    return tiny_llama(corpus=corpus, vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def test_hh_text_becomes_chat_messages_ending_before_the_assistant_turn():
    assert hh_to_messages(HH) == [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "With flour."},
        {"role": "user", "content": "And water?"},
    ]
    assert hh_to_messages("just a request") == [{"role": "user", "content": "just a request"}]


def test_prompts_are_encoded_through_the_template_only_when_switched_on(tiny):
    _, tokenizer = tiny
    tokenizer.chat_template = TEMPLATE
    plain, _, _ = encode_prompts(tokenizer, [HH], 512)
    assert format_prompts(tokenizer, [HH]) == [HH]  # off by default (the tiny model reads HH text)
    use_chat_template(tokenizer, True)
    rendered = "<|user|>How do I bake bread?\n<|assistant|>With flour.\n<|user|>And water?\n<|assistant|>"
    assert format_prompts(tokenizer, [HH]) == [rendered]
    chat, _, _ = encode_prompts(tokenizer, [HH], 512)
    assert chat[0].tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"] != plain[0].tolist()


def test_a_model_without_a_template_is_refused_naming_the_key(tiny):
    _, tokenizer = tiny
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="model.chat_template=true but this model's tokenizer has no chat template"):
        use_chat_template(tokenizer, True)


def test_chat_model_tags_start_next_to_the_token_that_opens_the_answer(tiny):
    model, tokenizer = tiny
    tokenizer.chat_template = TEMPLATE
    use_chat_template(tokenizer, True)
    opener = tokenizer("<|assistant|>", add_special_tokens=False)["input_ids"][-1]
    conditioner = TextTagConditioner(["helpful", "harmless"], resolution=20)
    conditioner.attach(tokenizer, model)
    emb = model.get_input_embeddings().weight.detach()
    tags = conditioner.token_ids.flatten()
    spread = emb[:opener].std()
    assert (emb[tags] - emb[opener]).norm(dim=-1).max() < 0.1 * spread * emb.shape[1] ** 0.5  # close to the opener
    assert len({tuple(row.tolist()) for row in emb[tags]}) == len(tags)  # yet all distinct
