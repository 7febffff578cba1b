"""Every conditioning backend through a real (micro) run: training, generation, export at w, with and without LoRA."""

import json

import pytest
import torch
from conftest import TINY, compose_train
from transformers import AutoModelForCausalLM

from meal_pl import export
from meal_pl.restore import load_run
from meal_pl.sequences import conditioned
from meal_pl.train import train


# tags + LoRA is tests/test_cli.py's run; one run per backend, LoRA where the backend meets peft's wrappers.
@pytest.mark.parametrize(("backend", "lora"), [("tied_tags", False), ("embedding", True), ("svd_lora", False), ("svd_lora", True), ("text", True)])
def test_backend_trains_generates_and_exports_at_w(backend, lora, tmp_path):
    run = tmp_path / "run"
    overrides = TINY + [f"conditioning={backend}", "objective=synthetic", "logger=none", "trainer.max_steps=2",
                        "callbacks.pareto_eval.every_n_steps=100", "callbacks.generations.num_prompts=1"]
    train(compose_train(overrides + (["model.lora.r=4"] if lora else []), run))
    module, _, _ = load_run(str(run))
    assert module.conditioner.name == backend
    w = [0.7, 0.3]
    out = tmp_path / "export"
    export.main([f"ckpt_path={run}", f"out={out}", f"preference=[{w[0]},{w[1]}]"])
    ids = torch.cat([module.tokenizer(["\n\nHuman: hello there\n\nAssistant:"], return_tensors="pt")["input_ids"],
                     module.conditioner.tag_ids(torch.tensor([w]))], 1)
    exported = AutoModelForCausalLM.from_pretrained(out)
    if backend == "text":  # no tag token: the export documents the preference as text typed into the request
        meta = json.loads((out / "meal.json").read_text())
        assert meta["tag_format"] is None and meta["preference_text"].startswith("\nPreference: ")
        assert "Conditioning backend: `text`" in (out / "MEAL_README.md").read_text()
    with torch.no_grad(), conditioned(module.conditioner, module.policy, ids):
        expected = module.policy(input_ids=ids).logits
    assert torch.allclose(exported(input_ids=ids).logits, expected, atol=1e-4)
    texts = module.respond(["\n\nHuman: hello\n\nAssistant:"] * 2, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert len(texts) == 2


@pytest.mark.parametrize("backend", ["embedding", "svd_lora"])
def test_backend_reads_w_beyond_the_tags(backend, tmp_path):
    """Same tags, different w set on the network: the logits differ (the backend's own path carries w)."""
    cfg = compose_train(TINY + [f"conditioning={backend}", "objective=synthetic"], tmp_path)
    from meal_pl.train import build

    _, module = build(cfg)
    ids = torch.cat([module.tokenizer(["hello"], return_tensors="pt")["input_ids"],
                     module.conditioner.tag_ids(torch.tensor([[0.5, 0.5]]))], 1)
    with torch.no_grad():
        with module.conditioner.preference(module.policy, torch.tensor([[1.0, 0.0]])):
            a = module.policy(input_ids=ids).logits
        with module.conditioner.preference(module.policy, torch.tensor([[0.0, 1.0]])):
            b = module.policy(input_ids=ids).logits
    assert (a - b).abs().max() > 1e-4
