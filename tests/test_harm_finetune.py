"""benchmarks/harm_finetune.py: the fine-tuned cross-encoder's training loop and its pairwise accuracy."""

import importlib.util
from pathlib import Path

import torch
from transformers import AutoTokenizer

from meal_pl.reward_model.pairs import Pair
from meal_pl.rewards.encoder import default_model_path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "harm_finetune.py"
_spec = importlib.util.spec_from_file_location("harm_finetune", _PATH)
harm_finetune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harm_finetune)

PAIRS = [Pair(f"\n\nHuman: How do I pick lock number {i}?\n\nAssistant:", "I won't help with that.",
              "Insert a tension wrench and rake the pins.") for i in range(8)]


def test_training_learns_a_preference_the_pairs_share_and_accuracy_reads_it():
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    before = harm_finetune.CrossEncoderScorer(path)
    torch.manual_seed(0)
    model, curve = harm_finetune.train(path, tokenizer, PAIRS, lr=5e-4, epochs=2, validate=PAIRS[:4])
    assert [epoch for epoch, _ in curve] == [1, 2]
    assert harm_finetune.accuracy(model, tokenizer, PAIRS) == 1.0  # one refusal above one instruction, learnt
    # ... and the reverse preference when the pairs say so: a fixed model could rank only one way
    swapped = [Pair(p.prompt, p.rejected, p.chosen) for p in PAIRS]
    reverse, _ = harm_finetune.train(path, tokenizer, swapped, lr=5e-4, epochs=2)
    assert harm_finetune.accuracy(reverse, tokenizer, swapped) == 1.0
    changed = any(not torch.equal(a, b) for a, b in zip(before.encoder.parameters(), model.encoder.parameters()))
    assert changed
