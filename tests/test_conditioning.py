"""Preference conditioning: the tags (quantisation, tokenizer round trip, validation of user input) and
the backends that add their own path for w (merge = conditioned forward, LoRA, generation, torch.func)."""

import contextlib
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from meal_pl import export
from meal_pl.conditioning import TextTagConditioner, check_preference
from meal_pl.conditioning.base import preference_modules
from meal_pl.models import apply_lora, export_policy, tiny_llama
from meal_pl.sft import warm_start

CORPUS = ["\n\nHuman: how do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt."] * 20


@pytest.fixture(scope="module")
def attached():
    model, tok = tiny_llama(CORPUS, vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    cond = TextTagConditioner(["helpful", "harmless", "humor"], resolution=20)
    before = model.get_input_embeddings().weight.shape[0]
    cond.attach(tok, model)
    return cond, tok, model, before


def test_quantize_stays_on_simplex_and_lattice():
    cond = TextTagConditioner(["a", "b", "c"], resolution=20)
    w = torch.distributions.Dirichlet(torch.ones(3)).sample((200,))
    q = cond.quantize(w)
    assert torch.allclose(q.sum(-1), torch.ones(200))
    assert torch.allclose(q * 20, (q * 20).round(), atol=1e-5)
    assert (q - w).abs().max() <= 1 / 20 + 1e-6


def test_tags_round_trip_through_tokenizer(attached):
    cond, tok, model, before = attached
    w = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.35, 0.45]])
    ids = cond.tag_ids(w)
    assert ids.shape == (2, 3)
    text = tok.decode(ids[1])
    assert torch.allclose(cond.parse(text), w[1])
    assert cond.format(w)[0] == "<helpful:0.70><harmless:0.30><humor:0.00>"
    # each tag is one token, and the embedding table grew by K * (resolution + 1)
    assert tok(cond.format(w)[1], add_special_tokens=False)["input_ids"] == ids[1].tolist()
    assert model.get_input_embeddings().weight.shape[0] == before + 3 * 21


def test_condition_appends_tags_after_left_padded_prompt(attached):
    cond, tok, _, _ = attached
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ids, m = cond.condition(prompt_ids, mask, w)
    assert ids.shape == (2, 6) and m[:, 3:].eq(1).all()
    assert torch.equal(ids[:, 3:], cond.tag_ids(w))


def test_parse_missing_tag_names_the_objective():
    cond = TextTagConditioner(["helpful", "harmless"])
    with pytest.raises(ValueError, match="harmless"):
        cond.parse("<helpful:1.00>")


@pytest.mark.parametrize(
    "bad, message",
    [([0.5, 0.3, 0.2], "has 3 values"), ([1.2, -0.2], "negative"), ([0.5, 0.6], "sums to 1.1")],
)
def test_check_preference_rejects_bad_vectors(bad, message):
    with pytest.raises(ValueError, match=message):
        check_preference(bad, ["helpful", "harmless"])
    assert torch.allclose(check_preference([0.25, 0.75], ["a", "b"]), torch.tensor([0.25, 0.75]))


# ----- backends (conf/conditioning/*.yaml): each keeps the tags and adds its own path for w -----------------
BACKEND_NAMES = ["tags", "tied_tags", "embedding", "svd_lora", "text"]
W = torch.tensor([[1.0, 0.0], [0.3, 0.7]])


def build(backend: str, lora: bool = False):
    """(conditioner, tiny policy, (B,P) conditioned ids, mask) for a backend from its config file."""
    cond, model, _, ids, mask = build_with_tokenizer(backend, lora)
    return cond, model, ids, mask


def build_with_tokenizer(backend: str, lora: bool = False):
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "conditioning" / f"{backend}.yaml")
    cond = instantiate(cfg)(names=["a", "b"])
    model, tok = tiny_llama(CORPUS, vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    cond.attach(tok, model)
    if lora:
        model = apply_lora(model, cond.token_ids.flatten().tolist(), r=2)
        cond.unfreeze(model)
    prompt = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    ids, mask = cond.condition(prompt, torch.ones_like(prompt), W)
    return cond, model.eval(), tok, ids, mask


def logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_merge_matches_conditioned_forward_and_reloads(backend, tmp_path):
    cond, model, ids, mask = build(backend)
    assert cond.name == backend
    with cond.preference(model, W[1:]):
        expected = logits(model, ids[1:], mask[1:])
    merged = cond.merge(copy.deepcopy(model), W[1])
    assert not [m for m in merged.modules() if type(m).__module__.startswith("meal_pl")]
    torch.testing.assert_close(logits(merged, ids[1:], mask[1:]), expected, atol=1e-5, rtol=0)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(reloaded, ids[1:], mask[1:]), expected, atol=1e-5, rtol=0)
    if cond.reads_preference:  # merged at the other preference: a different model
        other = cond.merge(copy.deepcopy(model), W[0])
        assert not torch.allclose(logits(other, ids[1:], mask[1:]), expected, atol=1e-3)


