"""meal_pl/decode.py: the lean decode loop gives HF generate's tokens, and leaves the RNG where HF leaves it.

Every comparison runs `RejectionSampler.generate` twice from the same seed, once with `decoder=hf` (transformers'
generate) and once with `decoder=loop`, and asserts the (B*n, T) tokens and the torch RNG state after are equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train, train_cli
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

from meal_pl import decode
from meal_pl.conditioning.base import preference_modules
from meal_pl.models import apply_lora, tiny_llama
from meal_pl.sampling import RejectionSampler, suppressed_ids
from meal_pl.train import train

CORPUS = [f"\n\nHuman: how do I bake bread number {i}?\n\nAssistant: Mix flour, water, yeast and salt {i}." for i in range(40)]
W = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])


pytestmark = pytest.mark.usefixtures("one_thread")


def conditioner(backend: str):
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "conditioning" / f"{backend}.yaml")
    return instantiate(cfg)(names=["a", "b"])


def build(backend: str = "tags", lora: bool = False, eos_bias: float = 0.0, attn: str = "eager"):
    """(conditioner, tiny policy in eval mode, tokenizer, (3,P) left-padded conditioned ids, mask).

    eos_bias adds to the EOS logit in every forward (a hook on the model, so both decoders see it): an
    untrained policy almost never ends a row otherwise.
    """
    cond = conditioner(backend)
    model, tok = tiny_llama(CORPUS, vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            attn_implementation=attn)
    cond.attach(tok, model)
    for module in preference_modules(model):
        if hasattr(module, "svd_scale"):  # the preference singular values, large enough to move the samples
            module.svd_scale.data.fill_(5.0)
    if eos_bias:
        def bias(module, args, out):
            out.logits[..., tok.eos_token_id] += eos_bias
        model.register_forward_hook(bias)
    if lora:
        model = apply_lora(model, cond.token_ids.flatten().tolist(), r=2)
        cond.unfreeze(model)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(5)
            for name, p in model.named_parameters():
                if "lora_B" in name:  # B starts at 0 (the identity): make the adapters change the output
                    p.normal_(0, 0.5)
    lengths = [3, 7, 5]
    width = max(lengths)
    g = torch.Generator().manual_seed(0)
    prompt = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(prompt)
    for row, n in enumerate(lengths):
        prompt[row, width - n:] = torch.randint(3, 250, (n,), generator=g)
        mask[row, width - n:] = 1
    prompt = prompt.masked_fill(mask == 0, tok.pad_token_id)
    ids, mask = cond.condition(prompt, mask, W)
    return cond, model.eval(), tok, ids, mask


def run(decoder: str, model, tok, ids, mask, cond=None, weights=W, seed=0, greedy=False, num_samples=None, draws=None,
        **settings):
    """(tokens, RNG state after) of one RejectionSampler.generate call from `seed`; `draws` (a list) receives
    every probability tensor handed to torch.multinomial."""
    sampler = RejectionSampler(decoder=decoder, **settings)
    suppress = suppressed_ids(tok, cond.token_ids.flatten().tolist()) if cond is not None else []
    torch.manual_seed(seed)
    context = cond.preference(model, weights) if cond is not None and cond.reads_preference else torch.no_grad()
    multinomial = torch.multinomial

    def recorded(probs, *args, **kwargs):
        draws.append(probs.clone())
        return multinomial(probs, *args, **kwargs)

    if draws is not None:
        torch.multinomial = recorded
    try:
        with context:
            out = sampler.generate(model, ids, mask, tok.pad_token_id, tok.eos_token_id, num_samples=num_samples,
                                   greedy=greedy, suppress_ids=suppress)
    finally:
        torch.multinomial = multinomial
    return out, torch.get_rng_state()


def assert_same(model, tok, ids, mask, **kwargs) -> torch.Tensor:
    assert decode.unsupported(model, ids) is None  # the loop, not its fallback, is what is compared
    hf_draws, loop_draws = [], []
    hf, hf_rng = run("hf", model, tok, ids, mask, draws=hf_draws, **kwargs)
    loop, loop_rng = run("loop", model, tok, ids, mask, draws=loop_draws, **kwargs)
    assert loop.shape == hf.shape
    assert torch.equal(loop, hf)
    assert torch.equal(loop_rng, hf_rng)  # the same draws: what runs next sees the same random stream
    # the same distributions to the last bit, every step (tokens alone would hide a last-bit difference)
    assert len(loop_draws) == len(hf_draws) == (0 if kwargs.get("greedy") else hf.shape[1])
    assert all(torch.equal(a, b) for a, b in zip(loop_draws, hf_draws, strict=True))
    return loop


SETTINGS = {
    "plain": dict(num_samples=3, max_new_tokens=12),
    "temperature": dict(num_samples=3, max_new_tokens=12, temperature=0.7),
    "top_k": dict(num_samples=3, max_new_tokens=12, top_k=20),
    "top_p": dict(num_samples=3, max_new_tokens=12, top_p=0.8),
    "top_p_keeps_one": dict(num_samples=2, max_new_tokens=12, top_p=0.001),  # the top token alone passes
    "all_warpers": dict(num_samples=2, max_new_tokens=12, temperature=1.3, top_k=50, top_p=0.9),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_sampling_matches_hf(name):
    cond, model, tok, ids, mask = build(eos_bias=3.0)
    settings = {**SETTINGS[name], "min_new_tokens": 4}
    for seed in range(3):
        out = assert_same(model, tok, ids, mask, cond=cond, seed=seed, **settings)
        assert out.shape[0] == 3 * settings["num_samples"]
        assert not torch.isin(out, cond.token_ids).any()  # suppressed: the tags (and padding/BOS, below)
    ends = out == tok.eos_token_id
    assert ends.any() and not ends[:, :4].any()  # rows end, never before min_new_tokens
    if name == "top_p_keeps_one":  # the biased EOS is every row's top token once allowed: all end at once
        assert out.shape[1] == 5 and ends[:, 4].all()
        return
    finished_early = ends[:, :-1].any(1)
    assert finished_early.any()  # and rows that ended get padding up to the others' length
    assert (out[finished_early][:, -1] == tok.pad_token_id).all()


def test_padding_and_bos_are_suppressed_and_greedy_matches_hf():
    cond, model, tok, ids, mask = build()
    out = assert_same(model, tok, ids, mask, cond=cond, greedy=True, num_samples=1, max_new_tokens=10)
    assert out.shape == (3, 10)
    assert not torch.isin(out, torch.tensor([tok.pad_token_id, tok.bos_token_id])).any()
    # no suppressed ids at all, and a mask with no padding (generate drops an all-ones mask)
    full = torch.ones_like(ids)
    assert_same(model, tok, ids, full, greedy=True, num_samples=1, max_new_tokens=6)
    assert_same(model, tok, ids, full, num_samples=2, max_new_tokens=6)


def test_sdpa_attention_matches_hf():
    """The hub models' attention (the tiny model's default is eager): padded and unpadded prompts."""
    cond, model, tok, ids, mask = build("embedding", eos_bias=3.0, attn="sdpa")
    assert model.config._attn_implementation == "sdpa"
    assert_same(model, tok, ids, mask, cond=cond, num_samples=3, max_new_tokens=10, min_new_tokens=2, top_p=0.9)
    assert_same(model, tok, ids, torch.ones_like(ids), cond=cond, num_samples=2, max_new_tokens=6)


def test_early_stop_when_every_row_has_ended():
    cond, model, tok, ids, mask = build(eos_bias=6.0)
    out = assert_same(model, tok, ids, mask, cond=cond, num_samples=4, max_new_tokens=40, min_new_tokens=2)
    assert out.shape[1] < 40  # decoding stopped early, at the same step as HF
    assert (out == tok.eos_token_id).any(1).all()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("backend", ["tags", "tied_tags", "embedding", "svd_lora"])
def test_every_conditioning_backend_with_and_without_lora(backend, lora):
    cond, model, tok, ids, mask = build(backend, lora=lora, eos_bias=2.0)
    out = assert_same(model, tok, ids, mask, cond=cond, num_samples=2, max_new_tokens=8, min_new_tokens=2)
    if cond.reads_preference:  # the backend's own path for w is live in the loop's forwards
        other, _ = run("loop", model, tok, ids, mask, cond=cond, weights=W.flip(1), num_samples=2, max_new_tokens=8,
                       min_new_tokens=2)
        assert not torch.equal(other, out)
    if lora:  # the loop runs through the adapters
        with model.disable_adapter():
            plain, _ = run("loop", model, tok, ids, mask, cond=cond, num_samples=2, max_new_tokens=8, min_new_tokens=2)
        assert not torch.equal(plain, out)


def spy_generate(model):
    """Count HF generate calls on `model`, passing them through."""
    calls = []
    original = model.generate

    def generate(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    model.generate = generate
    return calls


def test_loop_is_the_default_and_hf_is_selectable():
    _, model, tok, ids, mask = build()
    calls = spy_generate(model)
    assert RejectionSampler().decoder == "loop"
    RejectionSampler(max_new_tokens=3).generate(model, ids, mask, tok.pad_token_id, tok.eos_token_id)
    assert calls == []
    RejectionSampler(max_new_tokens=3, decoder="hf").generate(model, ids, mask, tok.pad_token_id, tok.eos_token_id)
    assert len(calls) == 1


def test_bad_decoder_names_the_key_and_the_choices(monkeypatch, capsys, tmp_path):
    with pytest.raises(ValueError, match=r"^algorithm.sampler.decoder='beam'; choose one of \('loop', 'hf'\)$"):
        RejectionSampler(decoder="beam")
    code, err = train_cli(monkeypatch, capsys, "algorithm.sampler.decoder=beam", f"hydra.run.dir={tmp_path}", *TINY)
    assert code != 0
    assert err.splitlines()[0] == "error: algorithm.sampler.decoder='beam'; choose one of ('loop', 'hf')"


@pytest.mark.parametrize("key, value, message", [("top_k", -1, "must be >= 0"), ("top_p", 1.5, r"must be in \[0, 1\]")])
def test_sampling_settings_hf_would_refuse_are_refused_at_once(key, value, message):
    # the loop would otherwise ignore what HF generate raises on (top_p > 1) or fail less clearly (top_k < 0)
    with pytest.raises(ValueError, match=rf"algorithm.sampler.{key}={value} {message}"):
        RejectionSampler(**{key: value})


def test_synced_gpus_falls_back_to_hf():
    _, model, tok, ids, mask = build()
    calls = []

    def generate(**kwargs):  # HF's synced decoding needs a process group: record the call, return P+T ids
        calls.append(kwargs)
        n = kwargs["num_return_sequences"]
        return torch.cat([ids.repeat_interleave(n, 0), torch.full((len(ids) * n, 3), 7)], 1)

    model.generate = generate
    out = RejectionSampler(num_samples=2, max_new_tokens=3).generate(model, ids, mask, tok.pad_token_id,
                                                                     tok.eos_token_id, synced_gpus=True)
    assert len(calls) == 1 and calls[0]["synced_gpus"] is True
    assert (out == 7).all()


def test_generation_config_the_loop_does_not_replicate_falls_back_to_hf():
    _, model, tok, ids, mask = build()
    model.generation_config.repetition_penalty = 1.5
    assert "repetition_penalty" in decode.unsupported(model, ids)
    calls = spy_generate(model)
    hf, hf_rng = run("hf", model, tok, ids, mask, num_samples=2, max_new_tokens=6)
    loop, loop_rng = run("loop", model, tok, ids, mask, num_samples=2, max_new_tokens=6)
    assert len(calls) == 2  # decoder=loop went to HF generate, which applies the penalty
    assert torch.equal(loop, hf) and torch.equal(loop_rng, hf_rng)
    model.generation_config.repetition_penalty = 1.0  # a penalty of 1 adds nothing: the loop applies
    assert decode.unsupported(model, ids) is None


def test_models_with_their_own_generation_code_fall_back():
    class Custom(LlamaForCausalLM):
        def prepare_inputs_for_generation(self, *args, **kwargs):
            return super().prepare_inputs_for_generation(*args, **kwargs)

    assert "prepare_inputs_for_generation" in decode._class_reason(Custom)
    assert decode._class_reason(LlamaForCausalLM) is None


def test_greedy_with_several_samples_is_refused_by_both():
    _, model, tok, ids, mask = build()
    for decoder in ("hf", "loop"):
        with pytest.raises(ValueError, match="num_return_sequences"):
            RejectionSampler(num_samples=2, decoder=decoder).generate(model, ids, mask, tok.pad_token_id,
                                                                      tok.eos_token_id, greedy=True)


def test_config_key_and_a_short_run_give_the_same_metrics_with_either_decoder(tmp_path):
    """The whole pipeline (warm start, rollouts, Pareto evaluation) is unchanged by the decoder."""
    micro = TINY + ["objective=synthetic", "logger=none", "trainer.max_steps=2", "callbacks.pareto_eval.every_n_steps=2",
                    "warm_start.steps=2", "~callbacks.run_summary", "~callbacks.model_checkpoint"]
    results = {}
    for decoder in ("hf", "loop"):
        cfg = compose_train(micro + [f"algorithm.sampler.decoder={decoder}"], tmp_path / decoder)
        assert instantiate(cfg.algorithm.sampler).decoder == decoder
        metrics = train(cfg)
        report = json.loads((tmp_path / decoder / "pareto.json").read_text())
        results[decoder] = (metrics, report["hypervolume"], report["points"])
    assert compose_train([], tmp_path).algorithm.sampler.decoder == "loop"  # the default
    hf, loop = results["hf"], results["loop"]
    assert hf[1] == loop[1] and hf[2] == loop[2]
    assert {k: v for k, v in hf[0].items() if not k.startswith("perf/")} == {k: v for k, v in loop[0].items() if not k.startswith("perf/")}
