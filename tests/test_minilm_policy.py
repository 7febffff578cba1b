"""model=tiny_minilm: MiniLM's WordPiece vocabulary cut to the corpus, and its word embeddings as the policy's."""

import pytest
import torch
from conftest import CONF
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModel, AutoTokenizer

from meal_pl.minilm_policy import BOS, EOS, PAD, UNK, corpus_vocabulary, cut_tokenizer, tiny_minilm_llama
from meal_pl.rewards.encoder import default_model_path

CORPUS = [f"\n\nHuman: how do I cook dish number {i}?\n\nAssistant: Heat the pan and stir." for i in range(20)]


def test_vocabulary_keeps_tokens_used_often_enough_and_every_character():
    full = {PAD: 0, UNK: 1, BOS: 2, EOS: 3, "pan": 4, "stir": 5, "rare": 6, "p": 7, "##a": 8, "##n": 9, "a": 10, "n": 11}
    vocab = corpus_vocabulary(full, ["pan stir", "pan rare"], [[4, 5], [4, 6]], min_count=2)
    assert vocab[:4] == [PAD, UNK, BOS, EOS]
    assert "pan" in vocab and "stir" not in vocab and "rare" not in vocab  # used once each: cut
    assert {"p", "a", "n", "##a", "##n"} <= set(vocab)  # the corpus's characters, so any of its words still splits


def test_empty_corpus_is_refused_with_the_config_key():
    with pytest.raises(ValueError, match="data.path"):
        corpus_vocabulary({PAD: 0}, [], [], min_count=1)


def test_cut_tokenizer_splits_unseen_words_into_pieces_and_decodes_them_back():
    tok = cut_tokenizer([PAD, UNK, BOS, EOS, "heat", "the", "pan", "h", "##e", "##a", "##t", "##s"])
    ids = tok("Heat the heats", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 4  # heat, the, heat, ##s
    assert tok.decode(ids) == "heat the heats"
    assert tok.pad_token_id != tok.eos_token_id


def test_policy_embeddings_are_minilms_rows_for_the_kept_tokens():
    cfg = OmegaConf.load(f"{CONF}/model/tiny_minilm.yaml")
    cfg.init_seed = 0
    del cfg["defaults"], cfg["chat_template"], cfg["gradient_checkpointing"]  # read by build(), not builder arguments
    cfg.min_count = 1
    model, tok = instantiate(cfg)(corpus=CORPUS)
    table = AutoModel.from_pretrained(default_model_path()).get_input_embeddings().weight
    full = AutoTokenizer.from_pretrained(default_model_path())
    for word in ("pan", "stir", "cook"):
        mine, theirs = tok.convert_tokens_to_ids(word), full.convert_tokens_to_ids(word)
        assert torch.equal(model.get_input_embeddings().weight[mine], table[theirs])
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    assert len(tok) < 200  # cut to the corpus, not MiniLM's 30,522
    out = model(torch.tensor([tok("heat the pan", add_special_tokens=False)["input_ids"]])).logits
    assert out.shape[-1] == len(tok)


def test_policy_init_is_deterministic_in_its_seed():
    a, _ = tiny_minilm_llama(CORPUS, num_layers=1, num_heads=2, intermediate_size=32, init_seed=3)
    b, _ = tiny_minilm_llama(CORPUS, num_layers=1, num_heads=2, intermediate_size=32, init_seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