@pytest.mark.parametrize("backend", ["embedding", "svd_lora"])
def test_preference_changes_logits_and_is_cleared_after(backend):
    cond, model, ids, mask = build(backend)
    plain = logits(model, ids, mask)
    with cond.preference(model, W[[0, 0]]):
        first = logits(model, ids, mask)
    with cond.preference(model, torch.tensor([[0.0, 1.0]] * 2)):
        second = logits(model, ids, mask)
    assert (first - second).abs().max() > 1e-3
    assert (first - plain).abs().max() > 1e-3
    torch.testing.assert_close(logits(model, ids, mask), plain)  # cleared: the block's w is gone
    assert all(m.preference is None for m in preference_modules(model))


@pytest.mark.parametrize("backend", ["tags", "tied_tags"])
def test_preference_is_a_no_op_for_tag_only_backends(backend):
    cond, model, ids, mask = build(backend)
    assert not preference_modules(model) or backend == "tied_tags"
    plain = logits(model, ids, mask)
    with cond.preference(model, W[[1, 0]]):  # the opposite of what the tags say: only the tags count
        torch.testing.assert_close(logits(model, ids, mask), plain)


def test_preference_is_quantised_like_the_tags():
    cond, model, _, _ = build("embedding")
    (edit,) = preference_modules(model)
    with cond.preference(model, torch.tensor([[0.333, 0.667]])):
        assert torch.equal(edit.preference, cond.quantize(torch.tensor([[0.333, 0.667]])))
        assert torch.equal(edit.preference, cond.weights_from_ids(cond.tag_ids(torch.tensor([[0.333, 0.667]]))))


def test_tied_tags_share_parameters_across_values():
    cond, model, _, _ = build("tied_tags")
    (edit,) = preference_modules(model)
    table = model.get_input_embeddings()
    low, high = cond.tag_ids(torch.tensor([[0.3, 0.7]]))[0, 0], cond.tag_ids(torch.tensor([[0.7, 0.3]]))[0, 0]
    embeds = [model.model.meal_preference.edit(torch.tensor([[t]]), table(torch.tensor([[t]])))[0, 0] for t in (low, high)]
    torch.testing.assert_close(embeds[0], edit.offset[0] + 0.3 * edit.slope[0])
    torch.testing.assert_close(embeds[1], edit.offset[0] + 0.7 * edit.slope[0])
    embeds[0].sum().backward()  # <a:0.30> alone reaches the same two vectors <a:0.70> is made of
    assert edit.offset.grad[0].abs().sum() > 0 and edit.slope.grad[0].abs().sum() > 0
    assert edit.offset.grad[1].abs().sum() == 0
    torch.testing.assert_close(edit.slope.grad[0], 0.3 * edit.offset.grad[0])


def test_tied_tags_rows_are_at_the_scale_of_the_table():
    cond, model, _, _ = build("tied_tags")
    (edit,) = preference_modules(model)
    plain = model.get_input_embeddings().weight[: cond.token_ids.min()].detach()
    ratio = edit.tag_rows().norm(dim=-1).mean() / plain.norm(dim=-1).mean()
    assert 0.5 < ratio < 2.0
    assert (edit.tag_rows()[:-1] - edit.tag_rows()[1:]).abs().sum(-1).min() > 0  # values are distinct


