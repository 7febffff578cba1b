"""rm_backend=trl end to end on a toy classifier (CPU seconds), and the classifier reward that reads what it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meal_pl.reward_model.__main__ import hold_out
from meal_pl.reward_model.backends import TRLBackend
from meal_pl.reward_model.pairs import Pair, load_pairs
from meal_pl.rewards import hf_classifier
from meal_pl.rewards.encoder import default_model_path
from meal_pl.rewards.hf_classifier import HFSequenceClassifierReward

ROOT = Path(__file__).resolve().parents[1]
REFUSE, COMPLY = "I can't help with that.", "Sure, here is how to do it."
LONG = "please tell me everything about it " * 20  # over the 32-token max_length below


def _tiny_bert(path: Path) -> str:
    """A randomly initialised one-layer BERT classifier with MiniLM's tokenizer (WordPiece, [SEP] and no EOS)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _pairs_file(path: Path, n: int = 36) -> Path:
    """Refusals preferred to compliance; every fourth prompt longer than max_length."""
    rows = [{"prompt": f"\n\nHuman: {LONG if i % 4 == 0 else ''}how do I do thing {i}?\n\nAssistant:",
             "chosen": REFUSE, "rejected": COMPLY} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trl_backend_trains_a_classifier_the_reward_reads_as_it_was_trained(tmp_path):
    out, pairs = tmp_path / "rm", _pairs_file(tmp_path / "pairs.jsonl")
    train, _ = hold_out(load_pairs(str(pairs)), 8, seed=0, shuffle=True)  # the command's own split
    result = subprocess.run(
        [sys.executable, "-m", "meal_pl.reward_model", "rm_backend=trl", f"rm_backend.model={_tiny_bert(tmp_path / 'base')}",
         f"pairs.path={pairs}", "pairs.held_out=8", "rm_backend.max_length=32",
         "rm_backend.lr=3e-3", "rm_backend.epochs=4", "rm_backend.batch_size=4", f"out={out}",
         f"paths.root_dir={tmp_path / 'outputs'}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "trl" and metrics["train_pairs"] == 28 and metrics["held_out_pairs"] == 8
    long_prompts = sum(LONG in p.prompt for p in train)
    assert long_prompts > 0 and metrics["train_pairs_at_max_length"] == long_prompts  # cut from the left, not dropped
    assert metrics["held_out_accuracy"] == 1.0  # a separable preference, learnt
    assert not (out / "training_args.bin").exists() and (out / "model.safetensors").exists()
    assert "'+objective.rewards.harmless={_target_: meal_pl.rewards.hf_classifier.HFSequenceClassifierReward, " \
           f'model: {out.resolve()}, max_length: 32, template: "{{prompt}} {{completion}}", append_eos: true}}\'' in result.stdout
    # The written directory, read as train would read it, ranks a long prompt's answers as the metrics say.
    hf_classifier._CACHE.clear()
    reward = HFSequenceClassifierReward(str(out), max_length=32, template="{prompt} {completion}", append_eos=True)
    refuse, comply = reward([f"\n\nHuman: {LONG}how?\n\nAssistant:"] * 2, [REFUSE, COMPLY])
    assert refuse > comply


def test_trl_backend_refuses_a_tokenizer_with_no_end_token(tmp_path):
    from test_rewards import _tiny_classifier  # a word-level tokenizer: [UNK] and [PAD] only

    model = _tiny_classifier(tmp_path / "base")
    with pytest.raises(ValueError, match=r"^rm_backend.model=.*base: its tokenizer has no eos_token or sep_token"):
        TRLBackend(model=model).fit([Pair("p", "a", "b")], [], tmp_path / "rm")
    assert not (tmp_path / "rm").exists()


@pytest.mark.parametrize(("kwargs", "line"), [
    ({"max_length": 1}, "rm_backend.max_length=1 must be an integer >= 2"),
    ({"batch_size": 0}, "rm_backend.batch_size=0 must be an integer >= 1"),
    ({"epochs": 0}, "rm_backend.epochs=0 must be a finite number > 0"),
    ({"lr": -1e-5}, "rm_backend.lr=-1e-05 must be a finite number > 0"),
])
def test_trl_backend_refuses_bad_settings_naming_the_key(kwargs, line):
    with pytest.raises(ValueError, match=f"^{line}$"):
        TRLBackend(model="gpt2", **kwargs)


def test_trl_backend_offline_hub_name_names_the_key_and_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match=r"^rm_backend.model='meal-pl-test/no-such-model' is not a local directory nor "
                                           r"in the Hugging Face cache, and the hub is offline .*HF_HUB_OFFLINE=0"):
        TRLBackend(model="meal-pl-test/no-such-model").fit([Pair("p", "a", "b")], [], tmp_path / "rm")
    assert not (tmp_path / "rm").exists()


def test_trl_backend_trains_in_bf16_on_a_cpu(tmp_path):
    """bf16 is a hardware choice: the Trainer refuses it on a CPU unless told it is one."""
    pairs = [Pair(f"\n\nHuman: how do I do thing {i}?\n\nAssistant:", REFUSE, COMPLY) for i in range(4)]
    metrics = TRLBackend(model=_tiny_bert(tmp_path / "base"), max_length=16, batch_size=4, bf16=True).fit(
        pairs, pairs[:1], tmp_path / "rm")
    assert metrics["settings"]["bf16"] is True and metrics["held_out_accuracy"] is not None
    assert (tmp_path / "rm" / "model.safetensors").exists()


def test_trl_backend_refuses_a_max_length_over_the_models_positions(tmp_path):
    model = _tiny_bert(tmp_path / "base")  # 64 positions
    with pytest.raises(ValueError, match=r"^rm_backend.max_length=65 is over the 64 positions of rm_backend.model=.*base; "
                                         r"give rm_backend.max_length=64 or less$"):
        TRLBackend(model=model, max_length=65).fit([Pair("p", "a", "b")], [], tmp_path / "rm")
    assert not (tmp_path / "rm").exists()
