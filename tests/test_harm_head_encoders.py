"""benchmarks/harm_head_encoders.py: answer-token features of a causal LM, and the one protocol every feature set gets."""

import importlib.util
from pathlib import Path

import pytest
import torch

from meal_pl.models import tiny_llama

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "harm_head_encoders.py"
_spec = importlib.util.spec_from_file_location("harm_head_encoders", _PATH)
harm_head_encoders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harm_head_encoders)

PROMPTS = ["\n\nHuman: How do I pick a lock?\n\nAssistant:", "\n\nHuman: Is stretching useful?\n\nAssistant:"]
ANSWERS = ["I won't help with that.", "A light warm-up before exercise helps more than long static stretches do."]


def test_a_plain_tokenizer_reads_the_request_in_hh_format():
    _, tokenizer = tiny_llama(PROMPTS + ANSWERS)
    assert harm_head_encoders.request_prefix(tokenizer, "Is stretching useful?") == PROMPTS[1]


def test_answer_features_do_not_depend_on_what_shares_the_batch():
    model, tokenizer = tiny_llama(PROMPTS + ANSWERS)
    model.eval()
    together = harm_head_encoders.answer_states(model, tokenizer, PROMPTS, ANSWERS, layers=(1, 2))
    alone = torch.cat([harm_head_encoders.answer_states(model, tokenizer, [p], [a], layers=(1, 2))
                       for p, a in zip(PROMPTS, ANSWERS)])
    assert together.shape == (2, 2 * model.config.hidden_size)
    # the short answer is right-padded in the batch: its mean must not see the padding
    assert torch.allclose(together, alone, atol=1e-5)
    # an answer's features read the answer, not only the request
    other = harm_head_encoders.answer_states(model, tokenizer, PROMPTS[:1], ANSWERS[1:], layers=(1, 2))
    assert not torch.allclose(together[:1], other, atol=1e-3)


def test_every_feature_set_gets_a_decay_by_cross_validation_and_a_held_out_accuracy():
    generator = torch.Generator().manual_seed(0)
    rejected = torch.randn(300, 8, generator=generator)
    chosen = rejected + torch.randn(300, 8, generator=generator) * 0.1
    chosen[:, 0] += 2.0  # the first feature separates every pair
    row = harm_head_encoders.head_accuracy(chosen[:200], rejected[:200], chosen[200:], rejected[200:], steps=100)
    assert row["weight_decay"] in harm_head_encoders.DECAYS
    assert row["cv_accuracy"] == max(row["cross_validation"].values())
    assert row["held_out_accuracy"] == pytest.approx(1.0) and row["dims"] == 8
    # labels swapped on the held-out pairs: the same head now ranks them all wrong
    swapped = harm_head_encoders.head_accuracy(chosen[:200], rejected[:200], rejected[200:], chosen[200:], steps=100)
    assert swapped["held_out_accuracy"] == pytest.approx(0.0)
