"""bf16-mixed (Lightning's plugin) on CPU: every method and meta mode runs, with the PWN in float32."""

from __future__ import annotations

import pytest
import torch

from meal_pl.train import build_run


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
