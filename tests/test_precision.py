"""Precision on CPU: bf16-mixed (Lightning's plugin) and frozen weights held in bfloat16 run every method and meta
mode with the PWN in float32; bf16 log-probabilities match float32's; every hardware config's precision runs."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict

from meal_pl import precision
from meal_pl.precision import FrozenBF16Precision
from meal_pl.sampling import encode_prompts, response_mask
from meal_pl.sequences import sequence_logprobs
from meal_pl.train import build, build_run


@pytest.mark.parametrize("extra", [
    ["algorithm=meal"],
    ["algorithm=meal", "algorithm.meta.lookahead=second_order"],
    ["algorithm=meal", "algorithm.meta.lookahead=first_order"],
    ["algorithm=ric"],
    ["algorithm=linear"],
    ["algorithm=soups"],
], ids=lambda e: "-".join(x.split("=")[-1] for x in e))
def test_bf16_mixed_runs_every_method_and_meta_mode(tiny_cfg, extra):
    cfg = tiny_cfg("objective=synthetic", "logger=none", "trainer.precision=bf16-mixed", *extra)
    datamodule, module, trainer = build_run(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == cfg.trainer.max_steps
    assert all(p.dtype == torch.float32 for p in module.pwn.parameters())
    assert not module.optimizers().optimizer.defaults.get("fused")  # the plugin cannot clip a fused optimiser
    if hasattr(module.pwn, "mlp"):  # meal's learned PWN: its preference stays float32 under autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            weights = module.pwn(torch.randn(3, module.pwn.mlp[1].in_features))
        assert weights.dtype == torch.float32


# ----- frozen weights held in bfloat16 ---------------------------------------------------------------------------
FROZEN_BF16 = ["trainer.precision=bf16-mixed", "frozen_weights_dtype=bfloat16"]


@pytest.mark.parametrize("extra", [
    ["algorithm=meal"],
    ["algorithm=meal", "algorithm.meta.lookahead=second_order"],
    ["algorithm=meal", "algorithm.meta.lookahead=first_order"],
    ["algorithm=meal", "model.lora.r=4", "conditioning=tags", "algorithm.meta.lookahead=first_order"],
    ["algorithm=ric"],
    ["algorithm=linear"],
    ["algorithm=soups"],
], ids=lambda e: "-".join(x.split("=")[-1] for x in e))
def test_frozen_bf16_runs_every_method_and_meta_mode(tiny_cfg, extra):
    cfg = tiny_cfg("objective=synthetic", "logger=none", *FROZEN_BF16, *extra)
    datamodule, module, trainer = build_run(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == cfg.trainer.max_steps
    assert isinstance(trainer.precision_plugin, FrozenBF16Precision) and trainer.precision == "bf16-mixed"
    frozen = [p for p in module.parameters() if not p.requires_grad and p.is_floating_point()]
    trained = [p for p in module.parameters() if p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # pi_ref (or LoRA's base) held in bf16
    assert trained and all(p.dtype == torch.float32 for p in trained)  # what trains, and so its optimiser state
    state = module.optimizers().optimizer.state
    assert state and all(v.dtype == torch.float32 for s in state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point())
    assert all(p.dtype == torch.float32 for p in module.pwn.parameters())


def test_precision_auto_follows_the_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, "bf16_units", lambda accelerator: "AMX-BF16")
    assert precision.resolve("auto", "auto", "cpu") == ("bf16-mixed", "bfloat16")
    assert precision.resolve("32-true", "auto", "cpu") == ("32-true", "float32")
    monkeypatch.setattr(precision, "bf16_units", lambda accelerator: None)
    assert precision.resolve("auto", "auto", "cpu") == ("32-true", "float32")  # float32 where bf16 is emulated
    assert "without bf16 matrix units" in precision.describe("32-true", "float32", "cpu")


def test_frozen_bf16_without_bf16_autocast_is_one_line_naming_both_keys():
    with pytest.raises(ValueError, match=r"frozen_weights_dtype=bfloat16 needs trainer.precision=bf16-mixed"):
        precision.resolve("32-true", "bfloat16", "cpu")
    with pytest.raises(ValueError, match=r"frozen_weights_dtype='half'; choose one of"):
        precision.resolve("32-true", "half", "cpu")


@pytest.mark.parametrize(("cpuinfo", "units"), [
    ("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n", "AMX-BF16"),
    ("processor : 0\nflags : fpu sse avx512f avx512_bf16\n", "AVX512-BF16"),
    ("processor : 0\nflags : fpu sse avx2\n", None),
    ("", None),
])
def test_cpu_bf16_units_are_read_from_the_flags(cpuinfo, units):
    assert precision.cpu_bf16_units(cpuinfo) == units


# ----- numerics: bf16 against float32 on the same samples ----------------------------------------------------------
# Per response token, in nats. bf16 keeps 8 bits of mantissa (relative error 2^-9 per rounding). Measured on this
# micro model (log-probs near -6.3): gap 0.0005 mean, 0.0014 worst over 64 tokens; the bounds leave ~10x. SmolLM2's
# gap (a real model's peaked distributions) is measured by benchmarks/precision_numerics.py, not here.
LOGP_MEAN_TOL, LOGP_MAX_TOL = 0.005, 0.02


def _sampled_batch(module, datamodule):
    """Prompts conditioned on uniform w, two float32 samples each: (prefix, mask, responses, response mask)."""
    torch.manual_seed(0)
    prompts = list(datamodule.train_prompts[:4])
    K = len(module.objective_names)
    ids, mask, _ = encode_prompts(module.tokenizer, prompts, module.max_prompt_length)
    prefix, prefix_mask = module.conditioner.condition(ids, mask, torch.full((len(prompts), K), 1.0 / K))
    responses = module.generate(prefix, prefix_mask)
    N = responses.shape[0] // len(prompts)
    return (prefix.repeat_interleave(N, 0), prefix_mask.repeat_interleave(N, 0), responses,
            response_mask(responses, module.tokenizer.eos_token_id).bool())


@pytest.mark.parametrize("extra", [[], ["model.lora.r=4", "conditioning=tags"]], ids=["full", "lora"])
def test_bf16_log_probs_match_float32_and_the_first_ratio_is_one(tiny_cfg, extra):
    cfg = tiny_cfg("objective=synthetic", *extra)
    datamodule, module = build(cfg)
    module.eval()
    prefix, prefix_mask, responses, mask = _sampled_batch(module, datamodule)
    with torch.no_grad(), module.reference() as ref:
        ref_float32 = sequence_logprobs(ref, prefix, prefix_mask, responses, conditioner=module.conditioner)
    assert precision.hold_frozen_in_bf16(module) > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with module.reference() as ref:
            ref_bf16 = sequence_logprobs(ref, prefix, prefix_mask, responses, conditioner=module.conditioner)
        policy_bf16 = sequence_logprobs(module.policy, prefix, prefix_mask, responses, conditioner=module.conditioner)
    assert ref_bf16.dtype == policy_bf16.dtype == torch.float32  # log-probs from float32 logits (losses.token_logprobs)
    gap = (ref_bf16 - ref_float32)[mask].abs()
    assert gap.mean() <= LOGP_MEAN_TOL and gap.max() <= LOGP_MAX_TOL, (gap.mean(), gap.max())
    # At the first update the policy is pi_ref: the importance ratio pi/pi_ref is 1 within the same bound.
    log_ratio = (policy_bf16 - ref_bf16)[mask].abs()
    assert log_ratio.mean() <= LOGP_MEAN_TOL and log_ratio.max() <= LOGP_MAX_TOL, (log_ratio.mean(), log_ratio.max())


# ----- every hardware config's precision on CPU ----------------------------------------------------------------------
@pytest.mark.parametrize("hardware", ["cpu", "cpu_bf16", "gpu", "ddp", "fsdp", "deepspeed"])
def test_each_hardware_configs_precision_runs_the_default_job_on_cpu(tiny_cfg, hardware):
    """The precision plugin and optimiser settings as the config sets them; the device and strategy aside."""
    cfg = tiny_cfg(f"hardware={hardware}", "logger=none", "trainer.max_steps=2")
    configured = str(cfg.trainer.precision)
    with open_dict(cfg):
        cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy = "cpu", 1, "auto"
    datamodule, module, trainer = build_run(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2
    expected, frozen = precision.resolve(configured, str(cfg.frozen_weights_dtype), "cpu")
    assert trainer.precision == expected
    assert isinstance(trainer.precision_plugin, FrozenBF16Precision) == (frozen == "bfloat16")
    if expected.endswith("-mixed"):
        assert not module.optimizers().optimizer.defaults.get("fused")