def test_svd_lora_at_a_vertex_uses_only_that_objectives_values():
    cond, model, ids, mask = build("svd_lora")
    e0 = torch.tensor([[1.0, 0.0]] * 2)
    with cond.preference(model, e0):
        before = logits(model, ids, mask)
        with torch.no_grad():
            for layer in preference_modules(model):
                layer.svd_scale[1] = 5.0  # s_b: no effect at w = e_a
        torch.testing.assert_close(logits(model, ids, mask), before)
        with torch.no_grad():
            for layer in preference_modules(model):
                layer.svd_scale[0] = 5.0  # s_a: moves the output at w = e_a
        assert (logits(model, ids, mask) - before).abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_generation_with_repeated_rows_under_the_preference(backend):
    cond, model, ids, mask = build(backend)
    with cond.preference(model, W):
        # top_k=1: greedy, but through sampling, which allows num_return_sequences > 1
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=True, top_k=1,
                             num_return_sequences=2, pad_token_id=0)
    assert out.shape == (4, ids.shape[1] + 4)
    # Row 2 (second copy of prompt 0) decodes as prompt 0 alone does: each copy saw its own row's w.
    with cond.preference(model, W[:1]):
        alone = model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1], alone[0])


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_functional_call_and_deepcopy_keep_the_backend(backend):
    cond, model, ids, mask = build(backend)
    with cond.preference(model, W):
        expected = logits(model, ids, mask)
        params = dict(model.named_parameters())
        out = torch.func.functional_call(model, params, (), dict(input_ids=ids, attention_mask=mask)).logits
        torch.testing.assert_close(out, expected)
        # swapped-in parameters are the ones used: shifting the backend's own ones changes the output
        own = {n: p + 1.0 for n, p in params.items() if "meal_preference" in n or ".svd_" in n}
        if own:
            moved = torch.func.functional_call(model, {**params, **own}, (), dict(input_ids=ids, attention_mask=mask)).logits
            assert (moved - expected).abs().max() > 1e-3
    clone = copy.deepcopy(model)
    assert len(preference_modules(clone)) == len(preference_modules(model))
    with cond.preference(clone, W):
        torch.testing.assert_close(logits(clone, ids, mask), expected)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_lora_on_forward_backward_and_merge(backend):
    cond, model, ids, mask = build(backend, lora=True)
    own = [p for m in preference_modules(model) for p in m.preference_parameters()]
    assert all(p.requires_grad for p in own)
    with cond.preference(model, W):
        model(input_ids=ids, attention_mask=mask).logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # an adapter that is not the identity, so the merge has work to do
    with cond.preference(model, W[1:]):
        expected = logits(model, ids[1:], mask[1:])
    merged = cond.merge(export_policy(model), W[1])
    torch.testing.assert_close(logits(merged, ids[1:], mask[1:]), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["tied_tags", "embedding", "svd_lora"])
def test_reference_runs_the_frozen_copy(backend):
    cond, model, ids, mask = build(backend)
    with cond.preference(model, W):
        start = logits(model, ids, mask)
        with torch.no_grad():
            for m in preference_modules(model):
                for p in m.preference_parameters():
                    p.add_(0.5)
        moved = logits(model, ids, mask)
        with cond.reference(model):
            torch.testing.assert_close(logits(model, ids, mask), start)
        cond.snapshot(model)
        with cond.reference(model):
            torch.testing.assert_close(logits(model, ids, mask), moved)
    assert (moved - start).abs().max() > 1e-3


def test_merge_refuses_a_bad_preference():
    cond, model, _, _ = build("embedding")
    with pytest.raises(ValueError, match="sums to"):
        cond.merge(model, [0.5, 0.6])


def fake_module(backend: str, lora: bool):
    """The attributes export() reads from a MealModule, around a conditioned tiny policy."""
    cond, model, tok, ids, mask = build_with_tokenizer(backend, lora=lora)
    ref = None if lora else copy.deepcopy(model).requires_grad_(False)
    module = SimpleNamespace(policy=model, ref=ref, tokenizer=tok, conditioner=cond, objective_names=["a", "b"],
                             pwn=None, reference_point=[0.0, 0.0])
    return module, ids, mask


@pytest.mark.parametrize("backend, lora", [("embedding", False), ("svd_lora", True), ("tied_tags", True)])
def test_export_merges_at_the_given_preference(backend, lora, tmp_path):
    module, ids, mask = fake_module(backend, lora)
    cond = module.conditioner
    if cond.reads_preference:
        with pytest.raises(ValueError, match=r"conditioning=.* give preference=\["):
            export.export(module, tmp_path / "x")
    out = export.export(module, tmp_path / "out", preference=[0.3, 0.7])
    meta = json.loads((out / "meal.json").read_text())
    assert meta["conditioning"] == backend and meta["merged_preference"] == pytest.approx([0.3, 0.7])
    with cond.preference(module.policy, W[1:]):
        expected = logits(module.policy, ids[1:], mask[1:])
    policy = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(policy, ids[1:], mask[1:]), expected, atol=1e-5, rtol=0)
    assert preference_modules(module.policy)  # the module's own policy is left conditioned
    # reference/: pi_ref on bare prompts (no preference set), as the PWN's features see it
    prompt = ids[:, :4]
    with contextlib.ExitStack() as stack:
        if lora:
            stack.enter_context(module.policy.disable_adapter())
            stack.enter_context(cond.reference(module.policy))
        expected_ref = logits(module.ref or module.policy, prompt, mask[:, :4])
    reference = AutoModelForCausalLM.from_pretrained(out / "reference")
    torch.testing.assert_close(logits(reference, prompt, mask[:, :4]), expected_ref, atol=1e-5, rtol=0)


def test_warm_start_trains_the_backend_under_the_tags_preference():
    cond, model, ids, mask = build("embedding")
    (edit,) = preference_modules(model)
    before = edit.proj.detach().clone()
    responses = torch.tensor([[20, 21, 2], [22, 23, 2]])
    batches = [(ids, mask, responses, torch.ones_like(responses, dtype=torch.bool))]
    warm_start(model, batches, steps=2, lr=1e-2, conditioner=cond)
    assert (edit.proj - before).abs().max() > 0  # w reached the map: it was set from the tags of each batch
