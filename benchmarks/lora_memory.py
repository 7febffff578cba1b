"""Memory of full fine-tuning vs LoRA for a policy, measured on CPU with a few real Meal steps.

    python benchmarks/lora_memory.py                      # SmolLM2-135M, full vs LoRA r=8, 2 steps each
    python benchmarks/lora_memory.py model=tiny r=4       # any model config; extra key=value go to Hydra

Each setting runs in its own process and reports: the module's weights (policy + frozen reference copy
+ PWN), trainable parameters, gradient and optimiser-state bytes after training, the resident memory
after building the module, and the peak resident memory during `trainer.fit` (sampled every 20 ms).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "warm_start.steps=0", "algorithm.meta.lookahead=first_order", "algorithm.sampler.num_samples=2",
    "algorithm.sampler.max_new_tokens=8", "algorithm.sampler.min_new_tokens=0", "data.batch_size=2",
    "trainer.max_steps=2", "logger=none", "objective=synthetic",
    "~callbacks.pareto_eval", "~callbacks.generations", "~callbacks.model_checkpoint", "~callbacks.progress_bar",
    "~callbacks.run_summary",
]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(overrides: list[str]) -> dict:
    """Build and fit in this process; the numbers for one setting."""
    sys.path.insert(0, str(ROOT))
    import lightning as L
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from meal_pl.train import build

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=SMALL + overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/meal_lora_memory"
    L.seed_everything(0)
    datamodule, module = build(cfg)
    after_build = rss_mib()
    peak = [after_build]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    mib = 2**20

    def nbytes(tensors) -> float:
        return sum(t.numel() * t.element_size() for t in tensors) / mib

    opt = trainer.optimizers[0]
    trainable = [p for p in module.policy.parameters() if p.requires_grad]
    return {
        "weights_mib": nbytes(module.parameters()),
        "trainable_params": sum(p.numel() for p in trainable),
        "grads_mib": nbytes(p.grad for p in trainable if p.grad is not None),
        "optimizer_state_mib": nbytes(v for s in opt.state.values() for v in s.values() if hasattr(v, "numel") and v.dim() > 0),
        "rss_after_build_mib": after_build,
        "peak_rss_fit_mib": peak[0],
        "fit_seconds": seconds,
    }


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print("RESULT " + json.dumps(measure(argv[1:])))
        return
    extra = [a for a in argv if not a.startswith(("model=", "r="))]
    model = next((a for a in argv if a.startswith("model=")), "model=smollm2_135m")
    r = next((a.split("=", 1)[1] for a in argv if a.startswith("r=")), "8")
    rows = {}
    for name, lora in (("full fine-tune", "model.lora.r=0"), (f"LoRA r={r}", f"model.lora.r={r}")):
        done = subprocess.run([sys.executable, __file__, "--one", model, lora, *extra], capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        rows[name] = json.loads(line[len("RESULT "):])
    keys = list(next(iter(rows.values())))
    print(f"{model}, 2 Meal steps on CPU (batch 2, N=2, 8 new tokens, first_order lookahead)")
    print(f"| {'':22} | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for key in keys:
        print(f"| {key:22} | " + " | ".join(f"{row[key]:,.1f}" if isinstance(row[key], float) else f"{row[key]:,}" for row in rows.values()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
