"""A chat model with several end tokens (Qwen2.5's <|im_end|> and <|endoftext|>): generation stops at any of them and
the response mask ends there, in the decode loop and in HF generate alike."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from meal_pl.sampling import RejectionSampler, end_token_ids, generate_eval_mode, response_mask

TOKEN_EOS, CHAT_END, VOCAB = 5, 7, 32


def qwen_with_two_end_tokens() -> Qwen2ForCausalLM:
    """A one-layer Qwen2 whose head always prefers the generation config's second end token (greedy: it says it first)."""
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    model.lm_head = torch.nn.Linear(16, VOCAB, bias=True)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[CHAT_END] = 10.0
        model.lm_head.bias[9] = 5.0  # the next best: what a run past its end would say
    model.generation_config = GenerationConfig(eos_token_id=[TOKEN_EOS, CHAT_END], pad_token_id=0)
    return model


class Tokenizer:
    """The few attributes generation reads."""
    eos_token_id, pad_token_id, bos_token_id = TOKEN_EOS, 0, None


def test_end_token_ids_are_the_tokenizers_and_the_generation_configs():
    assert end_token_ids(Tokenizer(), qwen_with_two_end_tokens()) == [TOKEN_EOS, CHAT_END]
    assert end_token_ids(Tokenizer()) == [TOKEN_EOS]


@pytest.mark.parametrize("decoder", ["loop", "hf"])
def test_generation_stops_at_either_end_token_and_the_mask_ends_there(decoder):
    model = qwen_with_two_end_tokens()
    sampler = RejectionSampler(num_samples=1, max_new_tokens=6, min_new_tokens=0, decoder=decoder)
    prompt, mask = torch.tensor([[3, 4, 6]]), torch.ones(1, 3, dtype=torch.long)
    responses = generate_eval_mode(sampler, model, Tokenizer(), prompt, mask, [], greedy=True)
    assert responses[0, 0] == CHAT_END and (responses[0, 1:] == 0).all()  # it stopped: padding after the end
    assert response_mask(responses, end_token_ids(Tokenizer(), model)).sum() == 1
    # with the tokenizer's EOS alone (the code before), it would have run on to max_new_tokens
    assert response_mask(torch.tensor([[CHAT_END, 9, 9]]), [TOKEN_EOS]).sum() == 3
