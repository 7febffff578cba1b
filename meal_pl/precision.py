"""Precision as a hardware choice: float32, bf16-mixed, and frozen weights held in bfloat16.

`trainer.precision` takes Lightning's values plus `auto`: bf16-mixed where the device has bfloat16 matrix units
(a CPU's AMX-BF16 or AVX512-BF16, a GPU that supports bf16), float32 where it has none (bf16 would be emulated,
slower than float32). `frozen_weights_dtype=bfloat16` (or `auto`: bfloat16 whenever the run is bf16-mixed) holds
the weights that never train (pi_ref, LoRA's base) in bfloat16 once, so autocast does not cast them again at every
call; what trains (LoRA adapters, conditioning, the PWN) and the optimiser state stay float32. The rewards are
scored outside autocast (`full_precision`), in their own models' dtype.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

FROZEN_DTYPES = ("float32", "bfloat16", "auto")


def cpu_bf16_units(cpuinfo: str | None = None) -> str | None:
    """The CPU's bfloat16 matrix units by name ("AMX-BF16", "AVX512-BF16", "ARM BF16"), or None.

    Read from /proc/cpuinfo's flags (Linux); `cpuinfo` replaces the file's text (tests). None elsewhere.
    """
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    if "bf16" in flags and platform.machine().lower() in ("aarch64", "arm64"):
        return "ARM BF16"
    return None


def on_gpu(accelerator: str) -> bool:
    """Whether a run with this `trainer.accelerator` trains on a GPU (auto: when one is visible)."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


@functools.cache
def _proc_cpuinfo() -> str:
    """/proc/cpuinfo's text, read once a process (a run resolves `auto` and prints its line from it)."""
    path = Path("/proc/cpuinfo")
    return path.read_text(errors="replace") if path.is_file() else ""


def bf16_units(accelerator: str) -> str | None:
    """The bf16 matrix units of the device a run trains on (accelerator: cpu, gpu, cuda, auto)."""
    if on_gpu(accelerator) and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} bf16" if torch.cuda.is_bf16_supported() else None
    return cpu_bf16_units()


def resolve(precision, frozen: str, accelerator: str) -> tuple[str, str]:
    """(Lightning precision, frozen weights dtype) with `auto` decided by the device's bf16 units."""
    precision = str(precision) if precision is not None else "32-true"
    if frozen not in FROZEN_DTYPES:
        raise ValueError(f"frozen_weights_dtype={frozen!r}; choose one of {FROZEN_DTYPES}")
    if precision == "auto":
        precision = "bf16-mixed" if bf16_units(accelerator) else "32-true"
    if frozen == "auto":
        frozen = "bfloat16" if precision == "bf16-mixed" else "float32"
    if frozen == "bfloat16" and precision != "bf16-mixed":
        raise ValueError(
            f"frozen_weights_dtype=bfloat16 needs trainer.precision=bf16-mixed (got {precision!r}): bf16 weights are "
            "multiplied under bf16 autocast; set trainer.precision=bf16-mixed or frozen_weights_dtype=float32"
        )
    return precision, frozen


def describe(precision: str, frozen: str, accelerator: str) -> str:
    """The one line a run prints at start: what precision it uses, and what the device offers."""
    units = bf16_units(accelerator)
    device = "GPU" if on_gpu(accelerator) else "CPU"
    offer = f"{device} bf16 matrix units: {units}" if units else f"{device} without bf16 matrix units"
    held = ", frozen weights held in bfloat16" if frozen == "bfloat16" else ""
    hint = ""
    if units and precision == "32-true":
        use = "hardware=cpu_bf16" if device == "CPU" else "trainer.precision=bf16-mixed"
        hint = f" ({use} uses them; faster on SmolLM2, slower on the tiny model: docs/hardware.md)"
    elif not units and "bf16" in precision:
        hint = " (without bf16 units bf16 matmuls are emulated: expect them slower than float32)"
    return f"precision: {precision}{held}; {offer}{hint}"


class FrozenBF16Precision(MixedPrecision):
    """Lightning's bf16-mixed, with every parameter that does not train cast to bfloat16 once at set-up.

    Under autocast a bf16 weight is used as it is, where a float32 one is cast anew at every call (Lightning's
    autocast keeps no cast cache). Parameters that train (requires_grad) keep float32 and their optimiser state too.
    """

    def __init__(self, device: str = "cpu") -> None:
        super().__init__("bf16-mixed", device)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        hold_frozen_in_bf16(module)
        return module


def hold_frozen_in_bf16(module: torch.nn.Module) -> int:
    """Cast the floating-point parameters that do not train to bfloat16 in place; returns how many were cast."""
    cast = 0
    for param in module.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != torch.bfloat16:
            param.data = param.data.to(torch.bfloat16)
            cast += 1
    return cast


class CastOutsideAutocast:
    """peft's per-layer `cast_input_dtype_enabled` flag, true only outside autocast.

    A LoRA layer casts its input to its adapters' dtype (float32) before the adapters' products, and autocast casts it
    straight back to bfloat16 for them: two copies of the layer's whole input per LoRA layer and pass, an eighth of a
    SmolLM2 meta step's CPU time. bf16 -> float32 -> bf16 is exact, so skipping both under autocast gives
    the same values and gradients; outside autocast (a float32 run, a bf16 input to float32 adapters) peft casts as
    it always does.
    """

    def __bool__(self) -> bool:
        return not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


def adapters_follow_autocast(model: torch.nn.Module) -> int:
    """Give every peft layer of `model` the CastOutsideAutocast flag; returns how many layers it set."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # deferred: only LoRA runs need peft

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = CastOutsideAutocast()
    return len(layers)


def precision_plugin(precision: str, frozen: str, accelerator: str) -> FrozenBF16Precision | None:
    """The plugin for frozen bf16 weights, or None when Lightning's own `precision` flag says it all."""
    if frozen != "bfloat16":
        return None
    return FrozenBF16Precision("cuda" if on_gpu(accelerator) else "cpu")


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off (CPU and CUDA): rewards and statistics computed in their own dtype inside a bf16 step."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


def forward_context(module) -> contextlib.AbstractContextManager:
    """The trainer's precision context (autocast under bf16-mixed) for passes outside training_step: the rollout's
    generation and reference pass, the evaluation's generation. Without a trainer, the context of the plugin
    `use_run_precision` gave a module rebuilt from a checkpoint, else none."""
    trainer = getattr(module, "_trainer", None)
    plugin = trainer.precision_plugin if trainer is not None else getattr(module, "inference_precision", None)
    return plugin.forward_context() if plugin is not None else contextlib.nullcontext()


def use_run_precision(module: torch.nn.Module, cfg, device: torch.device) -> str:
    """Give a module rebuilt from a checkpoint (evaluate, generate) the precision plugin its run trained with, so that
    it answers as the run's own evaluation did: the frozen weights in bfloat16 where the run held them so, and the
    plugin's autocast around the policy's passes. Returns the line that says which (as a run's first lines do)."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    chosen, frozen = resolve(cfg.trainer.get("precision"), str(cfg.get("frozen_weights_dtype", "float32")), accelerator)
    plugin = precision_plugin(chosen, frozen, accelerator)
    if plugin is None and chosen.endswith("-mixed"):
        plugin = MixedPrecision(chosen, device.type)
    if plugin is not None:
        plugin.convert_module(module)
    module.inference_precision = plugin
    return describe(chosen, frozen, accelerator)
